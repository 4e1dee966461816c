//! The benchmark's view of a node: a few JSON-RPC calls, deterministic sender keys, and signing.
//!
//! Only setup goes through [`Node`]'s methods, which turn failures into [`BenchError`]s naming
//! the call and the target. The timed phase uses [`Node::client`] directly, so its hot path pays
//! for neither the error context nor a second `String` per request.

use std::time::{Duration, Instant};

use alloy_consensus::{SignableTransaction, TxEip1559};
use alloy_network::TxSignerSync;
use alloy_primitives::{Address, B256, Bytes, TxKind, U64, U128, U256, keccak256};
use alloy_signer_local::PrivateKeySigner;
use jsonrpsee::core::client::ClientT;
use jsonrpsee::core::params::ArrayParams;
use jsonrpsee::http_client::{HttpClient, HttpClientBuilder};
use jsonrpsee::rpc_params;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::error::BenchError;

/// Largest JSON-RPC reply accepted, in bytes. A receipt of one transfer is under 2 KiB; 1 MiB
/// leaves room for a node that pretty-prints or returns logs, and bounds what a broken node can
/// make us buffer per in-flight request.
const REPLY_SIZE_BYTES_MAX: u32 = 1 << 20;

/// How often setup looks for its transactions' receipts. Setup is not timed, so this only needs
/// to be small next to a block time.
const SETUP_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// How long setup waits for all of its transactions (funding, deployment, token distribution)
/// to be included before giving up.
const SETUP_TIMEOUT: Duration = Duration::from_secs(120);

/// Priority fee used when the node does not answer `eth_maxPriorityFeePerGas`: 1 gwei, what
/// anvil and geth suggest on an idle chain.
const TIP_WEI_FALLBACK: u128 = 1_000_000_000;

/// The fields of a receipt the benchmark looks at; the rest (logs, bloom) are skipped unparsed.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Receipt {
    pub transaction_hash: B256,
    pub status: Option<U64>,
    pub contract_address: Option<Address>,
}

impl Receipt {
    /// EIP-658 status: `0x1` for success. A receipt without a status (pre-Byzantium) is not
    /// something a node we benchmark may return, so it counts as a failure.
    pub fn succeeded(&self) -> bool {
        self.status == Some(U64::from(1))
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BlockHeader {
    base_fee_per_gas: Option<U128>,
}

/// A signed transaction ready to go on the wire: the EIP-2718 bytes are hex-encoded once, when
/// signing, so the timed phase only copies them into a request body.
#[derive(Debug, Clone)]
pub(crate) struct SignedTx {
    pub hash: B256,
    pub raw_hex: String,
}

/// Fee and replay-protection fields shared by every transaction of a run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FeeParams {
    pub chain_id: u64,
    pub max_fee_per_gas: u128,
    pub max_priority_fee_per_gas: u128,
}

/// The recipient, value, calldata and gas limit of one transaction, before nonce and signature.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub to: TxKind,
    pub value: U256,
    pub input: Bytes,
    pub gas_limit: u64,
}

/// Signs an EIP-1559 transaction and encodes it for `eth_sendRawTransaction`.
pub(crate) fn sign(
    signer: &PrivateKeySigner,
    fees: FeeParams,
    nonce: u64,
    call: &Call,
) -> Result<SignedTx, BenchError> {
    let (hash, raw) = sign_raw(signer, fees, nonce, call)?;
    Ok(SignedTx {
        hash,
        raw_hex: format!("0x{}", hex::encode(&raw)),
    })
}

/// Signs an EIP-1559 transaction: its hash and EIP-2718 bytes.
pub(crate) fn sign_raw(
    signer: &PrivateKeySigner,
    fees: FeeParams,
    nonce: u64,
    call: &Call,
) -> Result<(B256, Vec<u8>), BenchError> {
    let mut tx = TxEip1559 {
        chain_id: fees.chain_id,
        nonce,
        gas_limit: call.gas_limit,
        max_fee_per_gas: fees.max_fee_per_gas,
        max_priority_fee_per_gas: fees.max_priority_fee_per_gas,
        to: call.to,
        value: call.value,
        access_list: Default::default(),
        input: call.input.clone(),
    };
    let signature = signer.sign_transaction_sync(&mut tx)?;
    let signed = tx.into_signed(signature);
    let mut raw = Vec::with_capacity(signed.eip2718_encoded_length());
    signed.eip2718_encode(&mut raw);
    debug_assert_eq!(raw.len(), signed.eip2718_encoded_length());
    Ok((*signed.hash(), raw))
}

/// The benchmark's sender `index`: the private key is keccak256 of a fixed tag and the index, so
/// every run (and every tool that knows the tag) derives the same accounts, and a node that was
/// funded once does not need funding again.
pub(crate) fn sender_key(index: u32) -> Result<PrivateKeySigner, BenchError> {
    let mut seed = Vec::with_capacity(32);
    seed.extend_from_slice(b"rtchain-bench-sender/");
    seed.extend_from_slice(&index.to_be_bytes());
    let key = keccak256(&seed);
    // A keccak output is a valid secp256k1 scalar except with probability ~2^-128.
    PrivateKeySigner::from_bytes(&key).map_err(|e| {
        BenchError::InvalidArgs(format!(
            "sender key {index} ({key}) is not a valid secp256k1 key: {e}"
        ))
    })
}

/// A JSON-RPC endpoint under test.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub url: String,
    pub client: HttpClient,
}

impl Node {
    /// `max_in_flight` caps the client's concurrent requests (and so its connections): the
    /// benchmark's own semaphore is the real bound, this one is the backstop.
    pub fn connect(url: &str, max_in_flight: usize, timeout: Duration) -> Result<Self, BenchError> {
        let client = HttpClientBuilder::default()
            .request_timeout(timeout)
            .max_response_size(REPLY_SIZE_BYTES_MAX)
            .max_concurrent_requests(max_in_flight)
            .build(url)
            .map_err(|source| BenchError::Client {
                target: url.to_owned(),
                source,
            })?;
        Ok(Self {
            url: url.to_owned(),
            client,
        })
    }

    async fn call<R: DeserializeOwned>(
        &self,
        method: &'static str,
        params: ArrayParams,
    ) -> Result<R, BenchError> {
        self.client
            .request(method, params)
            .await
            .map_err(|source| BenchError::Rpc {
                target: self.url.clone(),
                method,
                source,
            })
    }

    fn setup_error(&self, reason: impl Into<String>) -> BenchError {
        BenchError::Setup {
            target: self.url.clone(),
            reason: reason.into(),
        }
    }

    pub async fn chain_id(&self) -> Result<u64, BenchError> {
        Ok(self.call::<U64>("eth_chainId", rpc_params![]).await?.to())
    }

    /// `web3_clientVersion`, or "unknown" for a node that does not implement it: the version is
    /// only reported, never relied on.
    pub async fn client_version(&self) -> String {
        self.call::<String>("web3_clientVersion", rpc_params![])
            .await
            .unwrap_or_else(|_| "unknown".to_owned())
    }

    /// The next nonce of `address`, counting transactions still in the pool.
    pub async fn nonce(&self, address: Address) -> Result<u64, BenchError> {
        Ok(self
            .call::<U64>("eth_getTransactionCount", rpc_params![address, "pending"])
            .await?
            .to())
    }

    pub async fn balance(&self, address: Address) -> Result<U256, BenchError> {
        self.call("eth_getBalance", rpc_params![address, "latest"])
            .await
    }

    /// The fee fields for this run: `max_fee = 2 * base_fee + tip`, so the transactions stay
    /// includable while the base fee doubles (six consecutive full blocks) during the run.
    pub async fn fee_params(&self) -> Result<FeeParams, BenchError> {
        let chain_id = self.chain_id().await?;
        let header: Option<BlockHeader> = self
            .call("eth_getBlockByNumber", rpc_params!["latest", false])
            .await?;
        let base_fee = match header.and_then(|h| h.base_fee_per_gas) {
            Some(fee) => fee.to::<u128>(),
            None => return Err(self.setup_error("latest block has no baseFeePerGas (pre-London?)")),
        };
        let tip = match self
            .call::<U128>("eth_maxPriorityFeePerGas", rpc_params![])
            .await
        {
            Ok(tip) => tip.to::<u128>(),
            Err(e) => {
                eprintln!("bench: {e}; using a priority fee of {TIP_WEI_FALLBACK} wei instead");
                TIP_WEI_FALLBACK
            }
        };
        let max_fee_per_gas = base_fee
            .checked_mul(2)
            .and_then(|f| f.checked_add(tip))
            .ok_or_else(|| {
                self.setup_error(format!("base fee {base_fee} + tip {tip} overflows"))
            })?;
        Ok(FeeParams {
            chain_id,
            max_fee_per_gas,
            max_priority_fee_per_gas: tip,
        })
    }

    /// `eth_estimateGas` for a call from `from`; `to: None` estimates a contract creation.
    pub async fn estimate_gas(
        &self,
        from: Address,
        to: Option<Address>,
        input: &Bytes,
    ) -> Result<u64, BenchError> {
        // `data` rather than `input`: every node version accepts the older name.
        let mut request = serde_json::json!({ "from": from, "data": input });
        if let Some(to) = to {
            request["to"] = serde_json::json!(to);
        }
        Ok(self
            .call::<U64>("eth_estimateGas", rpc_params![request])
            .await?
            .to())
    }

    pub async fn send_raw(&self, tx: &SignedTx) -> Result<B256, BenchError> {
        let hash: B256 = self
            .call("eth_sendRawTransaction", rpc_params![tx.raw_hex.as_str()])
            .await?;
        if hash != tx.hash {
            return Err(self.setup_error(format!(
                "eth_sendRawTransaction returned hash {hash} for a transaction whose hash is {}",
                tx.hash
            )));
        }
        Ok(hash)
    }

    pub async fn receipt(&self, hash: B256) -> Result<Option<Receipt>, BenchError> {
        self.call("eth_getTransactionReceipt", rpc_params![hash])
            .await
    }

    /// Sends setup transactions one after the other (each is accepted before the next nonce is
    /// sent, so a node without a nonce-gap queue works too), then waits until every one has a
    /// successful receipt. `what` names the batch in errors.
    pub async fn send_and_confirm(
        &self,
        txs: &[SignedTx],
        what: &str,
    ) -> Result<Vec<Receipt>, BenchError> {
        for tx in txs {
            self.send_raw(tx).await?;
        }
        let deadline = Instant::now() + SETUP_TIMEOUT;
        let mut receipts = Vec::with_capacity(txs.len());
        for tx in txs {
            let receipt = loop {
                if let Some(receipt) = self.receipt(tx.hash).await? {
                    break receipt;
                }
                if Instant::now() > deadline {
                    return Err(self.setup_error(format!(
                        "{what}: transaction {} not included within {SETUP_TIMEOUT:?}",
                        tx.hash
                    )));
                }
                tokio::time::sleep(SETUP_POLL_INTERVAL).await;
            };
            if !receipt.succeeded() {
                return Err(self.setup_error(format!(
                    "{what}: transaction {} failed (status {:?})",
                    tx.hash, receipt.status
                )));
            }
            receipts.push(receipt);
        }
        Ok(receipts)
    }
}
