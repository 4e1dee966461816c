//! The node's side of settlement to L1 (`rtchain-l1` does the L1 side).
//!
//! - **What each block leaves for L1**, written by the sealer in the block's own RocksDB batch:
//!   its mini-block layout (what a batch posts), every `submission_interval`-th block's output
//!   root fields, and the message passer's storage-trie nodes by hash (so a withdrawal can be
//!   proven against any output root, not only the newest state).
//! - **L1 origins and deposits**: the next L1-info group for the sequencer, and the check of a
//!   group a proposal (or a batch being derived) carries (the rule is in
//!   `rtchain_l1::deposit`).
//! - **Output roots**: signing each one as it is sealed, collecting the other validators'
//!   signatures for the proposer.
//! - **Blocks as posted**: what a batch carries of a block, read back from RocksDB.
//!
//! The tasks that run this against L1 (watcher, batcher, proposer, tick) are in `l1_tasks`.

use std::{collections::HashSet, sync::Arc};

use alloy_consensus::Sealable;
use alloy_primitives::{Address, B256, Bytes, U256};
use alloy_signer_local::PrivateKeySigner;
use op_alloy_consensus::{OpTxEnvelope, TxDeposit};
use parking_lot::Mutex;
use rtchain_exec::{RecoveredTx, StateError, StateReader};
use rtchain_l1::{
    batcher::BatcherStats,
    channel::{BatchBlock, BatchMini},
    contracts::L1_BLOCK_ADDRESS,
    deploy::Deployment,
    deposit::{self, L1Origin, l1_block_slots},
    output::{OutputDomain, OutputRootProof, sign_output},
    proposer::{OutputBook, ProposerStats},
    watch::{Confirmation, SharedView},
};
use rtchain_state::Store;

/// Gas a group's deposits may take at most, as a share of the block gas limit (the rest stays
/// for users; a group that does not fit the open block waits for the next one).
const GROUP_GAS_SHARE: u64 = 4;
/// Gas an open block must have left to take a whole group (its deposits' share and the L1-info
/// deposit); with less, the sequencer closes the block first.
pub fn group_gas_room(block_gas_limit: u64) -> u64 {
    block_gas_limit / GROUP_GAS_SHARE + deposit::L1_INFO_GAS
}

/// Signatures of ours kept waiting to be broadcast at most.
const MAX_OUTGOING: usize = 256;

/// A mini-block of an EVM block, as its layout records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MiniLayout {
    pub number: u64,
    pub timestamp_us: u64,
    pub transactions: u32,
}

pub fn layout_key(block: u64) -> Vec<u8> {
    let mut k = b"layout/".to_vec();
    k.extend_from_slice(&block.to_be_bytes());
    k
}

pub fn output_key(block: u64) -> Vec<u8> {
    let mut k = b"output/".to_vec();
    k.extend_from_slice(&block.to_be_bytes());
    k
}

pub fn node_key(hash: B256) -> Vec<u8> {
    let mut k = b"mpnode/".to_vec();
    k.extend_from_slice(hash.as_slice());
    k
}

/// opened_at_us (8) | count (4) | per mini-block: number (8) | timestamp_us (8) | txs (4).
pub fn encode_layout(opened_at_us: u64, minis: &[MiniLayout]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + 20 * minis.len());
    out.extend_from_slice(&opened_at_us.to_be_bytes());
    out.extend_from_slice(&(minis.len() as u32).to_be_bytes());
    for m in minis {
        out.extend_from_slice(&m.number.to_be_bytes());
        out.extend_from_slice(&m.timestamp_us.to_be_bytes());
        out.extend_from_slice(&m.transactions.to_be_bytes());
    }
    out
}

pub fn decode_layout(bytes: &[u8]) -> Option<(u64, Vec<MiniLayout>)> {
    let opened = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
    let count = u32::from_be_bytes(bytes.get(8..12)?.try_into().ok()?) as usize;
    let body = bytes.get(12..)?;
    if body.len() != count.checked_mul(20)? {
        return None;
    }
    let minis = body
        .chunks_exact(20)
        .map(|c| MiniLayout {
            number: u64::from_be_bytes(c[..8].try_into().expect("8")),
            timestamp_us: u64::from_be_bytes(c[8..16].try_into().expect("8")),
            transactions: u32::from_be_bytes(c[16..].try_into().expect("4")),
        })
        .collect();
    Some((opened, minis))
}

/// state root (32) | message passer storage root (32) | block hash (32).
pub fn encode_output(proof: &OutputRootProof) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(proof.state_root.as_slice());
    out.extend_from_slice(proof.message_passer_storage_root.as_slice());
    out.extend_from_slice(proof.latest_blockhash.as_slice());
    out
}

pub fn decode_output(bytes: &[u8]) -> Option<OutputRootProof> {
    (bytes.len() == 96).then(|| {
        OutputRootProof::new(
            B256::from_slice(&bytes[..32]),
            B256::from_slice(&bytes[32..64]),
            B256::from_slice(&bytes[64..]),
        )
    })
}

/// A deposit as the chain carries it.
pub fn deposit_tx(tx: TxDeposit) -> RecoveredTx {
    let raw = alloy_eips::eip2718::Encodable2718::encoded_2718(&tx);
    let sender = tx.from;
    let envelope = OpTxEnvelope::Deposit(tx.seal_slow());
    RecoveredTx {
        hash: envelope.tx_hash(),
        envelope,
        sender,
        raw: raw.into(),
    }
}

/// The L1 origin an L2 state records: (L1 block number, its hash, deposits processed).
pub fn origin_in(state: &impl StateReader) -> Result<(u64, B256, u64), StateError> {
    let number = state.storage(L1_BLOCK_ADDRESS, l1_block_slots::NUMBER_AND_TIME)?;
    let hash = state.storage(L1_BLOCK_ADDRESS, l1_block_slots::HASH)?;
    let processed = state.storage(L1_BLOCK_ADDRESS, l1_block_slots::DEPOSITS_PROCESSED)?;
    Ok(deposit::origin_from_storage(number, hash, processed))
}

/// Everything the node holds of settlement.
pub struct Settlement {
    pub deployment: Deployment,
    pub view: SharedView,
    pub confirmation: Confirmation,
    /// L1 blocks one group moves the origin by at most.
    pub origin_max_blocks: u64,
    pub book: Arc<Mutex<OutputBook>>,
    /// Signs output roots (a validator's settlement key).
    signer: Option<PrivateKeySigner>,
    /// Our signatures not yet sent to the other validators.
    outgoing: Mutex<Vec<(u64, B256, Bytes)>>,
    pub batcher: Arc<Mutex<BatcherStats>>,
    pub proposer: Arc<Mutex<ProposerStats>>,
    /// Whether this node derives its chain from L1 (takes no transactions).
    pub derive: bool,
    /// Whether other validators take our signatures (the replica sends them).
    pub broadcast: bool,
}

impl Settlement {
    pub fn new(
        deployment: Deployment,
        view: SharedView,
        confirmation: Confirmation,
        signer: Option<PrivateKeySigner>,
        validators: HashSet<Address>,
        derive: bool,
    ) -> Self {
        let domain = OutputDomain {
            l1_chain_id: deployment.l1_chain_id,
            oracle: deployment.oracle,
            l2_chain_id: deployment.l2_chain_id,
        };
        let book = OutputBook::new(domain, deployment.submission_interval, validators);
        Self {
            view,
            confirmation,
            origin_max_blocks: 64,
            book: Arc::new(Mutex::new(book)),
            signer,
            outgoing: Mutex::new(Vec::new()),
            batcher: Arc::default(),
            proposer: Arc::default(),
            derive,
            broadcast: false,
            deployment,
        }
    }

    pub fn is_output_block(&self, block: u64) -> bool {
        let interval = self.deployment.submission_interval;
        block > 0 && interval > 0 && block.is_multiple_of(interval)
    }

    /// The sealer sealed an output block: sign its root (if we sign) and offer the signature
    /// to the book and to the other validators.
    pub fn output_sealed(&self, block: u64, proof: OutputRootProof) {
        let mut book = self.book.lock();
        let root = proof.root();
        let digest = book.domain.digest(block, root);
        book.add_local(block, proof);
        if let Some(key) = &self.signer {
            let signature = sign_output(key, digest);
            book.add_signature(block, root, signature.clone());
            self.queue(block, root, signature);
        }
    }

    /// Our own signature for `block`, to send again (the proposer still waits for it).
    pub fn own_signature(&self, block: u64) -> Option<(B256, Bytes)> {
        let key = self.signer.as_ref()?;
        let book = self.book.lock();
        let entry = book.get(block)?;
        entry
            .signatures
            .get(&key.address())
            .map(|s| (entry.root, s.clone()))
    }

    fn queue(&self, block: u64, root: B256, signature: Bytes) {
        if !self.broadcast {
            return;
        }
        let mut out = self.outgoing.lock();
        if out.len() < MAX_OUTGOING {
            out.push((block, root, signature));
        }
    }

    /// Sends our signature for the block the oracle waits for again (a validator that
    /// restarted, or lost the first one). Returns whether there was one.
    pub fn resend_wanted(&self) -> bool {
        let wanted = self.book.lock().next_wanted;
        match self.own_signature(wanted) {
            Some((root, signature)) => {
                self.queue(wanted, root, signature);
                true
            }
            None => false,
        }
    }

    /// The signer's address, if this node signs.
    pub fn signer_address(&self) -> Option<Address> {
        self.signer.as_ref().map(|k| k.address())
    }

    pub fn signer(&self) -> Option<&PrivateKeySigner> {
        self.signer.as_ref()
    }

    /// Signatures to send to the other validators.
    pub fn take_outgoing(&self) -> Vec<(u64, B256, Bytes)> {
        std::mem::take(&mut *self.outgoing.lock())
    }

    /// Another validator's signature.
    pub fn on_signature(&self, block: u64, root: B256, signature: Bytes) {
        self.book.lock().add_signature(block, root, signature);
    }

    /// The next L1-info group after the origin `state` records, if L1 has one at our
    /// confirmation level: the L1-info deposit, then the Portal deposits it takes in. `gas_left`
    /// is what the open block can still take.
    pub fn next_group(
        &self,
        state: &impl StateReader,
        gas_left: u64,
        block_gas_limit: u64,
    ) -> Result<Option<Vec<RecoveredTx>>, StateError> {
        let (current, _, processed) = origin_in(state)?;
        let budget =
            (block_gas_limit / GROUP_GAS_SHARE).min(gas_left.saturating_sub(deposit::L1_INFO_GAS));
        let group = self.view.read().next_group(
            current,
            processed,
            self.confirmation,
            self.origin_max_blocks,
            budget,
        );
        let Some(group) = group else {
            return Ok(None);
        };
        let gas: u64 =
            group.deposits.iter().map(|d| d.tx.gas_limit).sum::<u64>() + deposit::L1_INFO_GAS;
        if gas > gas_left {
            // Not even the first deposit fits: the caller closes the block and asks again.
            return Ok(None);
        }
        let mut txs = Vec::with_capacity(group.deposits.len() + 1);
        txs.push(deposit_tx(deposit::l1_info_deposit(
            &group.origin,
            group.deposits_after,
        )));
        txs.extend(group.deposits.into_iter().map(|d| deposit_tx(d.tx)));
        Ok(Some(txs))
    }

    /// Whether the view has something the chain has not taken yet, given the origin and the
    /// deposits processed the chain records (cheap: no state read).
    pub fn has_news(&self, origin: u64, processed: u64) -> bool {
        let view = self.view.read();
        view.confirmed(self.confirmation) > origin
            || view
                .block(origin)
                .is_some_and(|b| b.deposits_after > processed)
    }

    /// Checks a mini-block's transactions against L1: any deposits are a leading L1-info group
    /// matching L1 after the origin `state` records.
    pub fn check_mini_block(
        &self,
        state: &impl StateReader,
        txs: &[RecoveredTx],
    ) -> Result<(), String> {
        check_group(&self.view, state, txs)
    }
}

/// Checks that a mini-block's deposits form one leading L1-info group that `view` confirms.
pub fn check_group(
    view: &SharedView,
    state: &impl StateReader,
    txs: &[RecoveredTx],
) -> Result<(), String> {
    let leading = txs.iter().take_while(|t| t.is_deposit()).count();
    if txs[leading..].iter().any(RecoveredTx::is_deposit) {
        return Err("a deposit after a user transaction".into());
    }
    if leading == 0 {
        return Ok(());
    }
    let deposits: Vec<&TxDeposit> = txs[..leading]
        .iter()
        .filter_map(|t| match &t.envelope {
            OpTxEnvelope::Deposit(d) => Some(d.inner()),
            _ => None,
        })
        .collect();
    let info = deposits[0];
    if !deposit::is_canonical_l1_info(info) {
        return Err("deposits not led by an L1-info deposit".into());
    }
    let (origin, processed_after) = deposit::decode_l1_info(info).expect("canonical");
    let (current, _, processed) = origin_in(state).map_err(|e| e.to_string())?;
    let user: Vec<TxDeposit> = deposits[1..].iter().map(|d| (*d).clone()).collect();
    view.read()
        .check_group(current, processed, &origin, processed_after, &user)
}

/// The origin facts an L1-info deposit at the front of `txs` records, if any.
pub fn group_origin(txs: &[RecoveredTx]) -> Option<(L1Origin, u64)> {
    match &txs.first()?.envelope {
        OpTxEnvelope::Deposit(d) => deposit::decode_l1_info(d.inner()),
        _ => None,
    }
}

/// Block `number` as a batch carries it, and the number its first mini-block has (the next
/// mini-block number when it has none).
pub fn block_as_posted(store: &Store, number: u64) -> Result<Option<(BatchBlock, u64)>, String> {
    let err = |e: rtchain_state::StoreError| e.to_string();
    let Some(layout) = store.settlement(&layout_key(number)).map_err(err)? else {
        return Ok(None);
    };
    let (opened_at_us, minis) = decode_layout(&layout)
        .ok_or_else(|| format!("block {number}: malformed mini-block layout"))?;
    let Some(header) = store.header(number).map_err(err)? else {
        return Ok(None);
    };
    let txs = store.transactions(number).map_err(err)?.unwrap_or_default();
    let total: usize = minis.iter().map(|m| m.transactions as usize).sum();
    if total != txs.len() {
        return Err(format!(
            "block {number}: layout says {total} transactions, the body holds {}",
            txs.len()
        ));
    }
    let first_mini = match minis.first() {
        Some(m) => m.number,
        None => {
            // The previous block's last mini-block plus one: the head index knows it.
            previous_last_mini(store, number)? + 1
        }
    };
    let mut cursor = txs.into_iter();
    let minis = minis
        .iter()
        .map(|m| BatchMini {
            timestamp_us: m.timestamp_us,
            transactions: cursor
                .by_ref()
                .take(m.transactions as usize)
                .map(|t| t.raw)
                .collect(),
        })
        .collect();
    Ok(Some((
        BatchBlock {
            number,
            opened_at_us,
            hash: header.hash_slow(),
            minis,
        },
        first_mini,
    )))
}

/// The last mini-block number of blocks up to `number - 1`: from the nearest earlier block
/// that has mini-blocks (empty blocks have none).
fn previous_last_mini(store: &Store, number: u64) -> Result<u64, String> {
    let err = |e: rtchain_state::StoreError| e.to_string();
    let mut n = number;
    // Bound: idle blocks are sealed once a second at most, so a gap is rarely long; genesis
    // ends it.
    while n > 1 {
        n -= 1;
        if let Some(layout) = store.settlement(&layout_key(n)).map_err(err)?
            && let Some((_, minis)) = decode_layout(&layout)
            && let Some(last) = minis.last()
        {
            return Ok(last.number);
        }
    }
    Ok(0)
}

/// A withdrawal proof against the output of `block`: the output root's fields and the message
/// passer's storage proof of the withdrawal's slot.
pub fn withdrawal_proof(
    store: &Store,
    block: u64,
    withdrawal_hash: B256,
) -> Result<Option<(OutputRootProof, U256, Vec<Bytes>)>, String> {
    let err = |e: rtchain_state::StoreError| e.to_string();
    let Some(bytes) = store.settlement(&output_key(block)).map_err(err)? else {
        return Ok(None);
    };
    let proof = decode_output(&bytes).ok_or("malformed output record")?;
    let slot = rtchain_l1::output::withdrawal_slot(withdrawal_hash);
    let (value, nodes) =
        rtchain_state::state_root::prove_by_hash(proof.message_passer_storage_root, slot, |h| {
            store.settlement(&node_key(h))
        })
        .map_err(err)?;
    Ok(Some((proof, value, nodes)))
}

/// Connects to L1 and reads what the node needs before it starts: the deployment record and
/// the validators' settlement addresses.
pub async fn open(
    config: &crate::config::NodeConfig,
) -> Result<Settlement, crate::error::NodeError> {
    use alloy::providers::{Provider, ProviderBuilder};
    let bad = |m: String| crate::error::NodeError::Config(m);
    let l1 = &config.l1;
    let url = l1
        .url
        .clone()
        .ok_or_else(|| bad("l1.url is not set".into()))?;
    let path = config.data_dir.join(&l1.deployment);
    let deployment = Deployment::load(&path).map_err(|e| {
        bad(format!(
            "l1.deployment: {e} (deploy the contracts with `rtchain l1 deploy`, or let `rtchain devnet` do it)"
        ))
    })?;
    let provider = ProviderBuilder::new()
        .connect(&url)
        .await
        .map_err(|e| bad(format!("l1.url {url}: {e}")))?
        .erased();
    let chain_id = provider
        .get_chain_id()
        .await
        .map_err(|e| bad(format!("l1.url {url}: {e}")))?;
    if chain_id != deployment.l1_chain_id {
        return Err(bad(format!(
            "l1.url {url} is chain {chain_id}, but {} records contracts on chain {}",
            path.display(),
            deployment.l1_chain_id
        )));
    }
    let signer = match &l1.settlement_key_file {
        Some(file) => Some(
            crate::keys::load_secp256k1(file)
                .map_err(|e| bad(format!("l1.settlement_key_file: {e}")))?,
        ),
        None => None,
    };
    let validators = registered_validators(&provider, deployment.registry, 0).await?;
    if let Some(key) = &signer
        && !validators.contains(&key.address())
    {
        tracing::warn!(
            "settlement key {} is not a registered validator: its output signatures will not count",
            key.address()
        );
    }
    let view: SharedView = Arc::default();
    let mut settlement = Settlement::new(
        deployment,
        view,
        l1.confirmation,
        signer,
        validators.into_iter().collect(),
        l1.derive,
    );
    settlement.broadcast = config.consensus.enabled();
    Ok(settlement)
}

/// The registry's validators (settlement addresses, in order) for L2 block `block`.
pub async fn registered_validators(
    provider: &alloy::providers::DynProvider,
    registry: Address,
    block: u64,
) -> Result<Vec<Address>, crate::error::NodeError> {
    let registry = rtchain_l1::contracts::ValidatorRegistry::new(registry, provider);
    let set = registry.validatorsAt(block).call().await.map_err(|e| {
        crate::error::NodeError::Config(format!("ValidatorRegistry.validatorsAt: {e}"))
    })?;
    Ok(set.settlementKeys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_and_outputs_round_trip() {
        let minis = [
            MiniLayout {
                number: 5,
                timestamp_us: 10,
                transactions: 3,
            },
            MiniLayout {
                number: 6,
                timestamp_us: 20,
                transactions: 1,
            },
        ];
        let bytes = encode_layout(7, &minis);
        assert_eq!(decode_layout(&bytes), Some((7, minis.to_vec())));
        assert_eq!(decode_layout(&bytes[..bytes.len() - 1]), None);
        let proof = OutputRootProof::new(
            B256::repeat_byte(1),
            B256::repeat_byte(2),
            B256::repeat_byte(3),
        );
        assert_eq!(decode_output(&encode_output(&proof)), Some(proof));
    }
}
