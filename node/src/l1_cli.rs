//! `rtchain l1 ...`: what users and operators do with the settlement contracts from a shell:
//! deploy them, deposit into the L2, withdraw out of it (initiate on L2, prove and finalize on
//! L1), and read the settlement status of a node. Each is a library function too (the tests
//! and the benchmark use them).

use alloy::{
    network::EthereumWallet,
    primitives::{Address, B256, Bytes, U256},
    providers::{DynProvider, Provider, ProviderBuilder},
    rpc::types::TransactionReceipt,
    signers::local::PrivateKeySigner,
    sol_types::SolEvent,
};
use rtchain_l1::{
    contracts::{L2ToL1MessagePasser, MESSAGE_PASSER_ADDRESS, OutputOracle, Portal},
    deploy::Deployment,
    output::{OutputRootProof, Withdrawal},
};

/// A provider that signs with `key`.
pub async fn wallet(url: &str, key: PrivateKeySigner) -> Result<DynProvider, String> {
    Ok(ProviderBuilder::new()
        .wallet(EthereumWallet::from(key))
        .connect(url)
        .await
        .map_err(|e| format!("{url}: {e}"))?
        .erased())
}

/// A read-only provider.
pub async fn reader(url: &str) -> Result<DynProvider, String> {
    Ok(ProviderBuilder::new()
        .connect(url)
        .await
        .map_err(|e| format!("{url}: {e}"))?
        .erased())
}

/// A deposit sent to the Portal, and the L2 transaction it becomes.
#[derive(Debug, Clone)]
pub struct DepositSent {
    pub l1_tx: B256,
    pub l1_block: u64,
    pub nonce: u64,
    /// The hash of the deposit transaction on L2.
    pub l2_tx: B256,
}

/// Deposits `value` wei (minted to the sender on L2 and sent to `to`) with `data` and an L2
/// gas limit of `gas`.
pub async fn deposit(
    l1_url: &str,
    portal: Address,
    key: PrivateKeySigner,
    to: Address,
    value: U256,
    data: Bytes,
    gas: u64,
) -> Result<DepositSent, String> {
    let provider = wallet(l1_url, key).await?;
    let portal = Portal::new(portal, &provider);
    let receipt = portal
        .depositTransaction(to, value, gas, false, data)
        .value(value)
        .send()
        .await
        .map_err(|e| format!("Portal.depositTransaction: {e}"))?
        .get_receipt()
        .await
        .map_err(|e| format!("deposit receipt: {e}"))?;
    if !receipt.status() {
        return Err(format!(
            "the deposit reverted in {}",
            receipt.transaction_hash
        ));
    }
    let log = receipt
        .inner
        .logs()
        .iter()
        .find(|l| l.topic0() == Some(&Portal::TransactionDeposited::SIGNATURE_HASH))
        .ok_or("the deposit emitted no TransactionDeposited event")?;
    let deposit = rtchain_l1::deposit::decode_deposit(log).map_err(|e| e.to_string())?;
    let l2_tx = crate::settlement::deposit_tx(deposit.tx).hash;
    Ok(DepositSent {
        l1_tx: receipt.transaction_hash,
        l1_block: receipt.block_number.unwrap_or_default(),
        nonce: deposit.nonce,
        l2_tx,
    })
}

/// Starts a withdrawal of `value` to `to` on L1 through the L2's message passer; returns the
/// L2 receipt.
pub async fn initiate_withdrawal(
    l2_url: &str,
    key: PrivateKeySigner,
    to: Address,
    value: U256,
    gas: u64,
) -> Result<TransactionReceipt, String> {
    let provider = wallet(l2_url, key).await?;
    let passer = L2ToL1MessagePasser::new(MESSAGE_PASSER_ADDRESS, &provider);
    let receipt = passer
        .initiateWithdrawal(to, U256::from(gas), Bytes::new())
        .value(value)
        .send()
        .await
        .map_err(|e| format!("initiateWithdrawal: {e}"))?
        .get_receipt()
        .await
        .map_err(|e| format!("withdrawal receipt: {e}"))?;
    if !receipt.status() {
        return Err(format!(
            "the withdrawal reverted in {}",
            receipt.transaction_hash
        ));
    }
    Ok(receipt)
}

/// The withdrawal an L2 transaction started, and its L2 block.
pub async fn withdrawal_of(l2_url: &str, l2_tx: B256) -> Result<(Withdrawal, u64), String> {
    let provider = reader(l2_url).await?;
    let receipt = provider
        .get_transaction_receipt(l2_tx)
        .await
        .map_err(|e| format!("L2 receipt of {l2_tx}: {e}"))?
        .ok_or_else(|| format!("L2 transaction {l2_tx} has no receipt (not sealed yet?)"))?;
    let block = receipt.block_number.unwrap_or_default();
    let log = receipt
        .inner
        .logs()
        .iter()
        .find(|l| {
            l.address() == MESSAGE_PASSER_ADDRESS
                && l.topic0() == Some(&L2ToL1MessagePasser::MessagePassed::SIGNATURE_HASH)
        })
        .ok_or_else(|| format!("L2 transaction {l2_tx} started no withdrawal"))?;
    let event = L2ToL1MessagePasser::MessagePassed::decode_log_data(log.data())
        .map_err(|e| format!("MessagePassed: {e}"))?;
    let withdrawal = Withdrawal {
        nonce: event.nonce,
        sender: event.sender,
        target: event.target,
        value: event.value,
        gas_limit: event.gasLimit,
        data: event.data,
    };
    if withdrawal.hash() != event.withdrawalHash {
        return Err("the message passer's withdrawal hash differs from ours".into());
    }
    Ok((withdrawal, block))
}

/// What proving a withdrawal takes: the output that covers it, the root's fields and the
/// storage proof from the L2 node.
#[derive(Debug, Clone)]
pub struct ProofInputs {
    pub withdrawal: Withdrawal,
    pub output_index: U256,
    pub output_block: u64,
    pub root_proof: OutputRootProof,
    pub storage_proof: Vec<Bytes>,
}

/// Gathers the proof of the withdrawal started by `l2_tx` against the first output posted
/// at or after its block.
pub async fn proof_inputs(
    l1_url: &str,
    l2_url: &str,
    deployment: &Deployment,
    l2_tx: B256,
) -> Result<ProofInputs, String> {
    let (withdrawal, block) = withdrawal_of(l2_url, l2_tx).await?;
    let l1 = reader(l1_url).await?;
    let oracle = OutputOracle::new(deployment.oracle, &l1);
    let latest = oracle
        .latestBlockNumber()
        .call()
        .await
        .map_err(|e| format!("OutputOracle.latestBlockNumber: {e}"))?;
    if latest < U256::from(block) {
        return Err(format!(
            "no output root covers L2 block {block} yet (the newest is for block {latest}); try again shortly"
        ));
    }
    let index = oracle
        .getL2OutputIndexAfter(U256::from(block))
        .call()
        .await
        .map_err(|e| format!("OutputOracle.getL2OutputIndexAfter: {e}"))?;
    let output = oracle
        .getL2Output(index)
        .call()
        .await
        .map_err(|e| format!("OutputOracle.getL2Output: {e}"))?;
    let l2 = reader(l2_url).await?;
    let answer: serde_json::Value = l2
        .raw_request(
            "rtchain_getWithdrawalProof".into(),
            (withdrawal.hash(), output.l2BlockNumber),
        )
        .await
        .map_err(|e| format!("rtchain_getWithdrawalProof: {e}"))?;
    let root_proof: OutputRootProof = serde_json::from_value(answer["outputRootProof"].clone())
        .map_err(|e| format!("rtchain_getWithdrawalProof: {e}"))?;
    if root_proof.root() != output.outputRoot {
        return Err(format!(
            "the L2 node's output root of block {} ({}) is not the one posted on L1 ({}): do not prove against this node",
            output.l2BlockNumber,
            root_proof.root(),
            output.outputRoot
        ));
    }
    if answer["sent"] != serde_json::Value::Bool(true) {
        return Err("the message passer does not hold this withdrawal at that output".into());
    }
    let storage_proof: Vec<Bytes> = serde_json::from_value(answer["withdrawalProof"].clone())
        .map_err(|e| format!("rtchain_getWithdrawalProof: {e}"))?;
    Ok(ProofInputs {
        withdrawal,
        output_index: index,
        output_block: output.l2BlockNumber,
        root_proof,
        storage_proof,
    })
}

fn portal_withdrawal(w: &Withdrawal) -> Portal::WithdrawalTransaction {
    Portal::WithdrawalTransaction {
        nonce: w.nonce,
        sender: w.sender,
        target: w.target,
        value: w.value,
        gasLimit: w.gas_limit,
        data: w.data.clone(),
    }
}

fn portal_root_proof(p: &OutputRootProof) -> Portal::OutputRootProof {
    Portal::OutputRootProof {
        version: p.version,
        stateRoot: p.state_root,
        messagePasserStorageRoot: p.message_passer_storage_root,
        latestBlockhash: p.latest_blockhash,
    }
}

/// Proves a withdrawal on the Portal.
pub async fn prove(
    l1_url: &str,
    deployment: &Deployment,
    key: PrivateKeySigner,
    inputs: &ProofInputs,
) -> Result<TransactionReceipt, String> {
    let provider = wallet(l1_url, key).await?;
    let portal = Portal::new(deployment.portal, &provider);
    let receipt = portal
        .proveWithdrawalTransaction(
            portal_withdrawal(&inputs.withdrawal),
            inputs.output_index,
            portal_root_proof(&inputs.root_proof),
            inputs.storage_proof.clone(),
        )
        .send()
        .await
        .map_err(|e| format!("proveWithdrawalTransaction: {e}"))?
        .get_receipt()
        .await
        .map_err(|e| format!("prove receipt: {e}"))?;
    if !receipt.status() {
        return Err(format!("proving reverted in {}", receipt.transaction_hash));
    }
    Ok(receipt)
}

/// Finalizes a proven withdrawal once its output root's window has passed.
pub async fn finalize(
    l1_url: &str,
    deployment: &Deployment,
    key: PrivateKeySigner,
    withdrawal: &Withdrawal,
) -> Result<TransactionReceipt, String> {
    let provider = wallet(l1_url, key).await?;
    let portal = Portal::new(deployment.portal, &provider);
    let receipt = portal
        .finalizeWithdrawalTransaction(portal_withdrawal(withdrawal))
        .send()
        .await
        .map_err(|e| format!("finalizeWithdrawalTransaction: {e}"))?
        .get_receipt()
        .await
        .map_err(|e| format!("finalize receipt: {e}"))?;
    if !receipt.status() {
        return Err(format!(
            "finalizing reverted in {}",
            receipt.transaction_hash
        ));
    }
    Ok(receipt)
}

/// Seconds until a proven withdrawal may be finalized (0: now), from the L1's clock.
pub async fn seconds_to_finalize(
    l1_url: &str,
    deployment: &Deployment,
    withdrawal: &Withdrawal,
) -> Result<Option<u64>, String> {
    let l1 = reader(l1_url).await?;
    let portal = Portal::new(deployment.portal, &l1);
    let proven = portal
        .provenWithdrawals(withdrawal.hash())
        .call()
        .await
        .map_err(|e| format!("Portal.provenWithdrawals: {e}"))?;
    if proven.timestamp == 0 {
        return Ok(None);
    }
    let now = l1
        .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
        .await
        .map_err(|e| format!("L1 head: {e}"))?
        .map_or(0, |b| b.header.timestamp);
    let due = proven.timestamp as u64 + deployment.finalization_period_secs;
    Ok(Some(due.saturating_sub(now)))
}

/// A node's `rtchain_l1Status`.
pub async fn status(rpc_url: &str) -> Result<serde_json::Value, String> {
    let provider = reader(rpc_url).await?;
    let status: serde_json::Value = provider
        .raw_request("rtchain_l1Status".into(), ())
        .await
        .map_err(|e| format!("rtchain_l1Status: {e}"))?;
    if status.is_null() {
        return Err(format!("{rpc_url} does not settle to an L1"));
    }
    Ok(status)
}
