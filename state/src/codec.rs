//! Fixed binary encodings of what RocksDB stores. Every decoder checks lengths and returns an
//! error instead of panicking on a corrupt record.

use alloy_eips::eip2718::{Decodable2718, Encodable2718};
use alloy_primitives::{Address, B256, Bytes, U256};
use op_alloy_consensus::{OpReceiptEnvelope, OpTxEnvelope};
use revm::state::AccountInfo;
use rtchain_exec::{RecoveredTx, TxReceipt};

use crate::error::StoreError;

/// nonce (8) | balance (32) | code hash (32).
pub const ACCOUNT_LEN: usize = 72;

pub fn encode_account(info: &AccountInfo) -> [u8; ACCOUNT_LEN] {
    let mut out = [0u8; ACCOUNT_LEN];
    out[..8].copy_from_slice(&info.nonce.to_be_bytes());
    out[8..40].copy_from_slice(&info.balance.to_be_bytes::<32>());
    out[40..].copy_from_slice(info.code_hash.as_slice());
    out
}

pub fn decode_account(bytes: &[u8]) -> Result<AccountInfo, StoreError> {
    if bytes.len() != ACCOUNT_LEN {
        return Err(StoreError::Corrupt(format!(
            "account record of {} bytes",
            bytes.len()
        )));
    }
    let nonce = u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
    let balance = U256::from_be_slice(&bytes[8..40]);
    let code_hash = B256::from_slice(&bytes[40..]);
    Ok(AccountInfo {
        balance,
        nonce,
        code_hash,
        code: None,
        ..Default::default()
    })
}

/// A little cursor over a record that fails cleanly when the record is short.
pub struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Self { bytes, what }
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.bytes.len() < n {
            return Err(StoreError::Corrupt(format!(
                "{} record truncated",
                self.what
            )));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> Result<u32, StoreError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    pub fn u64(&mut self) -> Result<u64, StoreError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    pub fn u128(&mut self) -> Result<u128, StoreError> {
        Ok(u128::from_be_bytes(
            self.take(16)?.try_into().expect("16 bytes"),
        ))
    }
    pub fn b256(&mut self) -> Result<B256, StoreError> {
        Ok(B256::from_slice(self.take(32)?))
    }
    pub fn address(&mut self) -> Result<Address, StoreError> {
        Ok(Address::from_slice(self.take(20)?))
    }
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Transactions with their senders, so that loading a block never repeats sender recovery:
/// count (4) then, per transaction, sender (20) | length (4) | EIP-2718 bytes.
pub fn encode_transactions(txs: &[RecoveredTx]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + txs.iter().map(|t| 24 + t.raw.len()).sum::<usize>());
    out.extend_from_slice(&(txs.len() as u32).to_be_bytes());
    for tx in txs {
        out.extend_from_slice(tx.sender.as_slice());
        out.extend_from_slice(&(tx.raw.len() as u32).to_be_bytes());
        out.extend_from_slice(&tx.raw);
    }
    out
}

pub fn decode_transactions(bytes: &[u8]) -> Result<Vec<RecoveredTx>, StoreError> {
    let mut r = Reader::new(bytes, "transactions");
    let count = r.u32()? as usize;
    let mut txs = Vec::with_capacity(count.min(1 << 16));
    for _ in 0..count {
        let sender = r.address()?;
        let len = r.u32()? as usize;
        let raw = r.take(len)?;
        let envelope = OpTxEnvelope::decode_2718(&mut &raw[..])
            .map_err(|e| StoreError::Corrupt(format!("stored transaction: {e}")))?;
        let hash = envelope.tx_hash();
        txs.push(RecoveredTx {
            envelope,
            sender,
            hash,
            raw: Bytes::copy_from_slice(raw),
        });
    }
    Ok(txs)
}

/// count (4) then, per receipt: length (4) | EIP-2718 receipt | gas used (8) | effective gas
/// price (16) | has contract (1) | contract address (20) | first log index (8).
pub fn encode_receipts(receipts: &[TxReceipt]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(receipts.len() as u32).to_be_bytes());
    for r in receipts {
        let encoded = r.receipt.encoded_2718();
        out.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
        out.extend_from_slice(&encoded);
        out.extend_from_slice(&r.gas_used.to_be_bytes());
        out.extend_from_slice(&r.effective_gas_price.to_be_bytes());
        out.push(r.contract_address.is_some() as u8);
        out.extend_from_slice(r.contract_address.unwrap_or_default().as_slice());
        out.extend_from_slice(&r.first_log_index.to_be_bytes());
    }
    out
}

pub fn decode_receipts(bytes: &[u8]) -> Result<Vec<TxReceipt>, StoreError> {
    let mut r = Reader::new(bytes, "receipts");
    let count = r.u32()? as usize;
    let mut out = Vec::with_capacity(count.min(1 << 16));
    for _ in 0..count {
        let len = r.u32()? as usize;
        let raw = r.take(len)?;
        let receipt = OpReceiptEnvelope::decode_2718(&mut &raw[..])
            .map_err(|e| StoreError::Corrupt(format!("stored receipt: {e}")))?;
        let gas_used = r.u64()?;
        let effective_gas_price = r.u128()?;
        let has_contract = r.u8()? == 1;
        let contract = r.address()?;
        let first_log_index = r.u64()?;
        out.push(TxReceipt {
            receipt,
            gas_used,
            effective_gas_price,
            contract_address: has_contract.then_some(contract),
            first_log_index,
        });
    }
    Ok(out)
}
