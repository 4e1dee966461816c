//! Executing consensus blocks before they are final.
//!
//! A proposal is executed as soon as it arrives, on its parent's state: the committed state plus
//! the diffs of the not-yet-finalized ancestors it extends ([`execute_records`]). Nothing is
//! committed until the engine delivers the block as finalized; then the speculative result is
//! committed without executing again. The leader builds its proposal's records from the ready
//! queue with [`build_records`], on the same kind of base.

use std::sync::Arc;

use alloy_primitives::B256;
use rtchain_consensus::{Block, Digest, Height};
use rtchain_exec::{
    ExecConfig, MiniBlockHeader, RecoveredTx, StateDiff, TxError, TxOutcome, TxReceipt, receipt,
};
use rtchain_state::{LogRecord, MiniLog, minilog::MiniBlockRecord};

use super::{
    payload::{Invalid, chain_commitment, decode_payload, diff_digest},
    waiters::Waiters,
};
use crate::{
    chain::{Chain, ParentInfo, next_block_context, now_us},
    outcome::Submission,
    sequencer::{OpenState, Sequencer},
};

/// How far ahead of our clock a leader's timestamps may be.
const MAX_CLOCK_AHEAD_US: u64 = 10_000_000;

/// Largest mini-block a proposal carries, in log-record bytes (one transport message holds a
/// little over 4 MiB).
const PROPOSAL_MINI_BLOCK_BYTES_MAX: usize = 3 << 20;

/// Execution position after some block: what the next mini-block or seal needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Point {
    pub last_mini: u64,
    pub last_mini_hash: B256,
    pub open: Option<OpenState>,
    pub closed_parent: ParentInfo,
    pub commitment: B256,
}

/// What committing a block does, in order.
pub enum Step {
    Mini {
        record: MiniBlockRecord,
        receipts: Vec<TxReceipt>,
        diff: Arc<StateDiff>,
        gas_used: u64,
        logs: u64,
    },
    Seal {
        block_number: u64,
        timestamp_us: u64,
    },
}

/// A block executed on its parent's state but not finalized yet.
pub struct Spec {
    pub parent: Digest,
    pub height: Height,
    pub point: Point,
    pub diffs: Vec<Arc<StateDiff>>,
    pub steps: Vec<Step>,
}

/// Whether a mini-block may open the EVM block after `point`'s last closed one: only when
/// that block is committed here, so that BLOCKHASH of it reads its real hash on every
/// validator and in every later re-execution (a block sealed only in an unfinalized
/// ancestor has no hash yet). Replicas apply the same rule to proposals.
pub fn may_open_block(chain: &Chain, point: &Point) -> bool {
    chain.is_closed(point.closed_parent.number)
}

/// Decodes each transaction again and recovers its sender; refuses the payload if a sender
/// differs from the one it claims or a transaction is invalid on its own.
fn recover_all(txs: &[RecoveredTx], exec: &ExecConfig) -> Result<Vec<RecoveredTx>, Invalid> {
    use rayon::prelude::*;
    txs.par_iter()
        .map(|claimed| {
            let tx = rtchain_exec::tx::decode_block_tx(&claimed.raw, exec)
                .map_err(|e| Invalid(format!("transaction {}: {e}", claimed.hash)))?;
            if tx.sender != claimed.sender {
                return Err(Invalid(format!(
                    "transaction {} claims sender {} but is signed by {}",
                    tx.hash, claimed.sender, tx.sender
                )));
            }
            Ok(tx)
        })
        .collect()
}

/// Executes a block's records on `base` (with `diffs` from the tip to its parent).
/// `trusted`: our own payload, or a finalized one (a quorum executed it); any other
/// payload's transactions are decoded and their senders recovered again here, since the
/// encoding carries the sender the proposer claims.
pub fn execute_records(
    seq: &Sequencer,
    base: Point,
    mut diffs: Vec<Arc<StateDiff>>,
    block: &Block,
    trusted: bool,
) -> Result<Spec, Invalid> {
    let chain = seq.chain();
    let mut records = decode_payload(block.payload())?;
    if !trusted {
        for record in &mut records {
            if let LogRecord::MiniBlock(m) = record {
                m.transactions = recover_all(&m.transactions, &chain.exec)?;
            }
        }
    }
    let own_from = diffs.len();
    let mut point = base;
    let mut steps = Vec::new();
    let mut parts = Vec::new();
    // A finalized block is what it is: clock checks guard only what we vote on.
    let now = if trusted { u64::MAX / 2 } else { now_us() };
    for record in records {
        match record {
            LogRecord::MiniBlock(m) => {
                if m.number != point.last_mini + 1 {
                    return Err(Invalid(format!(
                        "mini-block {} after {}",
                        m.number, point.last_mini
                    )));
                }
                if m.timestamp_us > now + MAX_CLOCK_AHEAD_US {
                    return Err(Invalid("timestamp too far in the future".into()));
                }
                if point.open.is_none() && !trusted && !may_open_block(chain, &point) {
                    return Err(Invalid(
                        "mini-block opens an EVM block on a parent block not committed yet".into(),
                    ));
                }
                let open = match point.open {
                    Some(o) if o.ctx == m.block && m.timestamp_us >= o.opened_at_us => o,
                    Some(_) => {
                        return Err(Invalid(
                            "mini-block does not continue the open block".into(),
                        ));
                    }
                    None => {
                        let ctx =
                            next_block_context(&chain.exec, &point.closed_parent, m.timestamp_us);
                        if ctx != m.block
                            || m.timestamp_us / 1_000_000 < point.closed_parent.timestamp
                        {
                            return Err(Invalid(
                                "mini-block opens a block with a wrong context".into(),
                            ));
                        }
                        OpenState {
                            ctx,
                            opened_at_us: m.timestamp_us,
                            gas_used: 0,
                            logs: 0,
                        }
                    }
                };
                if m.transactions.is_empty() {
                    return Err(Invalid("empty mini-block".into()));
                }
                if !trusted {
                    check_deposits(chain, &diffs, &m.transactions)?;
                }
                let result = seq
                    .execute_on(
                        &open.ctx,
                        &diffs,
                        m.transactions.clone(),
                        open.gas_used,
                        open.logs,
                    )
                    .map_err(|e| Invalid(format!("execution failed: {e}")))?;
                let mut receipts = Vec::with_capacity(m.transactions.len());
                for outcome in result.outcomes {
                    match outcome {
                        TxOutcome::Included { receipt, .. } => receipts.push(receipt),
                        TxOutcome::Rejected { tx, error } => {
                            return Err(Invalid(format!(
                                "transaction {} is invalid: {error}",
                                tx.hash
                            )));
                        }
                        TxOutcome::Deferred { tx } => {
                            return Err(Invalid(format!(
                                "transaction {} does not fit the block",
                                tx.hash
                            )));
                        }
                    }
                }
                if receipt::receipts_root(&receipts) != m.receipts_root {
                    return Err(Invalid("receipts root differs".into()));
                }
                let diff = Arc::new(result.diff);
                let hash = advance(&mut point, open, &m, result.gas_used, result.logs);
                parts.extend_from_slice(hash.as_slice());
                parts.extend_from_slice(diff_digest(&diff).as_slice());
                diffs.push(diff.clone());
                steps.push(Step::Mini {
                    record: m,
                    receipts,
                    diff,
                    gas_used: result.gas_used,
                    logs: result.logs,
                });
            }
            LogRecord::Seal {
                block_number,
                last_mini_block,
                timestamp_us,
            } => {
                apply_seal(
                    &chain.exec,
                    &mut point,
                    block_number,
                    last_mini_block,
                    timestamp_us,
                    now,
                )?;
                parts.extend_from_slice(b"seal");
                parts.extend_from_slice(&block_number.to_be_bytes());
                parts.extend_from_slice(&timestamp_us.to_be_bytes());
                steps.push(Step::Seal {
                    block_number,
                    timestamp_us,
                });
            }
        }
    }
    point.commitment = chain_commitment(base.commitment, &parts);
    Ok(Spec {
        parent: block.parent(),
        height: block.height(),
        point,
        diffs: diffs.split_off(own_from),
        steps,
    })
}

/// A proposal's deposits must be one leading L1-info group that this node's view of L1
/// confirms, after the origin the parent state records.
fn check_deposits(
    chain: &Chain,
    diffs: &[Arc<StateDiff>],
    txs: &[RecoveredTx],
) -> Result<(), Invalid> {
    if !txs.iter().any(RecoveredTx::is_deposit) {
        return Ok(());
    }
    let Some(settlement) = &chain.settlement else {
        return Err(Invalid(
            "deposits in a chain this node does not settle to L1".into(),
        ));
    };
    settlement
        .check_mini_block(&chain.state_with(diffs), txs)
        .map_err(|why| Invalid(format!("L1 deposits: {why}")))
}

/// As leader: the L1-info group to put first in the next mini-block on `point`, when L1 has
/// one and the open block can take it. `Err(())`: the open block has too little gas left for a
/// group and should be sealed first.
fn leader_group(
    chain: &Chain,
    point: &Point,
    diffs: &[Arc<StateDiff>],
) -> Result<Option<Vec<RecoveredTx>>, ()> {
    let Some(settlement) = &chain.settlement else {
        return Ok(None);
    };
    let state = chain.state_with(diffs);
    let Ok((origin, _, processed)) = crate::settlement::origin_in(&state) else {
        return Ok(None);
    };
    if !settlement.has_news(origin, processed) {
        return Ok(None);
    }
    let limit = chain.exec.block_gas_limit;
    let used = point.open.map_or(0, |o| o.gas_used);
    if point.open.is_some() && limit.saturating_sub(used) < crate::settlement::group_gas_room(limit)
    {
        return Err(());
    }
    Ok(settlement
        .next_group(&state, limit - used, limit)
        .ok()
        .flatten())
}

/// As leader: picks the next transactions from the ready queue and decides the seals, on
/// `base` (with `diffs` from the tip to it): the records of one proposal.
pub fn build_records(
    seq: &mut Sequencer,
    waiters: &mut Waiters,
    base: Point,
    diffs: Vec<Arc<StateDiff>>,
) -> Vec<LogRecord> {
    let chain = seq.chain().clone();
    let max_txs = chain.sequencer.max_mini_block_txs;
    let max_bytes = seq
        .max_mini_block_bytes()
        .min(PROPOSAL_MINI_BLOCK_BYTES_MAX);
    let interval_us = chain.sequencer.block_interval_ms * 1000;
    let idle_us = chain.sequencer.idle_block_interval_ms * 1000;
    let now = now_us();
    let mut records = Vec::new();
    let mut point = base;
    let mut batch: Vec<RecoveredTx> = Vec::new();
    let mut bytes = 0;
    // A new EVM block may open only on a parent block this node has committed (see
    // `may_open_block`); until then the proposal carries no transactions.
    let may_open = point.open.is_some() || may_open_block(&chain, &point);
    // L1's next origin and its deposits first; a block too full for them is sealed now and
    // they go into the next proposal's new block.
    let mut seal_for_group = false;
    if may_open {
        match leader_group(&chain, &point, &diffs) {
            Ok(Some(group)) => batch.extend(group),
            Ok(None) => {}
            Err(()) => seal_for_group = true,
        }
    }
    while may_open && !seal_for_group && batch.len() < max_txs {
        let Some(s) = seq.pop_ready() else {
            break;
        };
        let size = MiniLog::mini_block_record_bytes([s.tx.raw.len()])
            - MiniLog::mini_block_record_bytes([]);
        if !batch.is_empty() && bytes + size > max_bytes {
            seq.push_ready_front(s);
            break;
        }
        bytes += size;
        if let Some(reply) = s.reply {
            // A queued future-nonce transaction whose gap filled: its waiter moves back.
            waiters.restore(s.tx.hash, reply);
        }
        batch.push(s.tx);
    }
    if !batch.is_empty() {
        // Never before the parent block's second: replicas refuse a block that goes back.
        let opened_at = now.max(point.closed_parent.timestamp * 1_000_000);
        let open = point.open.unwrap_or_else(|| OpenState {
            ctx: next_block_context(&chain.exec, &point.closed_parent, opened_at),
            opened_at_us: opened_at,
            gas_used: 0,
            logs: 0,
        });
        match seq.execute_on(&open.ctx, &diffs, batch, open.gas_used, open.logs) {
            Ok(result) => {
                let mut included = Vec::new();
                let mut receipts = Vec::new();
                let mut deferred = Vec::new();
                for outcome in result.outcomes {
                    match outcome {
                        TxOutcome::Included { tx, receipt, .. } => {
                            included.push(tx);
                            receipts.push(receipt);
                        }
                        TxOutcome::Rejected { tx, error } => {
                            // Nonce too low here means a transaction with this nonce is
                            // already in the chain or an unfinalized ancestor (this one,
                            // gossiped to several leaders, or a replacement): its waiter is
                            // answered when that block is finalized (`Waiters::replaced`).
                            let nonce = alloy_consensus::Transaction::nonce(&tx.envelope);
                            let taken_in_committed = || {
                                rtchain_exec::StateReader::account(&chain.latest_state(), tx.sender)
                                    .ok()
                                    .flatten()
                                    .is_some_and(|a| a.nonce > nonce)
                            };
                            let reply = if matches!(error, TxError::NonceTooLow { .. })
                                && !taken_in_committed()
                            {
                                None
                            } else {
                                waiters.take(&tx.hash, tx.sender, nonce)
                            };
                            seq.reject_or_queue(tx, error, reply);
                        }
                        TxOutcome::Deferred { tx } => deferred.push(Submission::unanswered(tx)),
                    }
                }
                if !included.is_empty() {
                    let m = MiniBlockRecord {
                        number: point.last_mini + 1,
                        timestamp_us: now.max(open.opened_at_us),
                        block: open.ctx,
                        receipts_root: receipt::receipts_root(&receipts),
                        transactions: included,
                    };
                    advance(&mut point, open, &m, result.gas_used, result.logs);
                    records.push(LogRecord::MiniBlock(m));
                }
                if !deferred.is_empty() {
                    for s in deferred.into_iter().rev() {
                        seq.push_ready_front(s);
                    }
                    if let Some(o) = point.open {
                        records.push(seal_record(&mut point, o, &chain.exec));
                    }
                }
            }
            Err(e) => {
                tracing::error!("executing a proposal's transactions failed: {e}");
            }
        }
    }
    // Close the open block when its interval is over (or a group needs a fresh one), or an
    // empty one when idle, so that time moves on.
    match point.open {
        Some(o) if now >= o.opened_at_us + interval_us || seal_for_group => {
            records.push(seal_record(&mut point, o, &chain.exec));
        }
        None if now >= point.closed_parent.timestamp * 1_000_000 + idle_us => {
            records.push(LogRecord::Seal {
                block_number: point.closed_parent.number + 1,
                last_mini_block: point.last_mini,
                timestamp_us: now,
            });
        }
        _ => {}
    }
    records
}

/// The transactions of some records, in order.
pub fn records_txs(records: &[LogRecord]) -> Vec<RecoveredTx> {
    records
        .iter()
        .flat_map(|r| match r {
            LogRecord::MiniBlock(m) => m.transactions.clone(),
            LogRecord::Seal { .. } => Vec::new(),
        })
        .collect()
}

/// Moves `point` past mini-block `m` of the open block `open`; returns the mini-block's hash.
fn advance(
    point: &mut Point,
    open: OpenState,
    m: &MiniBlockRecord,
    gas_used: u64,
    logs: u64,
) -> B256 {
    let hash = mini_header(m, point.last_mini_hash, gas_used).hash();
    point.last_mini = m.number;
    point.last_mini_hash = hash;
    point.open = Some(OpenState {
        gas_used: open.gas_used + gas_used,
        logs: open.logs + logs,
        ..open
    });
    hash
}

fn mini_header(m: &MiniBlockRecord, parent_hash: B256, gas_used: u64) -> MiniBlockHeader {
    MiniBlockHeader {
        number: m.number,
        parent_hash,
        timestamp_us: m.timestamp_us,
        evm_block_number: m.block.number,
        transactions_root: receipt::transactions_root(&m.transactions),
        receipts_root: m.receipts_root,
        gas_used,
        tx_count: m.transactions.len() as u32,
    }
}

fn seal_record(point: &mut Point, open: OpenState, exec: &ExecConfig) -> LogRecord {
    let record = LogRecord::Seal {
        block_number: open.ctx.number,
        last_mini_block: point.last_mini,
        timestamp_us: open.opened_at_us,
    };
    apply_seal(
        exec,
        point,
        open.ctx.number,
        point.last_mini,
        open.opened_at_us,
        u64::MAX,
    )
    .expect("a seal we build is valid");
    record
}

/// Checks a seal against `point` and moves `point` past it.
fn apply_seal(
    exec: &ExecConfig,
    point: &mut Point,
    block_number: u64,
    last_mini_block: u64,
    timestamp_us: u64,
    now: u64,
) -> Result<(), Invalid> {
    if last_mini_block != point.last_mini {
        return Err(Invalid("seal names the wrong last mini-block".into()));
    }
    let (ctx, gas_used) = match point.open {
        Some(o) => {
            if o.ctx.number != block_number || o.opened_at_us != timestamp_us {
                return Err(Invalid("seal does not match the open block".into()));
            }
            (o.ctx, o.gas_used)
        }
        None => {
            if block_number != point.closed_parent.number + 1
                || timestamp_us / 1_000_000 < point.closed_parent.timestamp
                || timestamp_us > now.saturating_add(MAX_CLOCK_AHEAD_US)
            {
                return Err(Invalid(
                    "empty block seal out of order or out of time".into(),
                ));
            }
            (
                next_block_context(exec, &point.closed_parent, timestamp_us),
                0,
            )
        }
    };
    point.closed_parent = ParentInfo {
        number: ctx.number,
        timestamp: ctx.timestamp,
        gas_used,
        gas_limit: ctx.gas_limit,
        base_fee: ctx.base_fee,
        last_mini_hash: point.last_mini_hash,
    };
    point.open = None;
    Ok(())
}
