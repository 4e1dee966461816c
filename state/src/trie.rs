//! Incremental Merkle-Patricia trie (Ethereum's hexary MPT) over a path-addressed node store.
//!
//! Owns: the in-memory, partially loaded trie behind the state root and each storage root;
//! incremental hashing; the exact set of node writes and deletions a change implies; EIP-1186
//! proofs.
//!
//! Does not own: the store. Nodes are read through [`TrieStore`] and written back by the caller
//! from [`TrieUpdates`]; the caller picks the key layout (one prefix per storage trie) and the
//! write batching. Keys are already hashed (`keccak(address)`, `keccak(slot)`); hashing them is
//! the caller's job, as is encoding the values.
//!
//! Nodes are persisted by *path* (the nibbles from the root to the node), not by hash: an update
//! overwrites the nodes on its path in place and deletes the paths that restructuring vacated, so
//! the store holds exactly the current trie and never needs garbage collection. Every node is
//! stored at its path, including nodes shorter than 32 bytes that Ethereum embeds in their
//! parent's encoding, so that loading is uniform. The price of path addressing is that the store
//! holds one version of each trie: historical roots are not readable from it.
//!
//! Every node loaded from the store is checked against the reference its parent holds (its hash,
//! or its encoding when inlined), and the root against the root hash: a store that is stale,
//! partially written or corrupt surfaces as a [`TrieError`] at the first read that touches the
//! damage, instead of as a wrong state root later.

use std::{collections::BTreeMap, collections::BTreeSet, fmt, mem};

use alloy_primitives::{B256, Bytes, keccak256};
use alloy_rlp::{Decodable, Encodable};
use alloy_trie::{
    EMPTY_ROOT_HASH, Nibbles, TrieMask,
    nodes::{
        BranchNode, BranchNodeRef, ExtensionNode, ExtensionNodeRef, LeafNode, LeafNodeRef, RlpNode,
        TrieNode,
    },
};

/// Length of every key in nibbles: keys are 32-byte hashes.
const KEY_NIBBLES: usize = 64;

/// Read access to persisted trie nodes, addressed by their nibble path from the root.
///
/// The store for one trie is a map `path -> RLP of the node at that path`; a storage trie's
/// implementation adds its own per-account prefix to the path.
pub trait TrieStore {
    /// The RLP encoding of the node at `path`, or `None` if the store holds no node there.
    fn load(&self, path: &Nibbles) -> Result<Option<Vec<u8>>, TrieError>;
}

/// An in-memory store, for fixtures, genesis construction and tests.
impl TrieStore for BTreeMap<Nibbles, Vec<u8>> {
    fn load(&self, path: &Nibbles) -> Result<Option<Vec<u8>>, TrieError> {
        Ok(self.get(path).cloned())
    }
}

/// The writes that bring the store from the trie as last persisted to the current trie.
///
/// `puts` and `deletes` never share a path, so they can be applied in any order (or in one
/// write batch). Every path in `deletes` held a node in the store as of the previous
/// [`MerkleTrie::take_updates`] (or when the node was loaded), so no tombstone is written for a
/// path that was never persisted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrieUpdates {
    /// Node encodings to write, parents before children.
    pub puts: Vec<(Nibbles, Vec<u8>)>,
    /// Paths whose node was removed or moved by restructuring, in ascending order.
    pub deletes: Vec<Nibbles>,
}

impl TrieUpdates {
    /// Whether applying these updates would leave the store unchanged.
    pub fn is_empty(&self) -> bool {
        self.puts.is_empty() && self.deletes.is_empty()
    }
}

/// Why a trie operation failed.
///
/// After an error the in-memory trie is still consistent (every operation loads what it needs
/// before it changes anything), but the store is suspect: the node should stop and an operator
/// should check the database rather than retry.
#[derive(Debug, thiserror::Error)]
pub enum TrieError {
    /// The store failed to read; the message (from the store implementation) says why.
    #[error("trie store read failed: {0}")]
    Store(String),
    /// A node the trie references is absent from the store.
    #[error(
        "trie node at path {path:?} is missing from the store although its parent references \
         it: the store is incomplete, or a previous TrieUpdates was not fully applied"
    )]
    MissingNode {
        /// Path of the missing node.
        path: Nibbles,
    },
    /// A stored node does not decode, does not fit the trie's shape, or does not match its
    /// parent's reference.
    #[error("trie node at path {path:?} is corrupt: {reason}")]
    CorruptNode {
        /// Path of the corrupt node.
        path: Nibbles,
        /// What is wrong with it.
        reason: Corruption,
    },
}

/// What is wrong with a corrupt stored node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Corruption {
    /// The entry is not a valid RLP trie node.
    #[error("invalid RLP ({0})")]
    Rlp(alloy_rlp::Error),
    /// Bytes follow the node's RLP item.
    #[error("{0} bytes after the node's RLP item")]
    TrailingBytes(usize),
    /// The entry is well formed but is not the node its parent references: a stale entry left
    /// by a partial write, or an entry from another trie.
    #[error("encoding does not match the reference {expected} held by its parent or the root")]
    ReferenceMismatch {
        /// The parent's reference: the RLP of the node's hash, or its inline encoding.
        expected: Bytes,
    },
    /// The node decodes but cannot appear at this place in a trie of 32-byte keys.
    #[error("{0}")]
    Malformed(&'static str),
}

/// A Merkle-Patricia trie over 32-byte keys, loaded from a [`TrieStore`] on demand.
///
/// Reads and writes load the nodes on the key's path and keep them; [`Self::unload_below`]
/// bounds the memory this takes. Changes stay in memory until [`Self::take_updates`] hands out
/// the store writes; hashes are recomputed by [`Self::root_hash`] only along changed paths.
pub struct MerkleTrie {
    /// `None` for the empty trie.
    root: Option<Child>,
    /// Paths whose stored node was removed or moved since the last `take_updates`. A path that
    /// later receives a new node stays here until `take_updates` emits the put that overwrites
    /// it.
    deletes: BTreeSet<Nibbles>,
}

/// A reference from a parent (or from the trie, for the root) to a node.
enum Child {
    /// Not in memory: the reference the parent's encoding holds (`rlp(keccak(rlp(node)))`, or
    /// the node's own encoding when it is shorter than 32 bytes). Always clean and stored.
    Unloaded(RlpNode),
    Loaded(Box<Node>),
}

struct Node {
    kind: NodeKind,
    /// The reference the parent embeds; `None` while this node or a descendant changed since
    /// the last hash. Invalidated on the whole path of every change, so a clean node's subtree
    /// is never rehashed.
    reference: Option<RlpNode>,
    /// The encoding computed by the last hash and not yet handed out by `take_updates`. A node
    /// with a pending encoding has all its ancestors pending too, which lets `take_updates` visit
    /// only the changed part of the tree.
    pending: Option<Vec<u8>>,
    /// Whether the store holds an entry at this node's current path (possibly an older version
    /// of it). Decides whether removing or moving the node must delete that path.
    stored: bool,
}

enum NodeKind {
    /// `key` is the rest of the key after the node's path; the path and `key` make 64 nibbles.
    Leaf { key: Nibbles, value: Vec<u8> },
    /// `child` is a branch, stored at the node's path followed by `key`.
    Extension { key: Nibbles, child: Child },
    /// At least two children; child `i` is stored at the node's path followed by `i`. Boxed to
    /// keep leaves, the most numerous nodes, small.
    Branch { children: Box<[Option<Child>; 16]> },
}

/// How a node was reached, which decides how its stored encoding is checked.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    /// The root is always referenced by hash, even if its encoding is short.
    Root,
    Branch,
    /// An extension's child must be a branch.
    Extension,
}

/// What a removal did to the node it was applied to.
enum Removal {
    Unchanged,
    Changed,
    /// The node must go: the parent drops it (and records its path for deletion).
    Emptied,
}

impl Default for MerkleTrie {
    fn default() -> Self {
        Self::new_empty()
    }
}

impl fmt::Debug for MerkleTrie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let root = match &self.root {
            None => "empty",
            Some(Child::Unloaded(_)) => "unloaded",
            Some(Child::Loaded(_)) => "loaded",
        };
        f.debug_struct("MerkleTrie")
            .field("root", &root)
            .field("pending_deletes", &self.deletes.len())
            .finish()
    }
}

impl MerkleTrie {
    /// An empty trie. Its store (the caller's prefix for this trie) must hold no nodes, since
    /// nothing here knows to delete them.
    pub fn new_empty() -> Self {
        Self {
            root: None,
            deletes: BTreeSet::new(),
        }
    }

    /// The trie with root `root_hash`, whose nodes are in the store. Nothing is read until a
    /// key is accessed; the root node (at the empty path) is then checked against `root_hash`.
    pub fn open(root_hash: B256) -> Self {
        if root_hash == EMPTY_ROOT_HASH {
            return Self::new_empty();
        }
        Self {
            root: Some(Child::Unloaded(RlpNode::word_rlp(&root_hash))),
            deletes: BTreeSet::new(),
        }
    }

    /// The value stored under `key`. Takes `&mut self` because the nodes read stay loaded.
    pub fn get<S: TrieStore + ?Sized>(
        &mut self,
        store: &S,
        key: B256,
    ) -> Result<Option<Vec<u8>>, TrieError> {
        let key = Nibbles::unpack_array(&key.0);
        let Some(mut cursor) = self.root.as_mut() else {
            return Ok(None);
        };
        let mut path = Nibbles::new();
        let mut via = Via::Root;
        loop {
            let node = load_child(cursor, &path, via, store)?;
            let depth = path.len();
            match &mut node.kind {
                NodeKind::Leaf {
                    key: leaf_key,
                    value,
                } => {
                    return Ok((*leaf_key == key.slice(depth..)).then(|| value.clone()));
                }
                NodeKind::Extension {
                    key: ext_key,
                    child,
                } => {
                    if !key.slice(depth..).starts_with(ext_key) {
                        return Ok(None);
                    }
                    path.extend(ext_key);
                    via = Via::Extension;
                    cursor = child;
                }
                NodeKind::Branch { children } => {
                    // `depth < 64`: checked when a branch is decoded, kept when one is built.
                    let nibble = key.get_unchecked(depth);
                    let Some(child) = &mut children[usize::from(nibble)] else {
                        return Ok(None);
                    };
                    path.push_unchecked(nibble);
                    via = Via::Branch;
                    cursor = child;
                }
            }
        }
    }

    /// Sets `key` to `value`; an empty `value` removes the key, as Ethereum never stores empty
    /// values. Writing the value a key already has changes nothing and invalidates no hash.
    pub fn insert<S: TrieStore + ?Sized>(
        &mut self,
        store: &S,
        key: B256,
        value: Vec<u8>,
    ) -> Result<(), TrieError> {
        if value.is_empty() {
            return self.remove(store, key);
        }
        let key = Nibbles::unpack_array(&key.0);
        match &mut self.root {
            Some(root) => {
                insert_at(root, Nibbles::new(), Via::Root, &key, value, store)?;
            }
            None => self.root = Some(new_leaf(key, value)),
        }
        Ok(())
    }

    /// Removes `key`; removing an absent key is a no-op.
    pub fn remove<S: TrieStore + ?Sized>(&mut self, store: &S, key: B256) -> Result<(), TrieError> {
        let key = Nibbles::unpack_array(&key.0);
        let Some(root) = &mut self.root else {
            return Ok(());
        };
        let root_path = Nibbles::new();
        if let Removal::Emptied =
            remove_at(root, root_path, Via::Root, &key, store, &mut self.deletes)?
            && let Some(root) = self.root.take()
        {
            forget(root, root_path, &mut self.deletes);
        }
        Ok(())
    }

    /// The root hash, rehashing only the nodes changed since the last call.
    pub fn root_hash(&mut self) -> B256 {
        let Some(root) = &mut self.root else {
            return EMPTY_ROOT_HASH;
        };
        let reference = child_reference(root);
        // The root is hashed even when its encoding is short enough to be inlined elsewhere.
        reference.as_hash().unwrap_or_else(|| keccak256(&reference))
    }

    /// Hashes the trie (see [`Self::root_hash`]) and returns the store writes that make the
    /// store match it. Afterwards the trie is clean: the next call returns no updates unless
    /// the trie changes in between.
    pub fn take_updates(&mut self) -> TrieUpdates {
        self.root_hash();
        let mut puts = Vec::new();
        if let Some(root) = &mut self.root {
            collect_puts(root, Nibbles::new(), &mut puts, &mut self.deletes);
        }
        let deletes = mem::take(&mut self.deletes).into_iter().collect();
        TrieUpdates { puts, deletes }
    }

    /// The EIP-1186 proof for `key`, valid for its presence or its absence: the RLP of every
    /// node on the path from the root towards `key`, root first. Nodes embedded in their
    /// parent's encoding are not listed separately. Empty for the empty trie.
    pub fn prove<S: TrieStore + ?Sized>(
        &mut self,
        store: &S,
        key: B256,
    ) -> Result<Vec<Bytes>, TrieError> {
        // Encoding a node needs its children's references to be current.
        self.root_hash();
        let key = Nibbles::unpack_array(&key.0);
        let mut proof = Vec::new();
        let Some(mut cursor) = self.root.as_mut() else {
            return Ok(proof);
        };
        let mut path = Nibbles::new();
        let mut via = Via::Root;
        loop {
            // An inlined node is already in the proof inside its parent, and so is everything
            // below it (a node holding a hash reference is too long to be inlined).
            let reference = match cursor {
                Child::Unloaded(reference) => Some(&*reference),
                Child::Loaded(node) => node.reference.as_ref(),
            };
            if via != Via::Root && reference.is_some_and(|r| !r.is_hash()) {
                break;
            }
            let node = load_child(cursor, &path, via, store)?;
            let mut rlp = Vec::new();
            encode_node(node, &mut rlp);
            proof.push(Bytes::from(rlp));
            let depth = path.len();
            match &mut node.kind {
                NodeKind::Leaf { .. } => break,
                NodeKind::Extension {
                    key: ext_key,
                    child,
                } => {
                    if !key.slice(depth..).starts_with(ext_key) {
                        break;
                    }
                    path.extend(ext_key);
                    via = Via::Extension;
                    cursor = child;
                }
                NodeKind::Branch { children } => {
                    let nibble = key.get_unchecked(depth);
                    let Some(child) = &mut children[usize::from(nibble)] else {
                        break;
                    };
                    path.push_unchecked(nibble);
                    via = Via::Branch;
                    cursor = child;
                }
            }
        }
        Ok(proof)
    }

    /// Drops from memory the nodes deeper than `depth` nibbles that are hashed and persisted,
    /// keeping only their references; they are reloaded from the store when next needed.
    /// Changed nodes, and the path to them, stay in memory until `take_updates`.
    ///
    /// The nodes near the root are on nearly every key's path, so keeping the top few levels
    /// loaded saves most reads while bounding memory to about `16^depth` nodes plus the changes.
    pub fn unload_below(&mut self, depth: usize) {
        if let Some(root) = &mut self.root {
            unload(root, 0, depth);
        }
    }
}

impl Node {
    /// A node that is not in the store yet (or not at this path).
    fn new(kind: NodeKind) -> Self {
        Self {
            kind,
            reference: None,
            pending: None,
            stored: false,
        }
    }

    /// Marks the node changed: its hash and any encoding computed for it are stale.
    fn invalidate(&mut self) {
        self.reference = None;
        self.pending = None;
    }
}

fn new_leaf(key: Nibbles, value: Vec<u8>) -> Child {
    Child::Loaded(Box::new(Node::new(NodeKind::Leaf { key, value })))
}

fn child_path(path: Nibbles, nibble: u8) -> Nibbles {
    let mut path = path;
    path.push_unchecked(nibble);
    path
}

/// A branch with exactly the two given children (at distinct nibbles).
fn branch_of_two(a: (u8, Child), b: (u8, Child)) -> NodeKind {
    debug_assert_ne!(a.0, b.0);
    let mut children: Box<[Option<Child>; 16]> = Box::default();
    children[usize::from(a.0)] = Some(a.1);
    children[usize::from(b.0)] = Some(b.1);
    NodeKind::Branch { children }
}

/// `branch` itself if `prefix` is empty, else an extension over `prefix` leading to it.
fn behind_prefix(prefix: Nibbles, branch: NodeKind) -> NodeKind {
    if prefix.is_empty() {
        branch
    } else {
        NodeKind::Extension {
            key: prefix,
            child: Child::Loaded(Box::new(Node::new(branch))),
        }
    }
}

/// The node behind `child`, loading it from the store at `path` if needed.
fn load_child<'a, S: TrieStore + ?Sized>(
    child: &'a mut Child,
    path: &Nibbles,
    via: Via,
    store: &S,
) -> Result<&'a mut Node, TrieError> {
    if let Child::Unloaded(reference) = child {
        let node = load_node(store, path, reference, via)?;
        *child = Child::Loaded(Box::new(node));
    }
    match child {
        Child::Loaded(node) => Ok(node),
        Child::Unloaded(_) => unreachable!("the child was loaded above"),
    }
}

fn load_node<S: TrieStore + ?Sized>(
    store: &S,
    path: &Nibbles,
    expected: &RlpNode,
    via: Via,
) -> Result<Node, TrieError> {
    let corrupt = |reason| TrieError::CorruptNode {
        path: *path,
        reason,
    };
    let rlp = store
        .load(path)?
        .ok_or(TrieError::MissingNode { path: *path })?;
    let reference = RlpNode::from_rlp(&rlp);
    let matches = match via {
        Via::Root => {
            expected.as_hash() == Some(reference.as_hash().unwrap_or_else(|| keccak256(&rlp)))
        }
        Via::Branch | Via::Extension => reference == *expected,
    };
    if !matches {
        return Err(corrupt(Corruption::ReferenceMismatch {
            expected: Bytes::copy_from_slice(expected),
        }));
    }
    let kind = decode_node(path, &rlp)?;
    if via == Via::Extension && !matches!(kind, NodeKind::Branch { .. }) {
        return Err(corrupt(Corruption::Malformed(
            "an extension's child is not a branch",
        )));
    }
    Ok(Node {
        kind,
        reference: Some(reference),
        pending: None,
        stored: true,
    })
}

/// Decodes a stored node and checks that it can sit at `path` in a trie of 64-nibble keys, so
/// that the tree operations can rely on the shape (a leaf ends at nibble 64, a branch has at
/// least two children and lies above nibble 64, an extension is non-empty and ends above 64).
fn decode_node(path: &Nibbles, rlp: &[u8]) -> Result<NodeKind, TrieError> {
    let corrupt = |reason| TrieError::CorruptNode {
        path: *path,
        reason,
    };
    let malformed = |what| corrupt(Corruption::Malformed(what));
    let mut buf = rlp;
    let node = TrieNode::decode(&mut buf).map_err(|e| corrupt(Corruption::Rlp(e)))?;
    if !buf.is_empty() {
        return Err(corrupt(Corruption::TrailingBytes(buf.len())));
    }
    let depth = path.len();
    match node {
        TrieNode::EmptyRoot => Err(malformed("the empty-trie marker is stored as a node")),
        TrieNode::Leaf(LeafNode { key, value }) => {
            if depth + key.len() != KEY_NIBBLES {
                return Err(malformed("a leaf's key does not end at nibble 64"));
            }
            if value.is_empty() {
                return Err(malformed("a leaf has an empty value"));
            }
            Ok(NodeKind::Leaf { key, value })
        }
        TrieNode::Extension(ExtensionNode { key, child }) => {
            if key.is_empty() || depth + key.len() >= KEY_NIBBLES {
                return Err(malformed(
                    "an extension's key is empty or reaches nibble 64",
                ));
            }
            Ok(NodeKind::Extension {
                key,
                child: Child::Unloaded(child),
            })
        }
        TrieNode::Branch(BranchNode { stack, state_mask }) => {
            if depth >= KEY_NIBBLES {
                return Err(malformed("a branch lies at nibble 64"));
            }
            if stack.len() < 2 {
                return Err(malformed("a branch has fewer than two children"));
            }
            let mut children: Box<[Option<Child>; 16]> = Box::default();
            let present = (0u8..16).filter(|&nibble| state_mask.is_bit_set(nibble));
            for (nibble, reference) in present.zip(stack) {
                children[usize::from(nibble)] = Some(Child::Unloaded(reference));
            }
            Ok(NodeKind::Branch { children })
        }
    }
}

/// Inserts below `child` (at `path`); returns whether anything changed. Loads happen on the way
/// down and changes on the way back up, so an error leaves the trie unchanged.
fn insert_at<S: TrieStore + ?Sized>(
    child: &mut Child,
    path: Nibbles,
    via: Via,
    key: &Nibbles,
    value: Vec<u8>,
    store: &S,
) -> Result<bool, TrieError> {
    let node = load_child(child, &path, via, store)?;
    let depth = path.len();
    let changed = match &mut node.kind {
        NodeKind::Leaf {
            key: leaf_key,
            value: leaf_value,
        } => {
            let rest = key.slice(depth..);
            if *leaf_key == rest {
                let changed = *leaf_value != value;
                *leaf_value = value;
                changed
            } else {
                // Split: the two keys share `common` nibbles, then diverge at a new branch. The
                // node at `path` becomes that branch (or an extension to it); the old leaf moves
                // below the branch as a new node.
                let common = leaf_key.common_prefix_length(&rest);
                let old_key = *leaf_key;
                let old = new_leaf(old_key.slice(common + 1..), mem::take(leaf_value));
                let new = new_leaf(rest.slice(common + 1..), value);
                let branch = branch_of_two(
                    (old_key.get_unchecked(common), old),
                    (rest.get_unchecked(common), new),
                );
                node.kind = behind_prefix(rest.slice(..common), branch);
                true
            }
        }
        NodeKind::Extension {
            key: ext_key,
            child: ext_child,
        } => {
            let rest = key.slice(depth..);
            if rest.starts_with(ext_key) {
                let below = path.join(ext_key);
                insert_at(ext_child, below, Via::Extension, key, value, store)?
            } else {
                // Split the extension where the key leaves it. Its branch keeps its path: it
                // hangs from the new branch directly, or through a shorter extension.
                let common = ext_key.common_prefix_length(&rest);
                let ext_key = *ext_key;
                // The placeholder never survives: `node.kind` is replaced below.
                let below = mem::replace(ext_child, Child::Unloaded(RlpNode::default()));
                let below = if ext_key.len() == common + 1 {
                    below
                } else {
                    let key = ext_key.slice(common + 1..);
                    Child::Loaded(Box::new(Node::new(NodeKind::Extension {
                        key,
                        child: below,
                    })))
                };
                let new = new_leaf(rest.slice(common + 1..), value);
                let branch = branch_of_two(
                    (ext_key.get_unchecked(common), below),
                    (rest.get_unchecked(common), new),
                );
                node.kind = behind_prefix(rest.slice(..common), branch);
                true
            }
        }
        NodeKind::Branch { children } => {
            let nibble = key.get_unchecked(depth);
            let slot = &mut children[usize::from(nibble)];
            match slot {
                Some(below) => insert_at(
                    below,
                    child_path(path, nibble),
                    Via::Branch,
                    key,
                    value,
                    store,
                )?,
                None => {
                    *slot = Some(new_leaf(key.slice(depth + 1..), value));
                    true
                }
            }
        }
    };
    if changed {
        node.invalidate();
    }
    Ok(changed)
}

/// Removes `key` below `child` (at `path`). The only load after the descent (a branch's last
/// remaining child, which the branch must absorb) happens before anything is changed, so an
/// error leaves the trie unchanged.
fn remove_at<S: TrieStore + ?Sized>(
    child: &mut Child,
    path: Nibbles,
    via: Via,
    key: &Nibbles,
    store: &S,
    deletes: &mut BTreeSet<Nibbles>,
) -> Result<Removal, TrieError> {
    let node = load_child(child, &path, via, store)?;
    let depth = path.len();
    match &mut node.kind {
        NodeKind::Leaf { key: leaf_key, .. } => {
            let found = *leaf_key == key.slice(depth..);
            return Ok(if found {
                Removal::Emptied
            } else {
                Removal::Unchanged
            });
        }
        NodeKind::Extension {
            key: ext_key,
            child: ext_child,
        } => {
            if !key.slice(depth..).starts_with(ext_key) {
                return Ok(Removal::Unchanged);
            }
            let below_path = path.join(ext_key);
            match remove_at(ext_child, below_path, Via::Extension, key, store, deletes)? {
                Removal::Unchanged => return Ok(Removal::Unchanged),
                Removal::Emptied => {
                    // A branch keeps at least one child, so only a malformed trie gets here;
                    // dropping the extension with it keeps the trie well formed.
                    let below = mem::replace(ext_child, Child::Unloaded(RlpNode::default()));
                    forget(below, below_path, deletes);
                    return Ok(Removal::Emptied);
                }
                Removal::Changed => {
                    // The branch below may have collapsed into a leaf or an extension, which
                    // this extension must absorb: an extension only ever leads to a branch.
                    let prefix = *ext_key;
                    let below = mem::replace(ext_child, Child::Unloaded(RlpNode::default()));
                    node.kind = absorb(prefix, below, below_path, deletes);
                }
            }
        }
        NodeKind::Branch { children } => {
            let nibble = key.get_unchecked(depth);
            let index = usize::from(nibble);
            let Some(slot) = &mut children[index] else {
                return Ok(Removal::Unchanged);
            };
            let removed_path = child_path(path, nibble);
            match remove_at(slot, removed_path, Via::Branch, key, store, deletes)? {
                Removal::Unchanged => return Ok(Removal::Unchanged),
                Removal::Changed => {}
                Removal::Emptied => {
                    let mut others = (0..16).filter(|&i| i != index && children[i].is_some());
                    match (others.next(), others.next()) {
                        (Some(_), Some(_)) => {
                            if let Some(removed) = children[index].take() {
                                forget(removed, removed_path, deletes);
                            }
                        }
                        (Some(only), None) => {
                            // A branch with one child is not canonical: the node here becomes
                            // the survivor's leaf or extension with one more nibble in front,
                            // or an extension to it if it is a branch. Load it before changing
                            // anything.
                            let only_nibble = only as u8;
                            let only_path = child_path(path, only_nibble);
                            if let Some(survivor) = &mut children[only] {
                                load_child(survivor, &only_path, Via::Branch, store)?;
                            }
                            if let Some(removed) = children[index].take() {
                                forget(removed, removed_path, deletes);
                            }
                            if let Some(survivor) = children[only].take() {
                                let prefix = Nibbles::from_nibbles_unchecked([only_nibble]);
                                node.kind = absorb(prefix, survivor, only_path, deletes);
                            }
                        }
                        // A branch with a single child is rejected when decoded and never
                        // built; drop it rather than keep an empty branch.
                        (None, _) => {
                            if let Some(removed) = children[index].take() {
                                forget(removed, removed_path, deletes);
                            }
                            return Ok(Removal::Emptied);
                        }
                    }
                }
            }
        }
    }
    node.invalidate();
    Ok(Removal::Changed)
}

/// The node that replaces a parent whose only remaining content is `below` (loaded, at
/// `below_path`) behind `prefix`: a leaf or an extension merges into the parent and leaves its
/// path; a branch stays where it is behind an extension.
fn absorb(
    prefix: Nibbles,
    below: Child,
    below_path: Nibbles,
    deletes: &mut BTreeSet<Nibbles>,
) -> NodeKind {
    let node = match below {
        Child::Loaded(node) => node,
        // Callers load `below` first; an unloaded child could only be a branch anyway if it
        // came from an extension.
        unloaded @ Child::Unloaded(_) => {
            return NodeKind::Extension {
                key: prefix,
                child: unloaded,
            };
        }
    };
    let stored = node.stored;
    match node.kind {
        NodeKind::Branch { .. } => NodeKind::Extension {
            key: prefix,
            child: Child::Loaded(node),
        },
        NodeKind::Leaf { key, value } => {
            if stored {
                deletes.insert(below_path);
            }
            NodeKind::Leaf {
                key: prefix.join(&key),
                value,
            }
        }
        NodeKind::Extension { key, child } => {
            if stored {
                deletes.insert(below_path);
            }
            NodeKind::Extension {
                key: prefix.join(&key),
                child,
            }
        }
    }
}

/// Records that the node removed from `path` no longer exists there.
fn forget(removed: Child, path: Nibbles, deletes: &mut BTreeSet<Nibbles>) {
    let stored = match &removed {
        // Unloaded nodes come from the store. Only a leaf (always loaded, to compare its key) or
        // a malformed subtree is ever dropped whole, so no unloaded descendants are orphaned.
        Child::Unloaded(_) => true,
        Child::Loaded(node) => node.stored,
    };
    if stored {
        deletes.insert(path);
    }
}

/// The reference to `child` its parent embeds, hashing it first if it changed.
fn child_reference(child: &mut Child) -> RlpNode {
    match child {
        Child::Unloaded(reference) => reference.clone(),
        Child::Loaded(node) => commit(node),
    }
}

/// Hashes `node` if it changed, keeping the new encoding for `take_updates`.
fn commit(node: &mut Node) -> RlpNode {
    if let Some(reference) = &node.reference {
        return reference.clone();
    }
    let mut rlp = Vec::new();
    encode_node(node, &mut rlp);
    let reference = RlpNode::from_rlp(&rlp);
    node.reference = Some(reference.clone());
    node.pending = Some(rlp);
    reference
}

/// Appends the RLP of `node` to `out`, hashing changed children first.
fn encode_node(node: &mut Node, out: &mut Vec<u8>) {
    match &mut node.kind {
        NodeKind::Leaf { key, value } => {
            let leaf = LeafNodeRef::new(key, value);
            out.reserve(leaf.length());
            leaf.encode(out);
        }
        NodeKind::Extension { key, child } => {
            let child = child_reference(child);
            let extension = ExtensionNodeRef::new(key, &child);
            out.reserve(extension.length());
            extension.encode(out);
        }
        NodeKind::Branch { children } => {
            // On the stack: a branch is hashed for every change below it.
            let mut stack: [RlpNode; 16] = Default::default();
            let mut state_mask = TrieMask::default();
            let mut len = 0;
            for (nibble, child) in (0u8..).zip(children.iter_mut()) {
                if let Some(child) = child {
                    stack[len] = child_reference(child);
                    state_mask.set_bit(nibble);
                    len += 1;
                }
            }
            let branch = BranchNodeRef::new(&stack[..len], state_mask);
            out.reserve(branch.length());
            branch.encode(out);
        }
    }
}

/// Moves the pending encodings below `child` (at `path`) into `puts`, marking them stored.
fn collect_puts(
    child: &mut Child,
    path: Nibbles,
    puts: &mut Vec<(Nibbles, Vec<u8>)>,
    deletes: &mut BTreeSet<Nibbles>,
) {
    let Child::Loaded(node) = child else { return };
    let Some(rlp) = node.pending.take() else {
        return;
    };
    // The put overwrites whatever an earlier removal at this path meant to delete.
    deletes.remove(&path);
    node.stored = true;
    puts.push((path, rlp));
    match &mut node.kind {
        NodeKind::Leaf { .. } => {}
        NodeKind::Extension { key, child } => collect_puts(child, path.join(key), puts, deletes),
        NodeKind::Branch { children } => {
            for (nibble, child) in (0u8..).zip(children.iter_mut()) {
                if let Some(child) = child {
                    collect_puts(child, child_path(path, nibble), puts, deletes);
                }
            }
        }
    }
}

fn unload(child: &mut Child, path_len: usize, depth: usize) {
    let Child::Loaded(node) = child else { return };
    if path_len > depth
        && node.pending.is_none()
        && let Some(reference) = node.reference.clone()
    {
        // Hashed and not pending means persisted, and so is everything below.
        debug_assert!(node.stored);
        *child = Child::Unloaded(reference);
        return;
    }
    match &mut node.kind {
        NodeKind::Leaf { .. } => {}
        NodeKind::Extension { key, child } => unload(child, path_len + key.len(), depth),
        NodeKind::Branch { children } => {
            for child in children.iter_mut().flatten() {
                unload(child, path_len + 1, depth);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::hex;
    use alloy_trie::{HashBuilder, proof::verify_proof};
    use proptest::{collection::vec, prelude::*};
    use std::cell::RefCell;

    type MemStore = BTreeMap<Nibbles, Vec<u8>>;

    /// Nibble positions where "structured" pool keys differ; elsewhere they are zero. Sharing
    /// nibbles 2..30 and 31..61 gives long extensions, and leaves at nibble 62 and beyond are
    /// short enough to be inlined in their parent, as are branches holding only such leaves.
    const DIVERGING_NIBBLES: [usize; 6] = [0, 1, 30, 61, 62, 63];

    fn structured_key(choices: [u8; 6]) -> B256 {
        let mut nibbles = [0u8; KEY_NIBBLES];
        for (&position, choice) in DIVERGING_NIBBLES.iter().zip(choices) {
            nibbles[position] = choice % 3;
        }
        B256::from_slice(&Nibbles::from_nibbles(nibbles).pack())
    }

    fn pool_key() -> impl Strategy<Value = B256> {
        (any::<[u8; 32]>(), 0u8..4).prop_map(|(bytes, shape)| {
            if shape == 0 {
                B256::from(bytes)
            } else {
                let mut choices = [0u8; 6];
                choices.copy_from_slice(&bytes[..6]);
                structured_key(choices)
            }
        })
    }

    const POOL_SIZE: usize = 16;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(usize, Vec<u8>),
        Remove(usize),
        /// Inserting an empty value removes the key.
        InsertEmpty(usize),
        Get(usize),
        /// Hash mid-round, so that later changes meet already hashed, not yet persisted nodes.
        Hash,
        /// Unload mid-round (applied to the third trie only), with changes pending.
        Unload(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (0..POOL_SIZE, vec(any::<u8>(), 1..=40)).prop_map(|(i, v)| Op::Insert(i, v)),
            4 => (0..POOL_SIZE).prop_map(Op::Remove),
            1 => (0..POOL_SIZE).prop_map(Op::InsertEmpty),
            2 => (0..POOL_SIZE).prop_map(Op::Get),
            1 => Just(Op::Hash),
            1 => (0usize..3).prop_map(Op::Unload),
        ]
    }

    fn hash_builder_root(model: &BTreeMap<B256, Vec<u8>>) -> B256 {
        let mut builder = HashBuilder::default();
        for (key, value) in model {
            builder.add_leaf(Nibbles::unpack(key), value);
        }
        builder.root()
    }

    /// The store a trie holding `model` must have, built from scratch by a separate recursive
    /// construction, and its root.
    fn reference_store(model: &BTreeMap<B256, Vec<u8>>) -> (B256, MemStore) {
        fn build(path: Nibbles, pairs: &[(Nibbles, &[u8])], store: &mut MemStore) -> RlpNode {
            let depth = path.len();
            let mut rlp = Vec::new();
            if let [(key, value)] = pairs {
                LeafNodeRef::new(&key.slice(depth..), value).encode(&mut rlp);
            } else {
                let (first, last) = (pairs[0].0, pairs[pairs.len() - 1].0);
                let common = first.common_prefix_length(&last);
                if common > depth {
                    let child = build(first.slice(..common), pairs, store);
                    ExtensionNodeRef::new(&first.slice(depth..common), &child).encode(&mut rlp);
                } else {
                    let mut stack = Vec::new();
                    let mut mask = TrieMask::default();
                    for nibble in 0u8..16 {
                        let group: Vec<_> = pairs
                            .iter()
                            .filter(|(key, _)| key.get_unchecked(depth) == nibble)
                            .copied()
                            .collect();
                        if !group.is_empty() {
                            stack.push(build(child_path(path, nibble), &group, store));
                            mask.set_bit(nibble);
                        }
                    }
                    BranchNodeRef::new(&stack, mask).encode(&mut rlp);
                }
            }
            let reference = RlpNode::from_rlp(&rlp);
            store.insert(path, rlp);
            reference
        }

        let mut store = MemStore::new();
        let pairs: Vec<_> = model
            .iter()
            .map(|(key, value)| (Nibbles::unpack(key), value.as_slice()))
            .collect();
        if pairs.is_empty() {
            return (EMPTY_ROOT_HASH, store);
        }
        build(Nibbles::new(), &pairs, &mut store);
        (keccak256(&store[&Nibbles::new()]), store)
    }

    /// Applies `updates`, checking that they are precise: no delete of a path the store lacks,
    /// no path both put and deleted, no path put twice.
    fn apply(store: &mut MemStore, updates: TrieUpdates) {
        let mut put_paths = BTreeSet::new();
        for (path, _) in &updates.puts {
            assert!(put_paths.insert(*path), "path {path:?} put twice");
        }
        for path in &updates.deletes {
            assert!(
                store.contains_key(path),
                "delete of {path:?}, which the store lacks"
            );
            assert!(
                !put_paths.contains(path),
                "path {path:?} both put and deleted"
            );
        }
        for path in updates.deletes {
            store.remove(&path);
        }
        store.extend(updates.puts);
    }

    fn check_proofs(
        trie: &mut MerkleTrie,
        store: &MemStore,
        root: B256,
        pool: &[B256],
        model: &BTreeMap<B256, Vec<u8>>,
    ) {
        for key in pool.iter().chain(model.keys()) {
            let proof = trie.prove(store, *key).unwrap();
            let expected = model.get(key).cloned();
            let verified = verify_proof(root, Nibbles::unpack(key), expected, &proof);
            assert!(verified.is_ok(), "proof for {key}: {verified:?}");
        }
    }

    fn build_trie(pairs: &[(B256, Vec<u8>)]) -> (B256, MemStore) {
        let mut store = MemStore::new();
        let mut trie = MerkleTrie::new_empty();
        for (key, value) in pairs {
            trie.insert(&store, *key, value.clone()).unwrap();
        }
        let root = trie.root_hash();
        apply(&mut store, trie.take_updates());
        (root, store)
    }

    /// Keys sharing long prefixes (so the trie has extensions and inline nodes) plus random ones.
    fn sample_pairs() -> Vec<(B256, Vec<u8>)> {
        let mut pairs = BTreeMap::new();
        for i in 0..40u8 {
            let key = if i % 4 == 0 {
                keccak256([i])
            } else {
                structured_key([i, i / 3, i / 5, i / 7, i / 9, i / 11])
            };
            pairs.insert(key, vec![i + 1; usize::from(i % 5) + 1]);
        }
        pairs.into_iter().collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn matches_reference_and_store_stays_exact(
            pool in vec(pool_key(), POOL_SIZE),
            rounds in vec(vec(op(), 1..40), 1..5),
        ) {
            let mut model = BTreeMap::<B256, Vec<u8>>::new();
            let mut root = EMPTY_ROOT_HASH;
            // Reopened from its store every round; long-lived; long-lived and unloaded to
            // depth 1 after every round. Each persists to its own store.
            let mut stores = [MemStore::new(), MemStore::new(), MemStore::new()];
            let mut long_lived = MerkleTrie::new_empty();
            let mut unloaded = MerkleTrie::new_empty();

            for round in rounds {
                let mut reopened = MerkleTrie::open(root);
                {
                    let mut tries = [&mut reopened, &mut long_lived, &mut unloaded];
                    for op in &round {
                        for (n, (trie, store)) in tries.iter_mut().zip(&stores).enumerate() {
                            match op {
                                Op::Insert(i, value) => {
                                    trie.insert(store, pool[*i], value.clone()).unwrap();
                                }
                                Op::Remove(i) => trie.remove(store, pool[*i]).unwrap(),
                                Op::InsertEmpty(i) => {
                                    trie.insert(store, pool[*i], Vec::new()).unwrap();
                                }
                                Op::Get(i) => {
                                    let expected = model.get(&pool[*i]).cloned();
                                    prop_assert_eq!(trie.get(store, pool[*i]).unwrap(), expected);
                                }
                                Op::Hash => {
                                    trie.root_hash();
                                }
                                Op::Unload(depth) => {
                                    if n == 2 {
                                        trie.unload_below(*depth);
                                    }
                                }
                            }
                        }
                        match op {
                            Op::Insert(i, value) => {
                                model.insert(pool[*i], value.clone());
                            }
                            Op::Remove(i) | Op::InsertEmpty(i) => {
                                model.remove(&pool[*i]);
                            }
                            Op::Get(_) | Op::Hash | Op::Unload(_) => {}
                        }
                    }

                    root = hash_builder_root(&model);
                    let (reference_root, reference) = reference_store(&model);
                    prop_assert_eq!(reference_root, root);
                    for (trie, store) in tries.iter_mut().zip(&mut stores) {
                        prop_assert_eq!(trie.root_hash(), root);
                        apply(store, trie.take_updates());
                        prop_assert_eq!(&*store, &reference);
                        prop_assert!(trie.take_updates().is_empty());
                    }
                }
                unloaded.unload_below(1);

                let mut fresh = MerkleTrie::open(root);
                for key in &pool {
                    prop_assert_eq!(fresh.get(&stores[0], *key).unwrap(), model.get(key).cloned());
                }
                check_proofs(&mut MerkleTrie::open(root), &stores[0], root, &pool, &model);
                check_proofs(&mut unloaded, &stores[2], root, &pool, &model);
            }
        }

        #[test]
        fn decoding_mutated_nodes_never_panics(
            node in 0usize..4,
            position in any::<usize>(),
            byte in any::<u8>(),
            truncate in any::<bool>(),
            depth in 0usize..=KEY_NIBBLES,
        ) {
            let (_, store) = build_trie(&sample_pairs());
            let mut rlp = store.values().nth(node * 7 % store.len()).unwrap().clone();
            let position = position % rlp.len();
            if truncate { rlp.truncate(position) } else { rlp[position] = byte }
            let path = Nibbles::from_nibbles(vec![0u8; depth]);
            let _ = decode_node(&path, &rlp);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(
            bytes in vec(any::<u8>(), 0..600),
            depth in 0usize..=KEY_NIBBLES,
        ) {
            let _ = decode_node(&Nibbles::from_nibbles(vec![0u8; depth]), &bytes);
        }
    }

    #[test]
    fn empty_trie() {
        let store = MemStore::new();
        let mut trie = MerkleTrie::new_empty();
        assert_eq!(trie.root_hash(), EMPTY_ROOT_HASH);
        assert!(trie.take_updates().is_empty());
        let mut opened = MerkleTrie::open(EMPTY_ROOT_HASH);
        assert_eq!(opened.get(&store, B256::ZERO).unwrap(), None);
        let proof = opened.prove(&store, B256::ZERO).unwrap();
        assert!(proof.is_empty());
        assert!(verify_proof(EMPTY_ROOT_HASH, Nibbles::unpack(B256::ZERO), None, &proof).is_ok());
        opened.remove(&store, B256::ZERO).unwrap();
        assert!(opened.take_updates().is_empty());
    }

    #[test]
    fn single_key_known_vector() {
        let key = B256::repeat_byte(0xab);
        let value = vec![0x01];
        // rlp([0x20 ++ key, 0x01]): a list of 35 payload bytes holding a 33-byte string
        // (hex-prefix flag 0x20: leaf, even length) and the single byte 0x01.
        let mut leaf = hex!("e3a120").to_vec();
        leaf.extend_from_slice(key.as_slice());
        leaf.push(0x01);
        let expected = keccak256(&leaf);

        let mut trie = MerkleTrie::new_empty();
        trie.insert(&MemStore::new(), key, value.clone()).unwrap();
        assert_eq!(trie.root_hash(), expected);
        assert_eq!(hash_builder_root(&BTreeMap::from([(key, value)])), expected);
        let updates = trie.take_updates();
        assert_eq!(updates.puts, vec![(Nibbles::new(), leaf)]);
        assert!(updates.deletes.is_empty());
    }

    #[test]
    fn inline_nodes_are_stored_at_their_paths() {
        let pairs = sample_pairs();
        let (root, store) = build_trie(&pairs);
        assert!(
            store.values().any(|rlp| rlp.len() < 32),
            "sample has no inline node"
        );
        assert_eq!(store, reference_store(&pairs.iter().cloned().collect()).1);
        let mut trie = MerkleTrie::open(root);
        for (key, value) in &pairs {
            assert_eq!(trie.get(&store, *key).unwrap().as_ref(), Some(value));
        }
    }

    #[test]
    fn rehashes_and_persists_only_the_changed_path() {
        let pairs: Vec<_> = (0..2000u32)
            .map(|i| (keccak256(i.to_be_bytes()), vec![1; 70]))
            .collect();
        let (root, store) = build_trie(&pairs);
        let mut trie = MerkleTrie::open(root);
        let key = pairs[1234].0;

        trie.insert(&store, key, vec![1; 70]).unwrap();
        trie.remove(&store, keccak256(b"absent")).unwrap();
        assert_eq!(trie.root_hash(), root);
        assert!(
            trie.take_updates().is_empty(),
            "unchanged writes produced updates"
        );

        trie.insert(&store, key, vec![2; 70]).unwrap();
        trie.root_hash();
        let updates = trie.take_updates();
        let key_nibbles = Nibbles::unpack(key);
        assert!(updates.deletes.is_empty());
        // Exactly the nodes on the key's path (none is inlined: values are 70 bytes).
        assert_eq!(updates.puts.len(), trie.prove(&store, key).unwrap().len());
        for (path, _) in &updates.puts {
            assert!(
                key_nibbles.starts_with(path),
                "put {path:?} is off the key's path"
            );
        }
    }

    #[test]
    fn loads_only_the_key_path() {
        struct Counting<'a> {
            inner: &'a MemStore,
            loads: RefCell<Vec<Nibbles>>,
        }
        impl TrieStore for Counting<'_> {
            fn load(&self, path: &Nibbles) -> Result<Option<Vec<u8>>, TrieError> {
                self.loads.borrow_mut().push(*path);
                self.inner.load(path)
            }
        }

        let pairs = sample_pairs();
        let (root, store) = build_trie(&pairs);
        let store = Counting {
            inner: &store,
            loads: RefCell::default(),
        };
        let mut trie = MerkleTrie::open(root);
        for (key, value) in &pairs {
            store.loads.borrow_mut().clear();
            assert_eq!(trie.get(&store, *key).unwrap().as_ref(), Some(value));
            let key = Nibbles::unpack(key);
            assert!(
                store
                    .loads
                    .borrow()
                    .iter()
                    .all(|path| key.starts_with(path))
            );
        }
        // Everything on those paths is now loaded.
        store.loads.borrow_mut().clear();
        for (key, _) in &pairs {
            trie.get(&store, *key).unwrap();
        }
        assert!(store.loads.borrow().is_empty());
        // After unloading below depth 0 only the root stays.
        trie.unload_below(0);
        trie.get(&store, pairs[0].0).unwrap();
        assert!(!store.loads.borrow().is_empty());
        assert!(!store.loads.borrow().contains(&Nibbles::new()));
    }

    #[test]
    fn proofs_of_absence_at_every_kind_of_divergence() {
        let pairs = sample_pairs();
        let (root, store) = build_trie(&pairs);
        let model: BTreeMap<_, _> = pairs.iter().cloned().collect();
        let absent = [
            B256::repeat_byte(0xff),            // empty slot of the root branch
            structured_key([0, 0, 1, 2, 2, 2]), // diverges below a long extension
            structured_key([1, 1, 0, 0, 0, 1]), // diverges inside an extension or at a leaf
            structured_key([2, 2, 2, 2, 2, 2]),
            {
                let mut key = pairs[0].0;
                key.0[31] ^= 1;
                key
            }, // same path as a leaf, other key
        ];
        check_proofs(&mut MerkleTrie::open(root), &store, root, &absent, &model);
    }

    #[test]
    fn store_errors_propagate() {
        struct Failing;
        impl TrieStore for Failing {
            fn load(&self, _: &Nibbles) -> Result<Option<Vec<u8>>, TrieError> {
                Err(TrieError::Store("disk unavailable".into()))
            }
        }
        let mut trie = MerkleTrie::open(B256::repeat_byte(1));
        let error = trie.get(&Failing, B256::ZERO).unwrap_err();
        assert!(matches!(error, TrieError::Store(_)));
        assert_eq!(
            error.to_string(),
            "trie store read failed: disk unavailable"
        );
    }

    #[test]
    fn wrong_root_is_detected() {
        let (root, store) = build_trie(&sample_pairs());
        let mut trie = MerkleTrie::open(B256::repeat_byte(1));
        let error = trie.get(&store, B256::ZERO).unwrap_err();
        assert!(matches!(
            error,
            TrieError::CorruptNode {
                reason: Corruption::ReferenceMismatch { .. },
                ..
            }
        ));
        assert_ne!(root, B256::repeat_byte(1));
    }

    #[test]
    fn corrupt_entries_are_errors_not_panics() {
        let pairs = sample_pairs();
        let (root, store) = build_trie(&pairs);
        for (path, original) in &store {
            let mut variants: Vec<Option<Vec<u8>>> = vec![
                None,
                Some(Vec::new()),
                Some(vec![0xff; 40]),
                Some(original[..original.len() / 2].to_vec()),
                Some(hex!("c28080").to_vec()),
            ];
            let mut flipped = original.clone();
            *flipped.last_mut().unwrap() ^= 1;
            variants.push(Some(flipped));
            variants.extend(
                store
                    .values()
                    .filter(|other| *other != original)
                    .take(3)
                    .cloned()
                    .map(Some),
            );

            for variant in variants {
                let mut bad = store.clone();
                match &variant {
                    None => bad.remove(path),
                    Some(bytes) => bad.insert(*path, bytes.clone()),
                };
                let mut errors = 0;
                for (key, _) in &pairs {
                    match MerkleTrie::open(root).get(&bad, *key) {
                        Err(TrieError::MissingNode { path: missing }) => {
                            assert!(variant.is_none());
                            assert_eq!(missing, *path);
                            errors += 1;
                        }
                        Err(TrieError::CorruptNode { path: corrupt, .. }) => {
                            assert_eq!(corrupt, *path);
                            errors += 1;
                        }
                        Err(other) => panic!("unexpected error {other}"),
                        Ok(_) => {}
                    }
                    // Writes and proofs through the damage fail too, without panicking.
                    let _ = MerkleTrie::open(root).insert(&bad, *key, vec![9; 3]);
                    let _ = MerkleTrie::open(root).remove(&bad, *key);
                    let _ = MerkleTrie::open(root).prove(&bad, *key);
                }
                assert!(errors > 0, "corrupting {path:?} went unnoticed");
            }
        }
    }

    #[test]
    fn failed_removal_leaves_the_trie_unchanged() {
        // Two leaves under one branch: removing one must load the other to collapse the branch.
        let a = structured_key([1, 0, 0, 0, 0, 0]);
        let b = structured_key([2, 0, 0, 0, 0, 0]);
        let pairs = vec![(a, vec![1; 40]), (b, vec![2; 40])];
        let (root, store) = build_trie(&pairs);
        let mut trie = MerkleTrie::open(root);
        trie.get(&store, a).unwrap();

        let mut without_b = store.clone();
        without_b.remove(&Nibbles::from_nibbles([2]));
        assert!(matches!(
            trie.remove(&without_b, a),
            Err(TrieError::MissingNode { .. })
        ));
        assert_eq!(trie.root_hash(), root);
        assert!(trie.take_updates().is_empty());

        trie.remove(&store, a).unwrap();
        let mut store = store;
        let updates = trie.take_updates();
        apply(&mut store, updates);
        assert_eq!(
            store,
            reference_store(&BTreeMap::from([(b, vec![2; 40])])).1
        );
    }
}
