//! The proposer: output roots signed by a quorum of validators, posted to the `OutputOracle`.
//!
//! Every validator computes the output root of every `submission_interval`-th L2 block as it
//! seals it, signs it with its settlement key and sends the signature to the other validators
//! (the node does this over the consensus transport). Signatures collect in an
//! [`OutputBook`]; a signature counts only for the root this node computed itself, from a
//! registered validator. Each validator's poster watches the oracle's `nextBlockNumber()`; the
//! validator whose turn it is (`(block / interval) % n`) posts as soon as a quorum is in, the
//! others after a grace period, so a dead validator delays a root but cannot stop it. A root
//! posted twice is refused by the oracle as "not the next block", at the cost of gas only.

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use alloy::{
    network::EthereumWallet,
    primitives::{Address, B256, Bytes},
    providers::{DynProvider, Provider, ProviderBuilder},
    signers::local::PrivateKeySigner,
};
use parking_lot::Mutex;

use crate::{
    contracts::OutputOracle,
    output::{OutputDomain, OutputRootProof, order_signatures, quorum, recover_signer},
};

/// Outputs kept behind the oracle's next block (to serve late signatures and withdrawals'
/// provers with the proof fields).
const KEEP_BEHIND: usize = 64;
/// Outputs kept ahead (signed locally, not posted yet) at most.
const MAX_AHEAD: usize = 4_096;
/// Signatures from others for roots we have not computed yet, at most.
const MAX_EARLY: usize = 1_024;

/// One output being signed.
#[derive(Debug, Clone)]
pub struct OutputEntry {
    pub proof: OutputRootProof,
    pub root: B256,
    pub signatures: BTreeMap<Address, Bytes>,
    pub computed_at: Instant,
}

/// Outputs and the signatures collected for them.
#[derive(Debug)]
pub struct OutputBook {
    pub domain: OutputDomain,
    pub interval: u64,
    /// The validators' settlement addresses.
    pub validators: HashSet<Address>,
    /// The oracle's `nextBlockNumber()` when last read (0: not yet).
    pub next_wanted: u64,
    outputs: BTreeMap<u64, OutputEntry>,
    /// Signatures for (block, root) that arrived before we computed that output.
    early: BTreeMap<(u64, B256), BTreeMap<Address, Bytes>>,
}

impl OutputBook {
    pub fn new(domain: OutputDomain, interval: u64, validators: HashSet<Address>) -> Self {
        Self {
            domain,
            interval,
            validators,
            next_wanted: 0,
            outputs: BTreeMap::new(),
            early: BTreeMap::new(),
        }
    }

    /// Our own output of `block`; returns the entry to sign.
    pub fn add_local(&mut self, block: u64, proof: OutputRootProof) -> &mut OutputEntry {
        let root = proof.root();
        let signatures = self.early.remove(&(block, root)).unwrap_or_default();
        self.early.retain(|(b, _), _| *b != block);
        while self.outputs.len() >= MAX_AHEAD + KEEP_BEHIND {
            self.outputs.pop_first();
        }
        self.outputs.entry(block).or_insert(OutputEntry {
            proof,
            root,
            signatures,
            computed_at: Instant::now(),
        })
    }

    pub fn get(&self, block: u64) -> Option<&OutputEntry> {
        self.outputs.get(&block)
    }

    /// A validator's signature over (`block`, `root`). Returns whether it counted.
    pub fn add_signature(&mut self, block: u64, root: B256, signature: Bytes) -> bool {
        let digest = self.domain.digest(block, root);
        let Some(signer) = recover_signer(digest, &signature) else {
            return false;
        };
        if !self.validators.contains(&signer) {
            return false;
        }
        match self.outputs.get_mut(&block) {
            Some(entry) if entry.root == root => {
                entry.signatures.insert(signer, signature);
                true
            }
            // Another root for a block we computed: that validator disagrees with us; it does
            // not count (the oracle would refuse a mix anyway).
            Some(_) => false,
            None => {
                if self.early.len() < MAX_EARLY {
                    self.early
                        .entry((block, root))
                        .or_default()
                        .insert(signer, signature);
                }
                false
            }
        }
    }

    /// The signatures for `block` in the oracle's order, once a quorum of them is in.
    pub fn ready(&self, block: u64) -> Option<(B256, Vec<Bytes>)> {
        let entry = self.outputs.get(&block)?;
        (entry.signatures.len() >= quorum(self.validators.len())).then(|| {
            let signed = entry
                .signatures
                .iter()
                .map(|(a, s)| (*a, s.clone()))
                .collect();
            (entry.root, order_signatures(signed))
        })
    }

    /// Forgets outputs well behind the oracle.
    fn prune(&mut self) {
        let keep_from = self
            .next_wanted
            .saturating_sub(self.interval.saturating_mul(KEEP_BEHIND as u64));
        self.outputs.retain(|b, _| *b >= keep_from);
        self.early.retain(|(b, _), _| *b >= self.next_wanted);
    }
}

#[derive(Debug, Clone)]
pub struct ProposerConfig {
    pub oracle: Address,
    /// Pays for posting (this validator's settlement key).
    pub key: PrivateKeySigner,
    /// This validator's turn: `(block / interval) % validators == index`.
    pub index: usize,
    pub validators: usize,
    /// How long the others wait after a quorum before posting in the designated one's place.
    pub grace: Duration,
    pub poll: Duration,
}

/// A posted output, for `rtchain l1 status` and `bench l1`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PostedOutput {
    pub l2_block: u64,
    pub root: B256,
    pub signatures: usize,
    pub l1_tx: B256,
    pub l1_block: u64,
    pub l1_gas_used: u64,
    /// From computing the root (sealing the block) to the receipt.
    pub posted_after_ms: u64,
}

#[derive(Debug, Default)]
pub struct ProposerStats {
    pub posted: Vec<PostedOutput>,
    pub errors: u64,
    pub last_error: Option<String>,
}

/// Posted outputs kept in [`ProposerStats`].
const KEEP_POSTED: usize = 1_024;

/// Runs the poster until the process ends.
pub async fn run(
    l1_url: String,
    config: ProposerConfig,
    book: Arc<Mutex<OutputBook>>,
    stats: Arc<Mutex<ProposerStats>>,
) {
    let provider = match ProviderBuilder::new()
        .wallet(EthereumWallet::from(config.key.clone()))
        .connect(&l1_url)
        .await
    {
        Ok(p) => p.erased(),
        Err(e) => {
            tracing::error!("proposer: cannot reach L1 at {l1_url}: {e}");
            return;
        }
    };
    let mut ready_since: Option<(u64, Instant)> = None;
    loop {
        if let Err(e) = round(&provider, &config, &book, &stats, &mut ready_since).await {
            let mut s = stats.lock();
            s.errors += 1;
            if crate::watch::worth_logging(s.errors) {
                tracing::warn!("proposer: {e} (retrying)");
            }
            s.last_error = Some(e);
        }
        tokio::time::sleep(config.poll).await;
    }
}

async fn round(
    provider: &DynProvider,
    config: &ProposerConfig,
    book: &Mutex<OutputBook>,
    stats: &Mutex<ProposerStats>,
    ready_since: &mut Option<(u64, Instant)>,
) -> Result<(), String> {
    let oracle = OutputOracle::new(config.oracle, provider);
    let next: u64 = oracle
        .nextBlockNumber()
        .call()
        .await
        .map_err(|e| format!("OutputOracle.nextBlockNumber: {e}"))?
        .try_into()
        .unwrap_or(u64::MAX);
    let (ready, interval, computed_at) = {
        let mut b = book.lock();
        b.next_wanted = next;
        b.prune();
        (
            b.ready(next),
            b.interval,
            b.get(next).map(|e| e.computed_at),
        )
    };
    let Some((root, signatures)) = ready else {
        *ready_since = None;
        return Ok(());
    };
    let since = match *ready_since {
        Some((block, at)) if block == next => at,
        _ => {
            let now = Instant::now();
            *ready_since = Some((next, now));
            now
        }
    };
    let turn = (next / interval.max(1)) as usize % config.validators.max(1) == config.index;
    if !turn && since.elapsed() < config.grace {
        return Ok(());
    }
    let count = signatures.len();
    let receipt = oracle
        .proposeOutput(root, next, signatures)
        .send()
        .await
        .map_err(|e| format!("proposeOutput({next}): {e}"))?
        .get_receipt()
        .await
        .map_err(|e| format!("proposeOutput({next}) receipt: {e}"))?;
    if !receipt.status() {
        // Another validator posted first (or the oracle is paused): read it again next round.
        return Err(format!(
            "proposeOutput({next}) reverted in {}",
            receipt.transaction_hash
        ));
    }
    tracing::info!(
        "proposer: output root {root} of L2 block {next} posted with {count} signatures in L1 block {:?}",
        receipt.block_number
    );
    let mut s = stats.lock();
    s.posted.push(PostedOutput {
        l2_block: next,
        root,
        signatures: count,
        l1_tx: receipt.transaction_hash,
        l1_block: receipt.block_number.unwrap_or_default(),
        l1_gas_used: receipt.gas_used,
        posted_after_ms: computed_at.map_or(0, |t| t.elapsed().as_millis() as u64),
    });
    if s.posted.len() > KEEP_POSTED {
        s.posted.remove(0);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quorum_of_registered_signers_on_our_root_makes_an_output_ready() {
        let keys: Vec<PrivateKeySigner> = (0..4).map(|_| PrivateKeySigner::random()).collect();
        let domain = OutputDomain {
            l1_chain_id: 1,
            oracle: Address::repeat_byte(1),
            l2_chain_id: 2,
        };
        let mut book = OutputBook::new(domain, 10, keys.iter().map(|k| k.address()).collect());
        let proof = OutputRootProof::new(
            B256::repeat_byte(1),
            B256::repeat_byte(2),
            B256::repeat_byte(3),
        );
        let root = proof.root();
        let sign =
            |k: &PrivateKeySigner, root| crate::output::sign_output(k, domain.digest(10, root));
        // Early signatures wait for our own root.
        assert!(!book.add_signature(10, root, sign(&keys[0], root)));
        book.add_local(10, proof);
        assert!(book.ready(10).is_none());
        assert!(book.add_signature(10, root, sign(&keys[1], root)));
        // A stranger's and a disagreeing root do not count.
        let stranger = PrivateKeySigner::random();
        assert!(!book.add_signature(10, root, sign(&stranger, root)));
        let other = B256::repeat_byte(9);
        assert!(!book.add_signature(10, other, sign(&keys[2], other)));
        assert!(book.ready(10).is_none());
        assert!(book.add_signature(10, root, sign(&keys[2], root)));
        let (ready_root, sigs) = book.ready(10).unwrap();
        assert_eq!(ready_root, root);
        assert_eq!(sigs.len(), 3);
        // Ordered by signer address, as the oracle wants.
        let signers: Vec<Address> = sigs
            .iter()
            .map(|s| recover_signer(domain.digest(10, root), s).unwrap())
            .collect();
        let mut sorted = signers.clone();
        sorted.sort();
        assert_eq!(signers, sorted);
    }
}
