//! Execution for rtchain: decoding and checking transactions (EIP-2718 envelopes, sender
//! recovery with libsecp256k1), executing them on revm over a [`StateReader`] (sequentially, or
//! in parallel with results equal to sequential: [`parallel`]), and building receipts, logs
//! blooms and the EIP-1559 base fee.
//!
//! This crate knows nothing of storage engines, networking or consensus: state comes in through
//! the [`StateReader`] trait, so the same executor runs over RocksDB, an in-memory overlay or a
//! state-test fixture, and gives the same result on every validator.

pub mod call;
pub mod config;
pub mod executor;
pub mod memory;
pub mod parallel;
pub mod receipt;
pub mod state;
pub mod system;
#[cfg(test)]
mod test_deposits;
pub mod trace;
pub mod tx;
pub mod types;

pub use config::ExecConfig;

/// Stack for a thread that runs the EVM. revm keeps its frames on the heap, but each nested
/// call still takes native stack on the speculative and commit paths of the parallel executor;
/// a call chain 1,024 deep needs more than the default 2 MiB (about 4 MiB measured). Only the
/// pages used are backed by memory.
pub const EVM_THREAD_STACK_BYTES: usize = 64 << 20;
pub use executor::{BatchResult, BlockContext, SimulationChecks, TxOutcome};
pub use memory::MemoryState;
pub use parallel::{BatchStats, ParallelConfig, ParallelExecutor};
pub use state::{AccountChange, Overlay, StateDiff, StateError, StateReader};
pub use tx::{TxError, decode_and_recover};
pub use types::{
    ChainEvent, MiniBlock, MiniBlockHeader, ReceiptView, RecoveredTx, SealedBlock, TxLocation,
    TxReceipt,
};

/// Re-exported so that dependants name one revm.
pub use revm;
