//! A node that rebuilds the chain from L1 alone (`rtchain node --derive-from-l1 URL`): it reads
//! every batch the inbox recorded (blobs from the beacon API, or calldata), hands the blocks to
//! the sequencer, which re-executes them (`Sequencer::run_derived`), and compares every output
//! root the validators posted with its own. The first difference stops the node with the block
//! it concerns: what a watcher would dispute.

use std::{sync::Arc, time::Duration};

use alloy::{
    eips::BlockNumberOrTag,
    primitives::U256,
    providers::{DynProvider, Provider},
};
use rtchain_exec::RecoveredTx;
use rtchain_l1::{contracts::OutputOracle, derive::BatchReader, watch::Confirmation};

use crate::{
    chain::Chain,
    sequencer::DerivedBlock,
    settlement::{Settlement, decode_output, output_key},
};

/// Blocks handed to the sequencer ahead of execution at most.
pub const DERIVED_BLOCKS_AHEAD: usize = 1_024;

/// Reads batches from L1 forever (up to L1's `confirmation` block), sending their blocks to
/// `blocks`, and checks the oracle's output roots against the derived chain. A batch that does
/// not decode or does not continue the chain, or an output root that differs, stops the node.
pub async fn follow(
    provider: DynProvider,
    l1_url: String,
    settlement: Arc<Settlement>,
    chain: Arc<Chain>,
    confirmation: Confirmation,
    blocks: crossbeam_channel::Sender<DerivedBlock>,
    poll: Duration,
) {
    let d = settlement.deployment.clone();
    let mut reader = BatchReader::new(provider.clone(), l1_url, d.inbox, d.deploy_block);
    let mut next_output = 0u64;
    loop {
        if chain.is_shut_down() {
            return;
        }
        let until = match confirmed_block(&provider, confirmation).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("derive: L1: {e} (retrying)");
                tokio::time::sleep(poll).await;
                continue;
            }
        };
        match reader.read_until(until).await {
            Ok(batches) => {
                for posted in batches {
                    tracing::info!(
                        "derive: batch {} (L2 blocks {}..={}, L1 block {}, {})",
                        posted.index,
                        posted.first_block,
                        posted.last_block,
                        posted.l1_block,
                        if posted.blobs { "blobs" } else { "calldata" }
                    );
                    // L1 holds blocks up to here: until we have executed them, we are syncing.
                    chain
                        .catch_up
                        .heard(posted.last_block, chain.state.read().head.number);
                    let count = posted.batch.blocks.len();
                    for (i, block) in posted.batch.blocks.into_iter().enumerate() {
                        let mut minis = Vec::with_capacity(block.minis.len());
                        for mini in block.minis {
                            let mut txs: Vec<RecoveredTx> =
                                Vec::with_capacity(mini.transactions.len());
                            for raw in &mini.transactions {
                                match rtchain_exec::tx::decode_block_tx(raw, &chain.exec) {
                                    Ok(tx) => txs.push(tx),
                                    Err(e) => {
                                        return stop(
                                            &chain,
                                            format!(
                                                "L2 block {} (batch {}, L1 block {}): a transaction does not decode: {e}",
                                                block.number, posted.index, posted.l1_block
                                            ),
                                        );
                                    }
                                }
                            }
                            minis.push((mini.timestamp_us, txs));
                        }
                        let derived = DerivedBlock {
                            number: block.number,
                            opened_at_us: block.opened_at_us,
                            hash: block.hash,
                            full_hash: i + 1 == count,
                            minis,
                            batch_index: posted.index,
                            l1_block: posted.l1_block,
                        };
                        // Blocks the sequencer has not taken yet wait here, bounded.
                        let mut item = derived;
                        loop {
                            match blocks.try_send(item) {
                                Ok(()) => break,
                                Err(crossbeam_channel::TrySendError::Full(back)) => {
                                    item = back;
                                    if chain.is_shut_down() {
                                        return;
                                    }
                                    tokio::time::sleep(Duration::from_millis(20)).await;
                                }
                                Err(crossbeam_channel::TrySendError::Disconnected(_)) => return,
                            }
                        }
                    }
                }
            }
            Err(e @ rtchain_l1::derive::DeriveError::L1(_)) => {
                tracing::warn!("derive: {e} (retrying)");
            }
            Err(e) => return stop(&chain, format!("derive: {e}")),
        }
        if let Err(e) = check_outputs(&provider, &settlement, &chain, &mut next_output).await {
            return stop(&chain, e);
        }
        tokio::time::sleep(poll).await;
    }
}

/// Compares every output root the oracle holds for blocks derived so far with ours.
async fn check_outputs(
    provider: &DynProvider,
    settlement: &Settlement,
    chain: &Chain,
    next_index: &mut u64,
) -> Result<(), String> {
    let oracle = OutputOracle::new(settlement.deployment.oracle, provider);
    let Ok(count) = oracle.nextOutputIndex().call().await else {
        return Ok(());
    };
    let head = chain.state.read().head.number;
    while U256::from(*next_index) < count {
        let Ok(output) = oracle.getL2Output(U256::from(*next_index)).call().await else {
            return Ok(());
        };
        if output.l2BlockNumber > head {
            return Ok(());
        }
        let ours = chain
            .store
            .settlement(&output_key(output.l2BlockNumber))
            .map_err(|e| e.to_string())?
            .and_then(|b| decode_output(&b))
            .map(|p| p.root());
        match ours {
            Some(root) if root == output.outputRoot => {
                tracing::info!(
                    "derive: output root of L2 block {} matches L1's ({root})",
                    output.l2BlockNumber
                );
            }
            Some(root) => {
                return Err(format!(
                    "the output root posted on L1 for L2 block {} ({}, output {}) differs from the one derived from L1's batches ({root}): the validators' root is wrong; dispute it",
                    output.l2BlockNumber, output.outputRoot, next_index
                ));
            }
            None => {
                return Err(format!(
                    "L2 block {} has an output root on L1 but is not an output block here (submission interval?)",
                    output.l2BlockNumber
                ));
            }
        }
        *next_index += 1;
    }
    Ok(())
}

async fn confirmed_block(
    provider: &DynProvider,
    confirmation: Confirmation,
) -> Result<u64, String> {
    let tag = match confirmation {
        Confirmation::Latest => BlockNumberOrTag::Latest,
        Confirmation::Safe => BlockNumberOrTag::Safe,
        Confirmation::Finalized => BlockNumberOrTag::Finalized,
    };
    provider
        .get_block_by_number(tag)
        .await
        .map_err(|e| e.to_string())?
        .map(|b| b.header.number)
        .ok_or_else(|| format!("no {tag} block"))
}

fn stop(chain: &Chain, why: String) {
    tracing::error!("{why}; stopping");
    chain.fail(why);
}
