//! `rtchain l1 ...`: argument parsing and printing; the work is in `rtchain_node::l1_cli`.

use std::path::PathBuf;

use alloy::primitives::{Address, B256, Bytes, U256, utils::parse_ether};
use alloy::signers::local::PrivateKeySigner;
use clap::Subcommand;
use rtchain_l1::deploy::{DeployParams, Deployment};
use rtchain_node::{keys::dev_key, l1_cli};

#[derive(Subcommand)]
pub enum L1Command {
    /// Deploys the settlement contracts (registry, oracle, Portal, inbox) and writes their
    /// record.
    Deploy {
        #[command(flatten)]
        key: KeyArgs,
        /// The L1's JSON-RPC URL.
        #[arg(long)]
        l1: String,
        #[arg(long, default_value_t = 31337)]
        l2_chain_id: u64,
        /// The address allowed to post batches.
        #[arg(long)]
        batcher: Address,
        /// A validator, as `ED25519_PUBLIC_KEY_HEX:SETTLEMENT_ADDRESS`, in index order
        /// (repeat).
        #[arg(long = "validator", required = true)]
        validators: Vec<String>,
        #[arg(long, default_value_t = 100)]
        output_interval: u64,
        #[arg(long, default_value_t = 604_800)]
        finalization_secs: u64,
        #[arg(long, default_value_t = 100_000)]
        epoch_length: u64,
        /// Where the record goes (a node reads it as `l1.deployment`).
        #[arg(long, default_value = "l1.json")]
        out: PathBuf,
    },
    /// Deposits ETH (and calldata) from L1 into the L2 through the Portal.
    Deposit {
        #[command(flatten)]
        key: KeyArgs,
        #[command(flatten)]
        at: At,
        /// The L2 recipient (the sender's own address by default).
        #[arg(long)]
        to: Option<Address>,
        /// ETH, e.g. 1.5.
        #[arg(long)]
        value: String,
        #[arg(long, default_value = "0x")]
        data: Bytes,
        /// L2 gas for the deposit.
        #[arg(long, default_value_t = 100_000)]
        gas: u64,
    },
    /// Withdrawals from the L2 to L1: initiate (on L2), prove and finalize (on L1).
    #[command(subcommand)]
    Withdraw(WithdrawCommand),
    /// The settlement status of a node: L1 heads, L2 safe and finalized, the latest batch and
    /// output root, and how far each lags.
    Status {
        /// The node's JSON-RPC URL.
        #[arg(long, default_value = "http://127.0.0.1:8545")]
        rpc: String,
    },
}

#[derive(Subcommand)]
pub enum WithdrawCommand {
    /// Starts a withdrawal on L2 through the message passer.
    Initiate {
        #[command(flatten)]
        key: KeyArgs,
        #[arg(long, default_value = "http://127.0.0.1:8545")]
        l2: String,
        /// The L1 recipient (the sender's own address by default).
        #[arg(long)]
        to: Option<Address>,
        #[arg(long)]
        value: String,
        #[arg(long, default_value_t = 100_000)]
        gas: u64,
    },
    /// Proves the withdrawal an L2 transaction started against an output root on L1.
    Prove {
        #[command(flatten)]
        key: KeyArgs,
        #[command(flatten)]
        at: At,
        #[arg(long, default_value = "http://127.0.0.1:8545")]
        l2: String,
        /// The L2 transaction that started the withdrawal.
        #[arg(long)]
        tx: B256,
    },
    /// Finalizes a proven withdrawal once its output root's window has passed.
    Finalize {
        #[command(flatten)]
        key: KeyArgs,
        #[command(flatten)]
        at: At,
        #[arg(long, default_value = "http://127.0.0.1:8545")]
        l2: String,
        #[arg(long)]
        tx: B256,
    },
}

/// Who signs: a private key, or one of the dev mnemonic's keys.
#[derive(clap::Args)]
pub struct KeyArgs {
    #[arg(long, value_name = "HEX", conflicts_with = "dev_key")]
    private_key: Option<String>,
    /// Dev key N of the test mnemonic (anvil's and the devnet's funded accounts).
    #[arg(long, value_name = "N")]
    dev_key: Option<u32>,
}

impl KeyArgs {
    fn signer(&self) -> Result<PrivateKeySigner, String> {
        match (&self.private_key, self.dev_key) {
            (Some(hex), _) => hex
                .trim()
                .parse()
                .map_err(|e| format!("--private-key: {e}")),
            (None, Some(i)) => Ok(dev_key(i)),
            (None, None) => Err("give --private-key HEX or --dev-key N".into()),
        }
    }
}

/// Which L1 and which contracts.
#[derive(clap::Args)]
pub struct At {
    /// The L1's JSON-RPC URL.
    #[arg(long, default_value = "http://127.0.0.1:8546")]
    l1: String,
    /// The contracts' record (`rtchain l1 deploy --out`, or `l1.json` in a devnet's data
    /// directory).
    #[arg(long, default_value = "l1.json")]
    deployment: PathBuf,
}

impl At {
    fn deployment(&self) -> Result<Deployment, String> {
        Deployment::load(&self.deployment).map_err(|e| e.to_string())
    }
}

fn ether(value: &str) -> Result<U256, String> {
    parse_ether(value).map_err(|e| format!("--value {value}: {e}"))
}

pub async fn run(command: L1Command) -> Result<(), String> {
    match command {
        L1Command::Deploy {
            key,
            l1,
            l2_chain_id,
            batcher,
            validators,
            output_interval,
            finalization_secs,
            epoch_length,
            out,
        } => {
            let signer = key.signer()?;
            let mut consensus_keys = Vec::new();
            let mut settlement_keys = Vec::new();
            for v in &validators {
                let (key, address) = v
                    .split_once(':')
                    .ok_or_else(|| format!("--validator {v}: expected KEY:ADDRESS"))?;
                consensus_keys.push(key.parse::<B256>().map_err(|e| format!("{v}: {e}"))?);
                settlement_keys.push(
                    address
                        .parse::<Address>()
                        .map_err(|e| format!("{v}: {e}"))?,
                );
            }
            let params = DeployParams {
                l2_chain_id,
                admin: signer.address(),
                batcher,
                consensus_keys,
                settlement_keys,
                epoch_length,
                submission_interval: output_interval,
                finalization_period_secs: finalization_secs,
            };
            let deployment = rtchain_l1::deploy::deploy(&l1, signer, &params)
                .await
                .map_err(|e| e.to_string())?;
            deployment.save(&out).map_err(|e| e.to_string())?;
            println!(
                "{}",
                serde_json::to_string_pretty(&deployment).map_err(|e| e.to_string())?
            );
            println!("written to {}", out.display());
            Ok(())
        }
        L1Command::Deposit {
            key,
            at,
            to,
            value,
            data,
            gas,
        } => {
            let signer = key.signer()?;
            let to = to.unwrap_or(signer.address());
            let d = at.deployment()?;
            let sent =
                l1_cli::deposit(&at.l1, d.portal, signer, to, ether(&value)?, data, gas).await?;
            println!(
                "deposit {} in L1 block {} (tx {}); on L2 it is transaction {}",
                sent.nonce, sent.l1_block, sent.l1_tx, sent.l2_tx
            );
            Ok(())
        }
        L1Command::Withdraw(WithdrawCommand::Initiate {
            key,
            l2,
            to,
            value,
            gas,
        }) => {
            let signer = key.signer()?;
            let to = to.unwrap_or(signer.address());
            let receipt = l1_cli::initiate_withdrawal(&l2, signer, to, ether(&value)?, gas).await?;
            println!(
                "withdrawal started in L2 block {:?}: tx {} (prove it once an output root covers that block)",
                receipt.block_number, receipt.transaction_hash
            );
            Ok(())
        }
        L1Command::Withdraw(WithdrawCommand::Prove { key, at, l2, tx }) => {
            let d = at.deployment()?;
            let inputs = l1_cli::proof_inputs(&at.l1, &l2, &d, tx).await?;
            let receipt = l1_cli::prove(&at.l1, &d, key.signer()?, &inputs).await?;
            println!(
                "withdrawal {} proven against the output root of L2 block {} in L1 tx {}; finalize it after {} s",
                inputs.withdrawal.hash(),
                inputs.output_block,
                receipt.transaction_hash,
                d.finalization_period_secs
            );
            Ok(())
        }
        L1Command::Withdraw(WithdrawCommand::Finalize { key, at, l2, tx }) => {
            let d = at.deployment()?;
            let (withdrawal, _) = l1_cli::withdrawal_of(&l2, tx).await?;
            match l1_cli::seconds_to_finalize(&at.l1, &d, &withdrawal).await? {
                None => {
                    return Err(
                        "this withdrawal is not proven yet: run `rtchain l1 withdraw prove` first"
                            .into(),
                    );
                }
                Some(0) => {}
                Some(wait) => {
                    return Err(format!(
                        "too early: the withdrawal can be finalized in {wait} s"
                    ));
                }
            }
            let receipt = l1_cli::finalize(&at.l1, &d, key.signer()?, &withdrawal).await?;
            println!(
                "withdrawal {} finalized in L1 tx {}: {} wei to {}",
                withdrawal.hash(),
                receipt.transaction_hash,
                withdrawal.value,
                withdrawal.target
            );
            Ok(())
        }
        L1Command::Status { rpc } => {
            let status = l1_cli::status(&rpc).await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&status).map_err(|e| e.to_string())?
            );
            Ok(())
        }
    }
}
