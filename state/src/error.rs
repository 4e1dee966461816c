//! The storage error, a leaf every module of this crate may name (the codec decodes records
//! into it; the store and the state-root code return it).

use std::path::PathBuf;

use rtchain_exec::StateError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb at {path}: {source}")]
    Open {
        path: PathBuf,
        source: rocksdb::Error,
    },
    #[error("rocksdb: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("corrupt record: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Invalid(String),
    /// A state read below what this node keeps.
    #[error("{}", history_not_kept(*block, *oldest))]
    HistoryNotKept { block: u64, oldest: Option<u64> },
}

fn history_not_kept(block: u64, oldest: Option<u64>) -> String {
    match oldest {
        Some(oldest) => format!(
            "historical state for block {block} is not kept: the oldest block this node keeps is {oldest} (run it with a larger --history-blocks or --archive)"
        ),
        None => format!(
            "historical state for block {block} is not kept: this node keeps only the newest state (run it with --history-blocks or --archive)"
        ),
    }
}

impl From<StoreError> for StateError {
    fn from(e: StoreError) -> Self {
        StateError(e.to_string())
    }
}
