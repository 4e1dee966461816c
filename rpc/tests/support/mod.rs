//! A test double for the JSON layer only: a [`Backend`] over a few fixed blocks whose answers
//! encode what the server asked (which `StateAt`, which call input), so tests can check tag
//! resolution and parameter handling over real HTTP and WebSocket. The real node is tested end
//! to end elsewhere.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use alloy_consensus::{
    Eip658Value, Header, Receipt, ReceiptWithBloom, SignableTransaction, TxEip1559,
};
use alloy_eips::eip2718::Encodable2718;
use alloy_primitives::{
    Address, B256, Bytes, Log as PrimitiveLog, LogData, Signature, TxKind, U256, address, b256,
    keccak256, logs_bloom,
};
use alloy_rpc_types_eth::state::StateOverride;
use alloy_rpc_types_eth::{
    AccessList, BlockOverrides, EIP1186AccountProofResponse, Filter, Log, TransactionRequest,
};
use op_alloy_consensus::{OpReceiptEnvelope as ReceiptEnvelope, OpTxEnvelope as TxEnvelope};
use parking_lot::Mutex;
use rtchain_exec::types::{
    MiniBlock, MiniBlockHeader, RecoveredTx, SealedBlock, TxLocation, TxReceipt,
};
use rtchain_rpc::{
    Backend, BackendError, CallOutcome, ChainEvent, ChainHead, ReceiptView, ReceiptWait, RpcConfig,
    RpcHandle, StateAt, TxView, wait_on,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, oneshot};

pub const CHAIN_ID: u64 = 4242;
pub const GAS_LIMIT: u64 = 30_000_000;
pub const BASE_FEE: u64 = 1_000_000_000;
pub const NEXT_BASE_FEE: u64 = 900_000_000;
pub const PRIORITY_FEE: u128 = 2_000_000;
pub const SENDER: Address = address!("0x1000000000000000000000000000000000000001");
pub const CONTRACT_A: Address = address!("0xaaaa00000000000000000000000000000000aaaa");
pub const CONTRACT_B: Address = address!("0xbbbb00000000000000000000000000000000bbbb");
pub const TOPIC_1: B256 =
    b256!("0x1111111111111111111111111111111111111111111111111111111111111111");
pub const TOPIC_2: B256 =
    b256!("0x2222222222222222222222222222222222222222222222222222222222222222");
pub const TOPIC_3: B256 =
    b256!("0x3333333333333333333333333333333333333333333333333333333333333333");
/// `balance` answers this for `StateAt::Latest` and the block number for `StateAt::Block(n)`.
pub const LATEST_MARKER: u64 = 0xffff;
pub const PENDING_NONCE: u64 = 7;
pub const LATEST_NONCE: u64 = 5;
/// A transaction the backend knows as preconfirmed (executed, block not sealed).
pub const PRECONFIRMED_HASH: B256 =
    b256!("0x9999999999999999999999999999999999999999999999999999999999999999");

/// Revert data `Error("nope")`.
pub fn revert_nope() -> Bytes {
    let mut out = vec![0x08, 0xc3, 0x79, 0xa0];
    out.extend_from_slice(&U256::from(32).to_be_bytes::<32>());
    out.extend_from_slice(&U256::from(4).to_be_bytes::<32>());
    let mut reason = b"nope".to_vec();
    reason.resize(32, 0);
    out.extend_from_slice(&reason);
    out.into()
}

pub fn make_tx(nonce: u64, input: &[u8]) -> RecoveredTx {
    let tx = TxEip1559 {
        chain_id: CHAIN_ID,
        nonce,
        gas_limit: 100_000,
        max_fee_per_gas: 3_000_000_000,
        max_priority_fee_per_gas: 1_000_000 * (nonce as u128 + 1),
        to: TxKind::Call(CONTRACT_A),
        value: U256::from(nonce),
        access_list: AccessList::default(),
        input: Bytes::copy_from_slice(input),
    };
    let envelope = TxEnvelope::from(tx.into_signed(Signature::test_signature()));
    let raw = Bytes::from(envelope.encoded_2718());
    let hash = envelope.tx_hash();
    assert_eq!(hash, keccak256(&raw));
    RecoveredTx {
        envelope,
        sender: SENDER,
        hash,
        raw,
    }
}

pub fn make_log(address: Address, topics: Vec<B256>) -> PrimitiveLog {
    PrimitiveLog {
        address,
        data: LogData::new_unchecked(topics, Bytes::from_static(b"\x01")),
    }
}

/// A sealed block over `(transaction, its logs)` pairs, with consistent receipts.
pub fn make_block(
    number: u64,
    parent_hash: B256,
    txs: Vec<(RecoveredTx, Vec<PrimitiveLog>)>,
) -> SealedBlock {
    let mut cumulative = 0;
    let mut first_log_index = 0;
    let mut transactions = Vec::new();
    let mut receipts = Vec::new();
    for (tx, logs) in txs {
        let gas_used = 21_000 + 1_000 * logs.len() as u64;
        cumulative += gas_used;
        let log_count = logs.len() as u64;
        let bloom = logs_bloom(logs.iter());
        let receipt = ReceiptEnvelope::Eip1559(ReceiptWithBloom {
            receipt: Receipt {
                status: Eip658Value::Eip658(true),
                cumulative_gas_used: cumulative,
                logs,
            },
            logs_bloom: bloom,
        });
        receipts.push(TxReceipt {
            receipt,
            gas_used,
            effective_gas_price: u128::from(BASE_FEE) + 1_000_000,
            contract_address: None,
            first_log_index,
        });
        first_log_index += log_count;
        transactions.push(tx);
    }
    let header = Header {
        parent_hash,
        number,
        gas_limit: GAS_LIMIT,
        gas_used: cumulative,
        timestamp: 1_700_000_000 + number,
        base_fee_per_gas: Some(BASE_FEE),
        withdrawals_root: Some(alloy_consensus::constants::EMPTY_WITHDRAWALS),
        ..Header::default()
    };
    let hash = header.hash_slow();
    SealedBlock {
        header,
        hash,
        transactions,
        receipts,
        mini_blocks: number * 10..=number * 10 + 9,
    }
}

pub struct TestBackend {
    pub blocks: Mutex<Vec<Arc<SealedBlock>>>,
    pub events: broadcast::Sender<ChainEvent>,
    /// The last call request the backend saw (to check input/data handling).
    pub last_call: Mutex<Option<TransactionRequest>>,
    /// Receipt senders of sync sends that never complete (kept alive to force a timeout).
    pub stalled: Mutex<Vec<oneshot::Sender<Result<ReceiptView, BackendError>>>>,
}

impl TestBackend {
    /// Blocks 0..=3: 0 and 3 empty; block 1 with two transactions (the first logs from
    /// CONTRACT_A with TOPIC_1); block 2 with one transaction logging twice from CONTRACT_B.
    pub fn new() -> Arc<Self> {
        let genesis = make_block(0, B256::ZERO, vec![]);
        let block1 = make_block(
            1,
            genesis.hash,
            vec![
                (make_tx(0, b""), vec![make_log(CONTRACT_A, vec![TOPIC_1])]),
                (make_tx(1, b"\x12\x34"), vec![]),
            ],
        );
        let block2 = make_block(
            2,
            block1.hash,
            vec![(
                make_tx(2, b""),
                vec![
                    make_log(CONTRACT_B, vec![TOPIC_1, TOPIC_2]),
                    make_log(CONTRACT_B, vec![TOPIC_3]),
                ],
            )],
        );
        let block3 = make_block(3, block2.hash, vec![]);
        let (events, _) = broadcast::channel(64);
        Arc::new(Self {
            blocks: Mutex::new(
                vec![genesis, block1, block2, block3]
                    .into_iter()
                    .map(Arc::new)
                    .collect(),
            ),
            events,
            last_call: Mutex::new(None),
            stalled: Mutex::new(Vec::new()),
        })
    }

    pub fn head_number(&self) -> u64 {
        self.head().block_number
    }

    pub fn block(&self, number: u64) -> Arc<SealedBlock> {
        self.blocks.lock()[number as usize].clone()
    }

    /// Seals a new block on top (with the given transactions) and announces it.
    pub fn seal(&self, txs: Vec<(RecoveredTx, Vec<PrimitiveLog>)>) -> Arc<SealedBlock> {
        let block = {
            let mut blocks = self.blocks.lock();
            let parent = blocks.last().expect("genesis exists");
            let block = Arc::new(make_block(parent.header.number + 1, parent.hash, txs));
            blocks.push(block.clone());
            block
        };
        let _ = self.events.send(ChainEvent::Block(block.clone()));
        block
    }

    /// Appends a block without announcing it (to test subscribers filling gaps).
    pub fn seal_silently(&self, txs: Vec<(RecoveredTx, Vec<PrimitiveLog>)>) -> Arc<SealedBlock> {
        let mut blocks = self.blocks.lock();
        let parent = blocks.last().expect("genesis exists");
        let block = Arc::new(make_block(parent.header.number + 1, parent.hash, txs));
        blocks.push(block.clone());
        block
    }

    pub fn announce(&self, block: Arc<SealedBlock>) {
        let _ = self.events.send(ChainEvent::Block(block));
    }

    /// Announces an executed mini-block carrying `txs` (each with one log from CONTRACT_A).
    pub fn execute_mini_block(&self, number: u64, txs: Vec<RecoveredTx>) -> Arc<MiniBlock> {
        let head = self.head().block_number;
        let receipts = txs
            .iter()
            .enumerate()
            .map(|(i, _)| {
                let logs = vec![make_log(CONTRACT_A, vec![TOPIC_1])];
                let bloom = logs_bloom(logs.iter());
                TxReceipt {
                    receipt: ReceiptEnvelope::Eip1559(ReceiptWithBloom {
                        receipt: Receipt {
                            status: Eip658Value::Eip658(true),
                            cumulative_gas_used: 22_000 * (i as u64 + 1),
                            logs,
                        },
                        logs_bloom: bloom,
                    }),
                    gas_used: 22_000,
                    effective_gas_price: u128::from(BASE_FEE),
                    contract_address: None,
                    first_log_index: i as u64,
                }
            })
            .collect();
        let header = MiniBlockHeader {
            number,
            parent_hash: B256::repeat_byte(0x42),
            timestamp_us: 1_700_000_000_000_000,
            evm_block_number: head + 1,
            transactions_root: B256::repeat_byte(0x01),
            receipts_root: B256::repeat_byte(0x02),
            gas_used: 22_000 * txs.len() as u64,
            tx_count: txs.len() as u32,
        };
        let hash = header.hash();
        let mini = Arc::new(MiniBlock {
            header,
            hash,
            transactions: txs,
            receipts,
            first_index_in_block: 0,
        });
        let _ = self.events.send(ChainEvent::MiniBlock(mini.clone()));
        mini
    }

    fn find_tx(&self, hash: B256) -> Option<(Arc<SealedBlock>, usize)> {
        let blocks = self.blocks.lock();
        for block in blocks.iter() {
            if let Some(i) = block.transactions.iter().position(|tx| tx.hash == hash) {
                return Some((block.clone(), i));
            }
        }
        None
    }

    fn location(block: &SealedBlock, index: usize) -> TxLocation {
        TxLocation {
            block_number: block.header.number,
            block_hash: Some(block.hash),
            index: index as u64,
            mini_block_number: block.header.number * 10,
            block_timestamp: block.header.timestamp,
            base_fee: BASE_FEE,
        }
    }

    /// A preconfirmed receipt for `tx` (executed in mini-block 41, EVM block head + 1).
    pub fn preconfirmed_view(&self, tx: RecoveredTx) -> ReceiptView {
        let head = self.head().block_number;
        let logs = vec![make_log(CONTRACT_A, vec![TOPIC_1])];
        let bloom = logs_bloom(logs.iter());
        ReceiptView {
            tx,
            receipt: TxReceipt {
                receipt: ReceiptEnvelope::Eip1559(ReceiptWithBloom {
                    receipt: Receipt {
                        status: Eip658Value::Eip658(true),
                        cumulative_gas_used: 22_000,
                        logs,
                    },
                    logs_bloom: bloom,
                }),
                gas_used: 22_000,
                effective_gas_price: u128::from(BASE_FEE),
                contract_address: None,
                first_log_index: 0,
            },
            location: TxLocation {
                block_number: head + 1,
                block_hash: None,
                index: 0,
                mini_block_number: 41,
                block_timestamp: 0,
                base_fee: BASE_FEE,
            },
        }
    }

    fn state_marker(at: StateAt) -> Result<U256, BackendError> {
        match at {
            StateAt::Latest => Ok(U256::from(LATEST_MARKER)),
            StateAt::Block(0) => Err(BackendError::HistoricalStateUnavailable(
                "historical state for block 0 is not kept: the oldest block this node keeps is 1"
                    .into(),
            )),
            StateAt::Block(n) => Ok(U256::from(n)),
        }
    }

    fn outcome(&self, request: &TransactionRequest) -> CallOutcome {
        *self.last_call.lock() = Some(request.clone());
        let input = request.input.input().cloned().unwrap_or_default();
        if input.starts_with(&[0xde, 0xad, 0xbe, 0xef]) {
            CallOutcome::Revert {
                gas_used: 30_000,
                output: revert_nope(),
            }
        } else if input.starts_with(&[0xba, 0xd0]) {
            CallOutcome::Halt {
                gas_used: GAS_LIMIT,
                reason: "out of gas".into(),
            }
        } else if input.starts_with(&[0xfe]) {
            CallOutcome::Halt {
                gas_used: 100,
                reason: "invalid opcode: INVALID".into(),
            }
        } else {
            let mut word = [0u8; 32];
            word[31] = 0x2a;
            CallOutcome::Success {
                gas_used: 21_000 + 16 * input.len() as u64,
                output: word.to_vec().into(),
                logs: vec![],
            }
        }
    }
}

impl Backend for TestBackend {
    fn chain_id(&self) -> u64 {
        CHAIN_ID
    }

    fn client_version(&self) -> String {
        "rtchain/test".into()
    }

    fn head(&self) -> ChainHead {
        let blocks = self.blocks.lock();
        let head = blocks.last().expect("genesis exists");
        let number = head.header.number;
        ChainHead {
            block_number: number,
            block_hash: head.hash,
            mini_block_number: number * 10 + 5,
            safe_block_number: number.saturating_sub(1),
            finalized_block_number: number.saturating_sub(2),
        }
    }

    fn block_by_number(&self, number: u64) -> Result<Option<Arc<SealedBlock>>, BackendError> {
        Ok(self.blocks.lock().get(number as usize).cloned())
    }

    fn block_number_by_hash(&self, hash: B256) -> Result<Option<u64>, BackendError> {
        Ok(self
            .blocks
            .lock()
            .iter()
            .find(|b| b.hash == hash)
            .map(|b| b.header.number))
    }

    fn transaction(&self, hash: B256) -> Result<Option<TxView>, BackendError> {
        if hash == PRECONFIRMED_HASH {
            let view = self.preconfirmed_view(make_tx(99, b""));
            return Ok(Some(TxView {
                tx: view.tx,
                location: Some(view.location),
            }));
        }
        Ok(self.find_tx(hash).map(|(block, i)| TxView {
            tx: block.transactions[i].clone(),
            location: Some(Self::location(&block, i)),
        }))
    }

    fn receipt(&self, hash: B256) -> Result<Option<ReceiptView>, BackendError> {
        if hash == PRECONFIRMED_HASH {
            return Ok(Some(self.preconfirmed_view(make_tx(99, b""))));
        }
        Ok(self.find_tx(hash).map(|(block, i)| ReceiptView {
            tx: block.transactions[i].clone(),
            receipt: block.receipts[i].clone(),
            location: Self::location(&block, i),
        }))
    }

    fn logs(
        &self,
        from: u64,
        to: u64,
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<Log>, BackendError> {
        let mut out = Vec::new();
        for number in from..=to {
            let Some(block) = self.block_by_number(number)? else {
                break;
            };
            for (i, (tx, receipt)) in block.transactions.iter().zip(&block.receipts).enumerate() {
                for (j, log) in receipt.receipt.logs().iter().enumerate() {
                    if !filter.matches(log) {
                        continue;
                    }
                    if out.len() == limit {
                        return Err(BackendError::LimitExceeded(format!(
                            "query returned more than {limit} results"
                        )));
                    }
                    out.push(Log {
                        inner: log.clone(),
                        block_hash: Some(block.hash),
                        block_number: Some(number),
                        block_timestamp: Some(block.header.timestamp),
                        transaction_hash: Some(tx.hash),
                        transaction_index: Some(i as u64),
                        log_index: Some(receipt.first_log_index + j as u64),
                        removed: false,
                    });
                }
            }
        }
        Ok(out)
    }

    fn balance(&self, _: Address, at: StateAt) -> Result<U256, BackendError> {
        Self::state_marker(at)
    }

    fn nonce(&self, _: Address, at: StateAt) -> Result<u64, BackendError> {
        match at {
            StateAt::Latest => Ok(LATEST_NONCE),
            other => Self::state_marker(other).map(|n| n.to::<u64>()),
        }
    }

    fn pending_nonce(&self, _: Address) -> Result<u64, BackendError> {
        Ok(PENDING_NONCE)
    }

    fn code(&self, _: Address, at: StateAt) -> Result<Bytes, BackendError> {
        Self::state_marker(at).map(|_| Bytes::from_static(&[0x60, 0x00]))
    }

    fn storage(&self, _: Address, slot: U256, at: StateAt) -> Result<B256, BackendError> {
        Self::state_marker(at).map(|_| B256::from(slot))
    }

    fn call(
        &self,
        request: &TransactionRequest,
        at: StateAt,
        _: Option<&StateOverride>,
        _: Option<&BlockOverrides>,
    ) -> Result<CallOutcome, BackendError> {
        Self::state_marker(at)?;
        Ok(self.outcome(request))
    }

    fn estimate_gas(
        &self,
        request: &TransactionRequest,
        at: StateAt,
        _: Option<&StateOverride>,
    ) -> Result<Result<u64, CallOutcome>, BackendError> {
        Self::state_marker(at)?;
        Ok(match self.outcome(request) {
            CallOutcome::Success { gas_used, .. } => Ok(gas_used),
            failed => Err(failed),
        })
    }

    fn create_access_list(
        &self,
        request: &TransactionRequest,
        at: StateAt,
    ) -> Result<(AccessList, CallOutcome), BackendError> {
        Self::state_marker(at)?;
        Ok((AccessList::default(), self.outcome(request)))
    }

    fn send_raw_transaction(&self, raw: Bytes) -> Result<B256, BackendError> {
        match raw.as_ref() {
            [0x01] => Err(BackendError::AlreadyKnown),
            [0x02] => Err(BackendError::InvalidTransaction(
                "nonce too low: next nonce 3, tx nonce 1".into(),
            )),
            _ => Ok(keccak256(&raw)),
        }
    }

    fn send_raw_transaction_with_receipt(
        &self,
        raw: Bytes,
    ) -> Result<(B256, ReceiptWait), BackendError> {
        let (sender, receiver) = oneshot::channel();
        let receiver = wait_on(receiver);
        match raw.as_ref() {
            // Accepted but never executed: the caller times out.
            [0x03] => {
                self.stalled.lock().push(sender);
                Ok((keccak256(&raw), receiver))
            }
            // Accepted, then dropped by the node.
            [0x04] => {
                drop(sender);
                Ok((keccak256(&raw), receiver))
            }
            // Accepted, then refused at execution.
            [0x05] => {
                let _ = sender.send(Err(BackendError::InvalidTransaction(
                    "insufficient funds for gas * price + value".into(),
                )));
                Ok((keccak256(&raw), receiver))
            }
            _ => {
                self.send_raw_transaction(raw.clone())?;
                let tx = make_tx(50, &raw);
                let hash = tx.hash;
                let _ = sender.send(Ok(self.preconfirmed_view(tx)));
                Ok((hash, receiver))
            }
        }
    }

    fn proof(
        &self,
        address: Address,
        slots: &[B256],
        at: StateAt,
    ) -> Result<EIP1186AccountProofResponse, BackendError> {
        Self::state_marker(at)?;
        Ok(EIP1186AccountProofResponse {
            address,
            storage_proof: slots
                .iter()
                .map(|slot| alloy_rpc_types_eth::EIP1186StorageProof {
                    key: alloy_serde::JsonStorageKey::Hash(*slot),
                    value: U256::ZERO,
                    proof: vec![],
                })
                .collect(),
            ..Default::default()
        })
    }

    fn next_base_fee(&self) -> u64 {
        NEXT_BASE_FEE
    }

    fn next_blob_base_fee(&self) -> u128 {
        7
    }

    fn suggested_priority_fee(&self) -> u128 {
        PRIORITY_FEE
    }

    fn block_gas_limit(&self) -> u64 {
        GAS_LIMIT
    }

    fn subscribe(&self) -> broadcast::Receiver<ChainEvent> {
        self.events.subscribe()
    }
}

/// A server over a fresh test backend on an ephemeral port.
pub async fn serve(configure: impl FnOnce(&mut RpcConfig)) -> (RpcHandle, Arc<TestBackend>) {
    let backend = TestBackend::new();
    let mut config = RpcConfig {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..RpcConfig::default()
    };
    configure(&mut config);
    let handle = rtchain_rpc::start(config, backend.clone())
        .await
        .expect("server starts");
    (handle, backend)
}

/// A raw HTTP exchange: (status, headers, body).
pub async fn http_exchange(addr: SocketAddr, request: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let response = String::from_utf8(response).expect("utf-8 response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("header/body separator");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    (status, head.to_owned(), body.to_owned())
}

/// POSTs a JSON body; returns the HTTP status and the parsed JSON answer.
pub async fn post(addr: SocketAddr, body: &str) -> (u16, Value) {
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, _, body) = http_exchange(addr, &request).await;
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    (status, json)
}

/// One JSON-RPC call over HTTP; returns the whole response object.
pub async fn call(addr: SocketAddr, method: &str, params: Value) -> Value {
    let body = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    post(addr, &body.to_string()).await.1
}

/// The `result` of a successful call (panics with the error otherwise).
pub async fn result(addr: SocketAddr, method: &str, params: Value) -> Value {
    let response = call(addr, method, params).await;
    match response.get("result") {
        Some(result) => result.clone(),
        None => panic!("{method} failed: {response}"),
    }
}

/// The `error` of a failed call (panics with the result otherwise).
pub async fn error(addr: SocketAddr, method: &str, params: Value) -> Value {
    let response = call(addr, method, params).await;
    match response.get("error") {
        Some(error) => error.clone(),
        None => panic!("{method} succeeded: {response}"),
    }
}
