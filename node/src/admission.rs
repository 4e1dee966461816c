//! The one door into the node: both JSON-RPC (`rpc_backend`) and the UDP fast path
//! (`fastpath`) hand raw transactions to [`submit`] and get a typed answer.
//!
//! Admission applies every check that needs no state (decoding, size, type, chain id, signature,
//! intrinsic gas, fee fields: `rtchain_exec::decode_and_recover`), then the checks against the
//! newest state that geth's pool makes (nonce, balance for gas and value, the sender is not a
//! contract, not already known), so that a client hears at once what it would otherwise learn
//! from a dropped transaction. The sequencer checks again when it executes.

use alloy_consensus::Transaction as _;
use alloy_primitives::{B256, U256};
use rtchain_exec::{
    RecoveredTx, StateReader, TxError, decode_and_recover, revm::primitives::KECCAK_EMPTY,
};

use crate::{
    chain::Chain,
    outcome::{Rejection, ReplySink, Submission},
};

/// Checks a raw EIP-2718 transaction and queues it for the sequencer. `reply` is asked for the
/// sink its outcome goes to once the transaction is known to be admissible (it sees the decoded
/// transaction, e.g. for its hash). Returns the transaction hash.
pub fn submit(
    chain: &Chain,
    raw: &[u8],
    reply: impl FnOnce(&RecoveredTx) -> Option<ReplySink>,
) -> Result<B256, Rejection> {
    if chain.settlement.as_ref().is_some_and(|s| s.derive) {
        return Err(Rejection::Unavailable(
            crate::outcome::Unavailable::DerivesFromL1,
        ));
    }
    let (tx, state_nonce) = admit(chain, raw)?;
    let hash = tx.hash;
    let reply = reply(&tx);
    chain.submit(Submission { tx, reply }, state_nonce)?;
    Ok(hash)
}

/// Every admission check; returns the transaction and its sender's nonce in the newest state.
pub fn admit(chain: &Chain, raw: &[u8]) -> Result<(RecoveredTx, u64), Rejection> {
    let tx = decode_and_recover(raw, &chain.exec)?;
    let state = chain.latest_state();
    let internal = |e: rtchain_exec::StateError| Rejection::Internal(e.to_string());
    let account = state
        .account(tx.sender)
        .map_err(internal)?
        .unwrap_or_default();
    let nonce = tx.envelope.nonce();
    if nonce < account.nonce {
        return Err(TxError::NonceTooLow {
            address: tx.sender,
            tx: nonce,
            state: account.nonce,
        }
        .into());
    }
    let max_cost = U256::from(tx.envelope.gas_limit()) * U256::from(tx.envelope.max_fee_per_gas())
        + tx.envelope.value();
    if account.balance < max_cost {
        return Err(TxError::InsufficientFunds {
            address: tx.sender,
            have: account.balance,
            want: max_cost,
        }
        .into());
    }
    if account.code_hash != KECCAK_EMPTY {
        let code = state.code(account.code_hash).map_err(internal)?;
        // EIP-7702 delegated accounts may still send; real contracts may not (EIP-3607).
        if !code.is_some_and(|c| c.is_eip7702()) {
            return Err(TxError::SenderNotEoa(tx.sender).into());
        }
    }
    let known = chain.state.read().preconfirmed.contains_key(&tx.hash)
        || chain
            .store
            .tx_index(tx.hash)
            .map_err(|e| Rejection::Internal(e.to_string()))?
            .is_some();
    if known {
        return Err(Rejection::AlreadyKnown);
    }
    Ok((tx, account.nonce))
}
