//! Polling filters: eth_newFilter, eth_newBlockFilter, eth_newPendingTransactionFilter,
//! eth_getFilterChanges, eth_getFilterLogs, eth_uninstallFilter.
//!
//! Block and log filters keep no buffers: each remembers the next block it has not reported and
//! a poll reads the sealed blocks since then from the backend (at most `max_block_range` blocks
//! per poll; the rest comes with the next poll), so a slow poller costs nothing and loses
//! nothing. Pending-transaction filters are fed from the backend's event stream (the hashes of
//! each executed mini-block) into a bounded buffer that drops its oldest hashes when full and
//! counts them. Filters not polled for `filter_timeout` are removed, as geth does.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use alloy_eips::BlockNumberOrTag;
use alloy_primitives::B256;
use alloy_rpc_types_eth::{Filter, FilterBlockOption, FilterChanges, Log};
use jsonrpsee::RpcModule;
use jsonrpsee::core::RegisterMethodError;
use jsonrpsee::types::Params;
use parking_lot::Mutex;
use tokio::sync::broadcast;

use crate::RpcContext;
use crate::backend::ChainEvent;
use crate::error::{RpcResult, limit_exceeded, server_error};
use crate::eth::{check_filter_bounds, register_heavy};
use crate::middleware::random_hex_id;
use crate::params::Args;

/// Hashes a pending-transaction filter holds between polls; older ones are dropped (and
/// counted) so that a client that stops polling costs at most 32 KiB per filter until expiry.
const PENDING_TX_BUFFER_MAX: usize = 1024;
/// Pending-transaction filters installed at once: each one is fed every executed transaction,
/// so they cost work on the event path and not only memory.
const PENDING_TX_FILTERS_MAX: usize = 128;
/// How often idle filters are looked for when no events arrive.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

enum FilterKind {
    /// Reports hashes of blocks `next_block..`.
    Blocks { next_block: u64 },
    /// Reports logs of blocks `next_block..` within the filter's own range.
    Logs {
        filter: Box<Filter>,
        next_block: u64,
    },
    /// Reports hashes of transactions executed since the last poll.
    PendingTransactions {
        hashes: VecDeque<B256>,
        dropped: u64,
    },
}

struct InstalledFilter {
    kind: FilterKind,
    last_poll: Instant,
}

/// An installed filter; whether it is a pending-transaction filter is kept outside its lock so
/// that the event feed never waits on a log filter's poll.
#[derive(Clone)]
struct Entry {
    pending_transactions: bool,
    filter: Arc<Mutex<InstalledFilter>>,
}

/// All installed filters. The map lock is held only to find, insert or remove a filter; each
/// filter has its own lock, held across the backend read of one poll, so that two concurrent
/// polls of the same filter cannot report the same blocks twice.
pub(crate) struct FilterRegistry {
    filters: Mutex<HashMap<String, Entry>>,
    max_filters: usize,
    timeout: Duration,
}

impl FilterRegistry {
    pub(crate) fn new(max_filters: usize, timeout: Duration) -> Self {
        Self {
            filters: Mutex::new(HashMap::new()),
            max_filters,
            timeout,
        }
    }

    fn install(&self, kind: FilterKind) -> RpcResult<String> {
        let pending_transactions = matches!(kind, FilterKind::PendingTransactions { .. });
        let mut filters = self.filters.lock();
        if filters.len() >= self.max_filters {
            self.sweep_locked(&mut filters);
        }
        if filters.len() >= self.max_filters {
            return Err(limit_exceeded(format!(
                "too many installed filters (limit {}); uninstall unused ones",
                self.max_filters
            )));
        }
        if pending_transactions
            && filters
                .values()
                .filter(|entry| entry.pending_transactions)
                .count()
                >= PENDING_TX_FILTERS_MAX
        {
            return Err(limit_exceeded(format!(
                "too many pending transaction filters (limit {PENDING_TX_FILTERS_MAX})"
            )));
        }
        let id = random_hex_id();
        let filter = Arc::new(Mutex::new(InstalledFilter {
            kind,
            last_poll: Instant::now(),
        }));
        filters.insert(
            id.clone(),
            Entry {
                pending_transactions,
                filter,
            },
        );
        Ok(id)
    }

    fn get(&self, id: &str) -> RpcResult<Arc<Mutex<InstalledFilter>>> {
        let filters = self.filters.lock();
        let entry = filters
            .get(id)
            .ok_or_else(|| server_error("filter not found"))?;
        Ok(entry.filter.clone())
    }

    fn uninstall(&self, id: &str) -> bool {
        self.filters.lock().remove(id).is_some()
    }

    /// Removes filters idle for longer than the timeout. A filter being polled right now (its
    /// lock is held) is alive by definition.
    fn sweep_locked(&self, filters: &mut HashMap<String, Entry>) {
        let timeout = self.timeout;
        filters.retain(|_, entry| match entry.filter.try_lock() {
            Some(filter) => filter.last_poll.elapsed() < timeout,
            None => true,
        });
    }

    fn sweep(&self) {
        self.sweep_locked(&mut self.filters.lock());
    }

    /// Appends executed transaction hashes to every pending-transaction filter.
    fn feed_pending(&self, hashes: &[B256]) {
        if hashes.is_empty() {
            return;
        }
        let pending: Vec<Arc<Mutex<InstalledFilter>>> = self
            .filters
            .lock()
            .values()
            .filter(|entry| entry.pending_transactions)
            .map(|entry| entry.filter.clone())
            .collect();
        for filter in pending {
            let mut filter = filter.lock();
            if let FilterKind::PendingTransactions {
                hashes: buffer,
                dropped,
            } = &mut filter.kind
            {
                for &hash in hashes {
                    if buffer.len() == PENDING_TX_BUFFER_MAX {
                        buffer.pop_front();
                        *dropped += 1;
                    }
                    buffer.push_back(hash);
                }
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.filters.lock().len()
    }
}

/// Runs until the server's context is gone: feeds pending-transaction filters from executed
/// mini-blocks and removes idle filters.
pub(crate) fn spawn_maintenance(
    context: Weak<RpcContext>,
    mut events: broadcast::Receiver<ChainEvent>,
) {
    tokio::spawn(async move {
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        loop {
            tokio::select! {
                event = events.recv() => {
                    let Some(context) = context.upgrade() else { return };
                    match event {
                        Ok(ChainEvent::MiniBlock(mini)) => {
                            let hashes: Vec<B256> = mini.transactions.iter().map(|tx| tx.hash).collect();
                            context.filters.feed_pending(&hashes);
                        }
                        Ok(ChainEvent::Block(_)) => {}
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            tracing::debug!(target: "rpc", missed, "filter feed lagged; pending-transaction filters miss those events");
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
                _ = sweep.tick() => {
                    let Some(context) = context.upgrade() else { return };
                    context.filters.sweep();
                }
            }
        }
    });
}

pub(crate) fn register(module: &mut RpcModule<RpcContext>) -> Result<(), RegisterMethodError> {
    module.register_method("eth_newFilter", |params, ctx, _| new_filter(ctx, &params))?;
    module.register_method("eth_newBlockFilter", |params, ctx, _| {
        new_block_filter(ctx, &params)
    })?;
    module.register_method("eth_newPendingTransactionFilter", |params, ctx, _| {
        new_pending_transaction_filter(ctx, &params)
    })?;
    register_heavy(module, "eth_getFilterChanges", filter_changes)?;
    register_heavy(module, "eth_getFilterLogs", filter_logs)?;
    module.register_method("eth_uninstallFilter", |params, ctx, _| {
        uninstall_filter(ctx, &params)
    })?;
    Ok(())
}

fn new_filter(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<String> {
    let filter: Filter = Args::new(params, 1)?.required()?;
    check_filter_bounds(&filter)?;
    let next_block = ctx.backend.head().block_number + 1;
    ctx.filters.install(FilterKind::Logs {
        filter: Box::new(filter),
        next_block,
    })
}

fn new_block_filter(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<String> {
    Args::new(params, 0)?;
    let next_block = ctx.backend.head().block_number + 1;
    ctx.filters.install(FilterKind::Blocks { next_block })
}

/// Hashes of transactions as their mini-block executes (our "pending": executed, not yet
/// sealed). Full transaction objects (`true`) are not offered: that would hold whole
/// transactions per filter.
fn new_pending_transaction_filter(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<String> {
    let full: Option<bool> = Args::new(params, 1)?.optional()?;
    if full == Some(true) {
        return Err(server_error(
            "full pending transaction filters are not supported",
        ));
    }
    ctx.filters.install(FilterKind::PendingTransactions {
        hashes: VecDeque::new(),
        dropped: 0,
    })
}

fn filter_id(params: &Params<'_>) -> RpcResult<String> {
    Args::new(params, 1)?.required()
}

fn uninstall_filter(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<bool> {
    Ok(ctx.filters.uninstall(&filter_id(params)?))
}

fn filter_changes(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<FilterChanges> {
    let filter = ctx.filters.get(&filter_id(params)?)?;
    let mut filter = filter.lock();
    filter.last_poll = Instant::now();
    let head = ctx.backend.head().block_number;
    let max_range = ctx.config.max_block_range;
    match &mut filter.kind {
        FilterKind::Blocks { next_block } => {
            if *next_block > head {
                return Ok(FilterChanges::Empty);
            }
            let to = head.min(next_block.saturating_add(max_range - 1));
            let mut hashes = Vec::with_capacity((to - *next_block + 1) as usize);
            for number in *next_block..=to {
                match ctx.block_by_number(number)? {
                    Some(block) => hashes.push(block.hash),
                    None => break,
                }
            }
            *next_block += hashes.len() as u64;
            Ok(if hashes.is_empty() {
                FilterChanges::Empty
            } else {
                FilterChanges::Hashes(hashes)
            })
        }
        FilterKind::Logs { filter, next_block } => {
            let (lower, upper) = numeric_bounds(filter, head);
            let from = (*next_block).max(lower);
            let to = head.min(upper).min(from.saturating_add(max_range - 1));
            if from > to {
                // No new block yet, or none within the filter's own range.
                return Ok(FilterChanges::Empty);
            }
            let logs = ctx.logs_in_range(from, to, filter)?;
            *next_block = to + 1;
            Ok(if logs.is_empty() {
                FilterChanges::Empty
            } else {
                FilterChanges::Logs(logs)
            })
        }
        FilterKind::PendingTransactions { hashes, dropped } => {
            if *dropped > 0 {
                tracing::debug!(target: "rpc", dropped = *dropped, "pending transaction filter overflowed between polls");
                *dropped = 0;
            }
            let hashes: Vec<B256> = hashes.drain(..).collect();
            Ok(if hashes.is_empty() {
                FilterChanges::Empty
            } else {
                FilterChanges::Hashes(hashes)
            })
        }
    }
}

/// The numeric block range a log filter restricts itself to; tags that move (latest, pending,
/// safe, finalized) do not bound new blocks.
fn numeric_bounds(filter: &Filter, head: u64) -> (u64, u64) {
    let bound = |tag: Option<BlockNumberOrTag>, unbounded: u64| match tag {
        Some(BlockNumberOrTag::Number(number)) => number,
        Some(BlockNumberOrTag::Earliest) => 0,
        _ => unbounded,
    };
    match filter.block_option {
        FilterBlockOption::Range {
            from_block,
            to_block,
        } => (bound(from_block, 0), bound(to_block, u64::MAX)),
        // A filter on one block hash never matches new blocks.
        FilterBlockOption::AtBlockHash(_) => (head + 1, head),
    }
}

fn filter_logs(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<Vec<Log>> {
    let filter = ctx.filters.get(&filter_id(params)?)?;
    let criteria = {
        let mut filter = filter.lock();
        filter.last_poll = Instant::now();
        match &filter.kind {
            FilterKind::Logs { filter, .. } => (**filter).clone(),
            _ => return Err(server_error("filter not found")),
        }
    };
    ctx.logs(&criteria)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_buffer_is_bounded() {
        let registry = FilterRegistry::new(4, Duration::from_secs(60));
        let id = registry
            .install(FilterKind::PendingTransactions {
                hashes: VecDeque::new(),
                dropped: 0,
            })
            .unwrap();
        let hashes: Vec<B256> = (0..PENDING_TX_BUFFER_MAX as u64 + 10)
            .map(|n| B256::left_padding_from(&n.to_be_bytes()))
            .collect();
        registry.feed_pending(&hashes);
        let filter = registry.get(&id).unwrap();
        let filter = filter.lock();
        let FilterKind::PendingTransactions {
            hashes: buffer,
            dropped,
        } = &filter.kind
        else {
            panic!("wrong kind");
        };
        assert_eq!(buffer.len(), PENDING_TX_BUFFER_MAX);
        assert_eq!(*dropped, 10);
        assert_eq!(buffer.front(), Some(&hashes[10]));
    }

    #[test]
    fn filter_count_is_bounded_and_idle_filters_expire() {
        let registry = FilterRegistry::new(2, Duration::from_millis(20));
        registry
            .install(FilterKind::Blocks { next_block: 1 })
            .unwrap();
        registry
            .install(FilterKind::Blocks { next_block: 1 })
            .unwrap();
        let err = registry
            .install(FilterKind::Blocks { next_block: 1 })
            .unwrap_err();
        assert_eq!(err.code(), -32005);
        std::thread::sleep(Duration::from_millis(30));
        // Installing sweeps idle filters first.
        registry
            .install(FilterKind::Blocks { next_block: 1 })
            .unwrap();
        assert_eq!(registry.len(), 1);
    }
}
