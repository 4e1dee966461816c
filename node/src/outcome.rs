//! The typed boundary every transaction crosses, whichever door it came in by.
//!
//! A submission goes in as a [`Submission`]: the checked transaction and, if someone waits for
//! it, a [`ReplySink`]. What comes back is typed end to end:
//! - at the door, `Ok(hash)` (admitted) or a [`Rejection`] (see `admission`);
//! - later, through the sink, exactly one [`Outcome`]: executed with its receipt, rejected (the
//!   nonce moved on, another transaction replaced it, the sender's queue was full), or failed
//!   (the node stopped first).
//!
//! JSON-RPC (`rpc_backend`) and the UDP fast path (`fastpath`) are two thin adapters that
//! `match` on these enums: JSON-RPC maps them to geth's codes and texts, the wire format to its
//! reject codes. No error text is ever parsed.

use std::net::SocketAddrV4;

use alloy_primitives::{Address, B256};
use rtchain_exec::{ReceiptView, RecoveredTx, TxError};
use tokio::sync::oneshot;

/// A checked transaction handed to the sequencer, with where its outcome goes.
pub struct Submission {
    pub tx: RecoveredTx,
    pub reply: Option<ReplySink>,
}

impl Submission {
    /// A transaction nobody waits for on this node (gossip, replay, `eth_sendRawTransaction`).
    pub fn unanswered(tx: RecoveredTx) -> Self {
        Self { tx, reply: None }
    }
}

/// Where a transaction's outcome goes when someone waits for it.
pub enum ReplySink {
    /// A JSON-RPC caller (`eth_sendRawTransactionSync`, `realtime_sendRawTransaction`).
    Rpc(oneshot::Sender<Outcome>),
    /// A UDP fast-path client, answered with a Receipt or Reject datagram by its net tile.
    FastPath(Ticket),
}

/// Where a fast-path transaction's outcome is sent: the datagram it came in and its position.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    /// Net tile that received it (and owns the port to answer through).
    pub route: u16,
    pub peer: SocketAddrV4,
    pub local_port: u16,
    pub request_id: u64,
    pub index: u16,
    pub tx_hash: [u8; 32],
    /// Bytes of reason text a Reject may carry: the transaction's own length (docs/wire.md,
    /// "Amplification").
    pub reason_budget: u16,
}

/// What finally happened to an admitted transaction.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "Executed is the common case; boxing it would add an allocation per receipt"
)]
pub enum Outcome {
    /// Executed in a mini-block that is durable (and, with validators, finalized).
    Executed(ReceiptView),
    /// Refused after admission: never executed, nothing charged.
    Rejected(Rejection),
    /// The node could not process it.
    Failed(Failure),
}

/// Why a transaction was refused, at the door or later. The `Display` text is geth's where geth
/// has one (clients and wallets match on it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The transaction breaks a validity rule: encoding, signature, chain id, gas, fees, nonce,
    /// balance, sender (the exec crate's typed reason, in geth's words).
    #[error(transparent)]
    Invalid(#[from] TxError),
    /// Already pending or included.
    #[error("already known")]
    AlreadyKnown,
    /// The pending queue is at its bound.
    #[error("txpool is full")]
    PoolFull,
    /// The nonce leaves a gap and the sender already has `limit` transactions waiting for it.
    #[error(
        "txpool is full: sender {sender} has {limit} queued transactions waiting for nonce {next_nonce} (the per-sender limit)"
    )]
    NonceGapFull {
        sender: Address,
        limit: usize,
        next_nonce: u64,
    },
    /// Another transaction with the same sender and nonce took its place: a replacement in the
    /// queue (`by` unknown here), or a finalized one (`by` is its hash).
    #[error("{}", replaced_text(*.nonce, *.by))]
    Replaced { nonce: u64, by: Option<B256> },
    /// The node takes no transactions now.
    #[error("node unavailable: {0}")]
    Unavailable(Unavailable),
    /// The node could not check the transaction (a storage read failed).
    #[error("internal error: {0}")]
    Internal(String),
}

fn replaced_text(nonce: u64, by: Option<B256>) -> String {
    match by {
        Some(hash) => {
            format!("replaced: transaction {hash} with the same nonce {nonce} was finalized")
        }
        None => "replaced by a transaction with the same nonce".into(),
    }
}

/// Why the node takes no transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    #[error("node is shutting down")]
    ShuttingDown,
    #[error("sequencer stopped")]
    SequencerStopped,
    /// A node that derives its chain from L1 takes no transactions: send them to a validator.
    #[error(
        "this node derives its chain from L1 and takes no transactions; send them to a validator"
    )]
    DerivesFromL1,
}

/// Why an admitted transaction was never processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The node stopped (shutdown, or a storage failure stopped its sequencer) before the
    /// transaction executed.
    #[error("the node stopped before the transaction executed")]
    Stopped,
}

/// The fast path's half of answering: turns an outcome into a datagram on the ticket's route.
/// Implemented by the fast path, so that this module knows nothing of rings or the wire.
pub trait FastPathReplies: Send {
    fn answer(&mut self, ticket: Ticket, outcome: &Outcome);
}

/// The sequencer's side of the boundary: sends every outcome to its sink.
pub struct Answers {
    fast_path: Option<Box<dyn FastPathReplies>>,
}

impl Answers {
    /// No fast path: fast-path tickets cannot arise.
    pub fn none() -> Self {
        Self { fast_path: None }
    }

    pub fn with_fast_path(replies: Box<dyn FastPathReplies>) -> Self {
        Self {
            fast_path: Some(replies),
        }
    }

    pub fn send(&mut self, reply: ReplySink, outcome: Outcome) {
        match reply {
            ReplySink::Rpc(sender) => {
                // The caller may have given up (timeout, closed connection): nothing to do.
                let _ = sender.send(outcome);
            }
            ReplySink::FastPath(ticket) => {
                if let Some(replies) = &mut self.fast_path {
                    replies.answer(ticket, &outcome);
                }
            }
        }
    }

    pub fn reject(&mut self, reply: Option<ReplySink>, rejection: Rejection) {
        if let Some(reply) = reply {
            self.send(reply, Outcome::Rejected(rejection));
        }
    }
}
