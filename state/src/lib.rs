//! Storage for rtchain: RocksDB column families for flat state, code, trie nodes, blocks,
//! receipts and indexes; the mini-block log that makes a receipt an acknowledgment; genesis; the
//! incremental Merkle-Patricia state root.
//!
//! It knows nothing of networking or consensus. Writes happen in one atomic batch per sealed EVM
//! block; between seals, the newest state lives in memory as [`layered::Layers`] over RocksDB,
//! and the mini-block log (a preallocated file overwritten in place, one `fdatasync` per
//! mini-block) holds everything needed to rebuild it after a crash.

pub mod codec;
pub mod error;
pub mod genesis;
pub mod history;
pub mod layered;
pub mod minilog;
pub mod state_root;
pub mod store;
#[cfg(test)]
mod test_diffs;
pub mod trie;

pub use error::StoreError;
pub use genesis::{Genesis, GenesisError};
pub use history::HistoryMode;
pub use layered::{LayeredState, Layers};
pub use minilog::{LogRecord, MiniLog, MiniLogError};
pub use store::Store;
