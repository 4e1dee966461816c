//! eth_subscribe / eth_unsubscribe over WebSocket, notifications as `eth_subscription`:
//! - `newHeads`: the header of each sealed EVM block;
//! - `logs` (optional filter: address, topics; block ranges are ignored as geth does for live
//!   logs): each matching log of each sealed block;
//! - `miniBlocks` (ours): each executed mini-block with its preconfirmed receipts;
//! - `newPendingTransactions` (optional `true` for full objects): each transaction as its
//!   mini-block executes.
//!
//! Sealed-block streams are gap-free: a subscriber that fell behind the backend's broadcast gets
//! the blocks it missed read back from the backend (at most [`MAX_BACKFILL_BLOCKS`]). Mini-block
//! streams cannot be re-read, so a subscriber that falls behind misses mini-blocks and the count
//! is logged. A slow client is applied backpressure by jsonrpsee's per-connection buffer; that
//! stalls only its own subscription task.

use std::sync::Arc;

use alloy_rpc_types_eth::Filter;
use jsonrpsee::RpcModule;
use jsonrpsee::core::RegisterMethodError;
use jsonrpsee::server::{PendingSubscriptionSink, SubscriptionSink};
use jsonrpsee::types::{ErrorObject, Params};
use rtchain_exec::types::{MiniBlock, SealedBlock};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::broadcast::{self, error::RecvError};

use crate::RpcContext;
use crate::backend::ChainEvent;
use crate::convert::{block_logs, mini_block_notification, rpc_header, rpc_transaction};
use crate::error::{RpcResult, code};
use crate::eth::check_filter_bounds;
use crate::params::Args;

/// Blocks a lagging sealed-block subscriber gets back from the backend; beyond that the oldest
/// missed blocks are skipped (and logged) so that one slow client cannot make the node re-read
/// its whole history.
const MAX_BACKFILL_BLOCKS: u64 = 1024;

enum Kind {
    NewHeads,
    Logs(Box<Filter>),
    MiniBlocks,
    PendingTransactions { full: bool },
}

pub(crate) fn register(module: &mut RpcModule<RpcContext>) -> Result<(), RegisterMethodError> {
    module.register_subscription(
        "eth_subscribe",
        "eth_subscription",
        "eth_unsubscribe",
        |params, pending, ctx, _| subscribe(params, pending, ctx),
    )?;
    Ok(())
}

fn parse(params: &Params<'_>) -> RpcResult<Kind> {
    let mut args = Args::new(params, 2)?;
    let kind: String = args.required()?;
    match kind.as_str() {
        "newHeads" => Ok(Kind::NewHeads),
        "logs" => {
            let filter: Filter = args.optional()?.unwrap_or_default();
            check_filter_bounds(&filter)?;
            Ok(Kind::Logs(Box::new(filter)))
        }
        "miniBlocks" => Ok(Kind::MiniBlocks),
        "newPendingTransactions" => Ok(Kind::PendingTransactions {
            full: args.optional()?.unwrap_or(false),
        }),
        // geth's answer for a subscription it does not offer.
        other => Err(ErrorObject::owned(
            code::METHOD_NOT_FOUND,
            format!("no \"{other}\" subscription in eth namespace"),
            None::<()>,
        )),
    }
}

async fn subscribe(
    params: Params<'static>,
    pending: PendingSubscriptionSink,
    ctx: Arc<RpcContext>,
) {
    let kind = match parse(&params) {
        Ok(kind) => kind,
        Err(error) => {
            pending.reject(error).await;
            return;
        }
    };
    // Subscribe before answering, so that nothing sealed after the answer is missed.
    let events = ctx.backend.subscribe();
    let last_sealed = ctx.backend.head().block_number;
    let Ok(sink) = pending.accept().await else {
        return;
    };
    match kind {
        Kind::NewHeads => {
            follow_sealed_blocks(sink, &ctx, events, last_sealed, |block| {
                vec![to_raw(&rpc_header(block))]
            })
            .await
        }
        Kind::Logs(filter) => {
            follow_sealed_blocks(sink, &ctx, events, last_sealed, move |block| {
                block_logs(block, |log| filter.matches(log))
                    .iter()
                    .map(to_raw)
                    .collect()
            })
            .await
        }
        Kind::MiniBlocks => {
            follow_mini_blocks(sink, events, |mini| {
                vec![to_raw(&mini_block_notification(mini))]
            })
            .await
        }
        Kind::PendingTransactions { full } => {
            follow_mini_blocks(sink, events, move |mini| {
                mini.transactions
                    .iter()
                    .map(|tx| {
                        if full {
                            to_raw(&rpc_transaction(tx, None))
                        } else {
                            to_raw(&tx.hash)
                        }
                    })
                    .collect()
            })
            .await
        }
    }
}

/// Serializes a notification payload. Our RPC types always serialize; should one not, the
/// notification is skipped rather than the subscription torn down.
fn to_raw(value: &impl Serialize) -> Option<Box<RawValue>> {
    serde_json::value::to_raw_value(value)
        .inspect_err(|err| tracing::warn!(target: "rpc", %err, "notification not serializable"))
        .ok()
}

/// Sends notifications in order; `Err` once the client is gone.
async fn send_all(sink: &SubscriptionSink, messages: Vec<Option<Box<RawValue>>>) -> Result<(), ()> {
    for message in messages.into_iter().flatten() {
        sink.send(message).await.map_err(|_| ())?;
    }
    Ok(())
}

/// Renders every sealed block after `last_sent`, in order, without gaps.
async fn follow_sealed_blocks(
    sink: SubscriptionSink,
    ctx: &RpcContext,
    mut events: broadcast::Receiver<ChainEvent>,
    mut last_sent: u64,
    render: impl Fn(&SealedBlock) -> Vec<Option<Box<RawValue>>>,
) {
    loop {
        let event = tokio::select! {
            _ = sink.closed() => return,
            event = events.recv() => event,
        };
        let newest = match event {
            Ok(ChainEvent::Block(block)) => block,
            Ok(ChainEvent::MiniBlock(_)) => continue,
            // The next block event fills the gap from the backend.
            Err(RecvError::Lagged(missed)) => {
                tracing::debug!(target: "rpc", missed, "sealed-block subscriber lagged");
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let number = newest.header.number;
        if number <= last_sent {
            continue;
        }
        let first = (last_sent + 1).max(number.saturating_sub(MAX_BACKFILL_BLOCKS));
        if first > last_sent + 1 {
            tracing::warn!(
                target: "rpc",
                skipped = first - last_sent - 1,
                "subscriber too far behind; oldest missed blocks skipped"
            );
        }
        for missed in first..number {
            let block = match ctx.block_by_number(missed) {
                Ok(Some(block)) => block,
                Ok(None) => continue,
                Err(err) => {
                    tracing::warn!(target: "rpc", block = missed, error = %err.message(), "backfill read failed");
                    continue;
                }
            };
            if send_all(&sink, render(&block)).await.is_err() {
                return;
            }
        }
        if send_all(&sink, render(&newest)).await.is_err() {
            return;
        }
        last_sent = number;
    }
}

/// Renders every executed mini-block from now on; a lagging subscriber misses some.
async fn follow_mini_blocks(
    sink: SubscriptionSink,
    mut events: broadcast::Receiver<ChainEvent>,
    render: impl Fn(&MiniBlock) -> Vec<Option<Box<RawValue>>>,
) {
    let mut missed_total: u64 = 0;
    loop {
        let event = tokio::select! {
            _ = sink.closed() => return,
            event = events.recv() => event,
        };
        match event {
            Ok(ChainEvent::MiniBlock(mini)) => {
                if send_all(&sink, render(&mini)).await.is_err() {
                    return;
                }
            }
            Ok(ChainEvent::Block(_)) => {}
            Err(RecvError::Lagged(missed)) => {
                missed_total += missed;
                tracing::warn!(target: "rpc", missed, missed_total, "mini-block subscriber lagged; events dropped");
            }
            Err(RecvError::Closed) => return,
        }
    }
}
