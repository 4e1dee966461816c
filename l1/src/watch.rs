//! Following L1: its latest, safe and finalized blocks, the recent blocks' origin facts and
//! Portal deposits (so the sequencer can pick the next L1 origin and every validator can check
//! a proposal's deposits without a network call), and the L2 blocks the inbox holds batches
//! for at L1's safe and finalized blocks (what the L2's `safe` and `finalized` tags mean).
//!
//! One task per node polls L1 and keeps an [`L1View`] behind a lock that the sequencer's thread
//! and RPC read. The view is bounded ([`MAX_CACHED_BLOCKS`]), follows reorgs by parent hash,
//! and never waits on L1 on the hot path: a block it does not hold yet is simply not offered.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use alloy::{
    eips::BlockNumberOrTag,
    primitives::{Address, B256},
    providers::{DynProvider, Provider},
    rpc::types::Filter,
};
use parking_lot::RwLock;

use crate::{
    contracts::{BatchInbox, Portal},
    deposit::{Deposit, L1Origin, decode_deposit, deposit_event_topic},
};

/// Recent L1 blocks kept (about 2.5 hours of 1-second blocks, a day of 12-second ones).
pub const MAX_CACHED_BLOCKS: usize = 8_192;
/// L1 blocks fetched per poll at most (catching up after a pause goes in steps).
const BLOCKS_PER_POLL: u64 = 256;

/// Which L1 blocks the L2 may build on (take deposits from).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Confirmation {
    Latest,
    Safe,
    Finalized,
}

impl std::str::FromStr for Confirmation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "latest" => Ok(Self::Latest),
            "safe" => Ok(Self::Safe),
            "finalized" => Ok(Self::Finalized),
            other => Err(format!(
                "unknown L1 confirmation {other:?} (latest, safe, finalized)"
            )),
        }
    }
}

/// One cached L1 block.
#[derive(Debug, Clone)]
pub struct L1Block {
    pub origin: L1Origin,
    pub parent_hash: B256,
    pub deposits: Vec<Deposit>,
    /// The Portal's deposit count after this block.
    pub deposits_after: u64,
}

/// What the node knows of L1.
#[derive(Debug, Default)]
pub struct L1View {
    /// The first L1 block with contracts (blocks before it hold no deposits by definition).
    pub from_block: u64,
    pub latest: u64,
    pub safe: u64,
    pub finalized: u64,
    blocks: BTreeMap<u64, L1Block>,
    /// `BatchInbox.nextL2Block() - 1` at L1's safe and finalized blocks: the newest L2 block
    /// whose data is in a safe / finalized L1 block.
    pub l2_safe: u64,
    pub l2_finalized: u64,
    /// The inbox's latest batch at L1's latest block: (next L2 block, batch count).
    pub inbox_next_block: u64,
    pub inbox_batches: u64,
    /// Polls that failed in a row (0 when L1 answers).
    pub errors_in_a_row: u64,
    pub last_error: Option<String>,
}

/// The next L1-info group the sequencer may include: the new origin, the deposits after the
/// ones already processed, and the count processed after them.
#[derive(Debug, Clone)]
pub struct OriginGroup {
    pub origin: L1Origin,
    pub deposits: Vec<Deposit>,
    pub deposits_after: u64,
}

impl L1View {
    pub fn block(&self, number: u64) -> Option<&L1Block> {
        self.blocks.get(&number)
    }

    pub fn confirmed(&self, confirmation: Confirmation) -> u64 {
        match confirmation {
            Confirmation::Latest => self.latest,
            Confirmation::Safe => self.safe,
            Confirmation::Finalized => self.finalized,
        }
    }

    /// The group after origin `current` (with `processed` deposits on L2), or `None` when L1
    /// has nothing new at `confirmation`. At most `max_blocks` L1 blocks and deposits whose gas
    /// limits sum to at most `gas_budget` (the first deposit is always taken, so that one
    /// heavy deposit cannot stall the chain; the Portal caps a deposit's gas).
    pub fn next_group(
        &self,
        current: u64,
        processed: u64,
        confirmation: Confirmation,
        max_blocks: u64,
        gas_budget: u64,
    ) -> Option<OriginGroup> {
        // Blocks before the contracts hold no deposits: the first origin may jump to them.
        let base = current.max(self.from_block.saturating_sub(1));
        let target = self
            .confirmed(confirmation)
            .min(base.saturating_add(max_blocks));
        // Deposits of blocks at or before the current origin left over by a group that hit the
        // gas budget come first, at the same origin.
        let start = if self.pending_through(current, processed) {
            current
        } else {
            base + 1
        };
        if target < start {
            return None;
        }
        let mut deposits = Vec::new();
        let mut gas = 0u64;
        let mut origin_number = None;
        let mut deposits_after = processed;
        for n in start..=target {
            let block = self.blocks.get(&n)?;
            let mut all_taken = true;
            for d in block.deposits.iter().filter(|d| d.nonce >= processed) {
                if !deposits.is_empty() && gas.saturating_add(d.tx.gas_limit) > gas_budget {
                    all_taken = false;
                    break;
                }
                gas = gas.saturating_add(d.tx.gas_limit);
                deposits_after = d.nonce + 1;
                deposits.push(d.clone());
            }
            origin_number = Some(n);
            if !all_taken {
                break;
            }
            deposits_after = deposits_after.max(block.deposits_after);
        }
        let origin = self.blocks.get(&origin_number?)?.origin;
        if origin.number == current && deposits.is_empty() {
            return None;
        }
        Some(OriginGroup {
            origin,
            deposits,
            deposits_after,
        })
    }

    /// Whether deposits of blocks up to `origin` are still to be processed.
    fn pending_through(&self, origin: u64, processed: u64) -> bool {
        self.blocks
            .get(&origin)
            .is_some_and(|b| b.deposits_after > processed)
    }

    /// Checks a group a proposal carries against this view: the origin is the canonical L1
    /// block of its number, it does not go back, and the deposits are exactly the next ones.
    pub fn check_group(
        &self,
        current: u64,
        processed: u64,
        origin: &L1Origin,
        deposits_after: u64,
        deposits: &[op_alloy_consensus::TxDeposit],
    ) -> Result<(), String> {
        let block = self
            .blocks
            .get(&origin.number)
            .ok_or_else(|| format!("L1 block {} is not known here yet", origin.number))?;
        if block.origin != *origin {
            return Err(format!(
                "L1 origin {} ({}) differs from L1's block {} ({})",
                origin.number, origin.hash, block.origin.number, block.origin.hash
            ));
        }
        if origin.number < current
            || (origin.number == current && !self.pending_through(current, processed))
        {
            return Err(format!(
                "L1 origin {} does not move on from {current}",
                origin.number
            ));
        }
        if deposits_after < processed || deposits_after > block.deposits_after {
            return Err(format!(
                "deposits processed {deposits_after} outside {processed}..={}",
                block.deposits_after
            ));
        }
        let expected: Vec<&Deposit> = (current.max(self.from_block)..=origin.number)
            .filter_map(|n| self.blocks.get(&n))
            .flat_map(|b| &b.deposits)
            .filter(|d| d.nonce >= processed && d.nonce < deposits_after)
            .collect();
        if expected.len() as u64 != deposits_after - processed {
            return Err(format!(
                "deposits {processed}..{deposits_after} are not all known here"
            ));
        }
        if expected.len() != deposits.len()
            || expected.iter().zip(deposits).any(|(e, d)| e.tx != *d)
        {
            return Err(format!(
                "deposits differ from the Portal's {processed}..{deposits_after}"
            ));
        }
        Ok(())
    }
}

/// The shared view.
pub type SharedView = Arc<RwLock<L1View>>;

/// Whether the `count`th error in a row of a retrying task is worth a log line: the first,
/// then one in 30 (a dead L1 must not flood the log).
pub fn worth_logging(count: u64) -> bool {
    count == 1 || count.is_multiple_of(30)
}

/// The contracts a watcher reads.
#[derive(Debug, Clone, Copy)]
pub struct Watched {
    pub portal: Address,
    pub inbox: Address,
    /// The first L1 block worth reading: the contracts' deployment, or the L2's current origin
    /// if later (older blocks were taken into the L2 already).
    pub from_block: u64,
}

/// Polls L1 forever, every `interval`, keeping `view` current. Errors are recorded in the view
/// and retried; the task never gives up.
pub async fn follow(provider: DynProvider, watched: Watched, view: SharedView, interval: Duration) {
    loop {
        match poll(&provider, &watched, &view).await {
            Ok(()) => {
                let mut v = view.write();
                v.errors_in_a_row = 0;
            }
            Err(e) => {
                let mut v = view.write();
                v.errors_in_a_row += 1;
                if worth_logging(v.errors_in_a_row) {
                    tracing::warn!("L1: {e} (retrying)");
                }
                v.last_error = Some(e);
            }
        }
        tokio::time::sleep(interval).await;
    }
}

/// One round: heads, new blocks (and reorgs), deposits, inbox heads.
pub async fn poll(
    provider: &DynProvider,
    watched: &Watched,
    view: &SharedView,
) -> Result<(), String> {
    let err =
        |what: &'static str| move |e: alloy::transports::TransportError| format!("{what}: {e}");
    let latest = provider
        .get_block_number()
        .await
        .map_err(err("eth_blockNumber"))?;
    let tag_number = |tag| async move {
        Ok::<_, String>(
            provider
                .get_block_by_number(tag)
                .await
                .map_err(|e| format!("block {tag}: {e}"))?
                .map_or(0, |b| b.header.number),
        )
    };
    let safe = tag_number(BlockNumberOrTag::Safe).await?;
    let finalized = tag_number(BlockNumberOrTag::Finalized).await?;

    // New blocks, from after the newest cached one (or the deployment) up to latest; a parent
    // hash that does not match the cache means a reorg: drop the cached suffix and go again.
    let newest_cached = view.read().blocks.last_key_value().map(|(n, _)| *n);
    let mut next = match newest_cached {
        Some(n) => n + 1,
        None => {
            view.write().from_block = watched.from_block;
            watched.from_block
        }
    };
    let until = latest.min(next + BLOCKS_PER_POLL - 1);
    while next <= until {
        let block = provider
            .get_block_by_number(next.into())
            .await
            .map_err(err("eth_getBlockByNumber"))?
            .ok_or_else(|| format!("L1 block {next} vanished (reorg in progress)"))?;
        let header = &block.header;
        let parent_ok = {
            let v = view.read();
            match next.checked_sub(1).and_then(|p| v.blocks.get(&p)) {
                Some(parent) => parent.origin.hash == header.parent_hash,
                None => true,
            }
        };
        if !parent_ok {
            let mut v = view.write();
            let dropped = v.blocks.split_off(&(next - 1));
            tracing::warn!(
                "L1 reorg at block {}: dropped {} cached blocks",
                next - 1,
                dropped.len()
            );
            next = next.saturating_sub(1).max(watched.from_block);
            continue;
        }
        let logs = provider
            .get_logs(
                &Filter::new()
                    .address(watched.portal)
                    .event_signature(deposit_event_topic())
                    .at_block_hash(header.hash),
            )
            .await
            .map_err(err("eth_getLogs"))?;
        let mut deposits = Vec::with_capacity(logs.len());
        for log in &logs {
            match decode_deposit(log) {
                Ok(d) => deposits.push(d),
                Err(e) => tracing::warn!("L1 block {next}: skipping a Portal log: {e}"),
            }
        }
        deposits.sort_by_key(|d| d.nonce);
        let before = {
            let v = view.read();
            next.checked_sub(1)
                .and_then(|p| v.blocks.get(&p))
                .map(|b| b.deposits_after)
        };
        let deposits_after = match (deposits.last(), before) {
            (Some(last), _) => last.nonce + 1,
            (None, Some(before)) => before,
            (None, None) => {
                let portal = Portal::new(watched.portal, provider);
                portal
                    .depositCount()
                    .block(next.into())
                    .call()
                    .await
                    .map_err(|e| format!("Portal.depositCount at {next}: {e}"))?
            }
        };
        let origin = L1Origin {
            number: header.number,
            hash: header.hash,
            timestamp: header.timestamp,
            base_fee: header.base_fee_per_gas.unwrap_or_default(),
            blob_base_fee: header
                .excess_blob_gas
                .map(|excess| alloy::eips::eip7840::BlobParams::prague().calc_blob_fee(excess))
                .unwrap_or(1),
            parent_beacon_root: header.parent_beacon_block_root.unwrap_or_default(),
        };
        let mut v = view.write();
        v.blocks.insert(
            next,
            L1Block {
                origin,
                parent_hash: header.parent_hash,
                deposits,
                deposits_after,
            },
        );
        while v.blocks.len() > MAX_CACHED_BLOCKS {
            v.blocks.pop_first();
        }
        drop(v);
        next += 1;
    }

    let inbox = BatchInbox::new(watched.inbox, provider);
    let next_at = |tag: BlockNumberOrTag| {
        let inbox = inbox.clone();
        async move {
            inbox
                .nextL2Block()
                .block(tag.into())
                .call()
                .await
                .map_err(|e| format!("BatchInbox.nextL2Block at {tag}: {e}"))
        }
    };
    // Before the inbox exists at a tag (just deployed), nothing is settled there.
    let l2_safe = next_at(BlockNumberOrTag::Safe)
        .await
        .unwrap_or(1)
        .saturating_sub(1);
    let l2_finalized = next_at(BlockNumberOrTag::Finalized)
        .await
        .unwrap_or(1)
        .saturating_sub(1);
    let inbox_next = next_at(BlockNumberOrTag::Latest).await?;
    let batches = inbox
        .batchCount()
        .call()
        .await
        .map_err(|e| format!("BatchInbox.batchCount: {e}"))?;
    let mut v = view.write();
    v.latest = latest;
    v.safe = safe;
    v.finalized = finalized;
    v.l2_safe = l2_safe;
    // L1 finality is a promise: a finalized L2 head never moves back here (anvil can reorg its
    // "finalized" block; a real L1 cannot without a consensus failure).
    v.l2_finalized = v.l2_finalized.max(l2_finalized);
    v.inbox_next_block = inbox_next;
    v.inbox_batches = batches.try_into().unwrap_or(u64::MAX);
    v.last_error = None;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::primitives::{Bytes, TxKind, U256};
    use op_alloy_consensus::TxDeposit;

    fn deposit(nonce: u64, l1_block: u64, gas: u64) -> Deposit {
        Deposit {
            nonce,
            l1_block,
            tx: TxDeposit {
                source_hash: B256::with_last_byte(nonce as u8),
                from: Address::repeat_byte(1),
                to: TxKind::Call(Address::repeat_byte(2)),
                mint: 1,
                value: U256::ZERO,
                gas_limit: gas,
                is_system_transaction: false,
                input: Bytes::new(),
            },
        }
    }

    fn view(blocks: &[(u64, Vec<Deposit>)]) -> L1View {
        let mut v = L1View::default();
        let mut after = 0;
        for (n, deposits) in blocks {
            if let Some(last) = deposits.last() {
                after = last.nonce + 1;
            }
            v.blocks.insert(
                *n,
                L1Block {
                    origin: L1Origin {
                        number: *n,
                        hash: B256::with_last_byte(*n as u8),
                        ..Default::default()
                    },
                    parent_hash: B256::ZERO,
                    deposits: deposits.clone(),
                    deposits_after: after,
                },
            );
            v.latest = *n;
            v.safe = *n;
            v.finalized = *n;
        }
        v
    }

    #[test]
    fn groups_take_the_next_deposits_in_order_and_check_against_the_view() {
        let v = view(&[
            (1, vec![]),
            (2, vec![deposit(0, 2, 100), deposit(1, 2, 100)]),
            (3, vec![]),
            (4, vec![deposit(2, 4, 100)]),
        ]);
        let g = v.next_group(1, 0, Confirmation::Safe, 64, 1_000).unwrap();
        assert_eq!(g.origin.number, 4);
        assert_eq!(g.deposits.len(), 3);
        assert_eq!(g.deposits_after, 3);
        let txs: Vec<TxDeposit> = g.deposits.iter().map(|d| d.tx.clone()).collect();
        v.check_group(1, 0, &g.origin, g.deposits_after, &txs)
            .unwrap();
        // Skipping, reordering, inventing or a wrong origin hash are all refused.
        assert!(v.check_group(1, 0, &g.origin, 3, &txs[1..]).is_err());
        let mut swapped = txs.clone();
        swapped.swap(0, 1);
        assert!(v.check_group(1, 0, &g.origin, 3, &swapped).is_err());
        let mut wrong = g.origin;
        wrong.hash = B256::repeat_byte(0xee);
        assert!(v.check_group(1, 0, &wrong, 3, &txs).is_err());
        assert!(
            v.check_group(4, 3, &g.origin, 3, &[]).is_err(),
            "origin must move on"
        );
        // Nothing new after the last origin.
        assert!(v.next_group(4, 3, Confirmation::Safe, 64, 1_000).is_none());
    }

    #[test]
    fn a_gas_budget_splits_deposits_and_the_rest_follow_at_the_same_origin() {
        let v = view(&[
            (1, vec![]),
            (2, vec![deposit(0, 2, 600), deposit(1, 2, 600)]),
        ]);
        let first = v.next_group(1, 0, Confirmation::Safe, 64, 1_000).unwrap();
        assert_eq!(
            (
                first.origin.number,
                first.deposits.len(),
                first.deposits_after
            ),
            (2, 1, 1)
        );
        let txs: Vec<TxDeposit> = first.deposits.iter().map(|d| d.tx.clone()).collect();
        v.check_group(1, 0, &first.origin, 1, &txs).unwrap();
        let second = v.next_group(2, 1, Confirmation::Safe, 64, 1_000).unwrap();
        assert_eq!(
            (
                second.origin.number,
                second.deposits.len(),
                second.deposits_after
            ),
            (2, 1, 2)
        );
        let txs: Vec<TxDeposit> = second.deposits.iter().map(|d| d.tx.clone()).collect();
        v.check_group(2, 1, &second.origin, 2, &txs).unwrap();
    }

    #[test]
    fn the_confirmation_level_and_block_bound_limit_the_origin() {
        let mut v = view(&[(1, vec![]), (2, vec![]), (3, vec![deposit(0, 3, 1)])]);
        v.safe = 2;
        let g = v.next_group(1, 0, Confirmation::Safe, 64, 1_000).unwrap();
        assert_eq!(g.origin.number, 2);
        assert!(g.deposits.is_empty());
        let g = v.next_group(1, 0, Confirmation::Latest, 1, 1_000).unwrap();
        assert_eq!(g.origin.number, 2);
    }
}
