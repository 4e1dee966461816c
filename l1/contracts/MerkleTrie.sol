// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {RLPReader} from "./RLPReader.sol";

/// @title MerkleTrie
/// @notice Inclusion proofs in an Ethereum Merkle-Patricia trie, in the shape eth_getProof returns
///         (RLP-encoded nodes from the root down; nodes shorter than 32 bytes are not listed because
///         they are embedded in their parent).
/// @dev For a secure trie (state and storage tries) the caller passes keccak256(key) as the key.
///      Any proof that does not lead to a non-empty value for the key reverts: callers never have
///      to distinguish "absent" from "malformed", both mean the claim is not proven.
library MerkleTrie {
    using RLPReader for bytes;
    using RLPReader for RLPReader.Item;

    /// @notice The deepest real trie is 64 nibbles plus a leaf; 64 hashed nodes is more than any
    ///         32-byte key can use and bounds the calldata a caller can make us copy and hash.
    uint256 internal constant MAX_PROOF_NODES = 64;
    /// @notice Keys are at most 32 bytes (64 nibbles), which bounds the walk below.
    uint256 internal constant MAX_KEY_BYTES = 32;

    uint256 private constant BRANCH_ITEMS = 17;
    uint256 private constant SHORT_ITEMS = 2;

    error EmptyProof();
    error ProofTooLong(uint256 nodes, uint256 max);
    error KeyTooLong(uint256 length, uint256 max);
    error RootHashMismatch();
    error NodeHashMismatch(uint256 proofIndex);
    error InvalidNodeItemCount(uint256 count);
    error InvalidChildReference(uint256 length);
    error InlineNodeTooLarge(uint256 length);
    error BadHexPrefix(uint8 firstByte);
    error PathIsList();
    error EmptyExtensionPath();
    error KeyNotInTrie();
    error ValueIsList();
    error ProofMissingNodes(uint256 given);
    error ProofHasUnusedNodes(uint256 used, uint256 given);

    /// @dev The walk's position, kept in memory so the step function stays within the stack limit.
    struct Walk {
        bytes key;
        bytes[] proof;
        uint256 proofIndex;
        uint256 consumed;
        bytes buf;
        RLPReader.Item node;
    }

    /// @notice The value stored under `key` in the trie with root `root`, or a revert.
    function get(bytes memory key, bytes[] memory proof, bytes32 root) internal pure returns (bytes memory) {
        if (proof.length == 0) revert EmptyProof();
        if (proof.length > MAX_PROOF_NODES) revert ProofTooLong(proof.length, MAX_PROOF_NODES);
        if (key.length > MAX_KEY_BYTES) revert KeyTooLong(key.length, MAX_KEY_BYTES);

        bytes memory first = proof[0];
        // The root is referenced by hash even when its encoding is shorter than 32 bytes.
        if (keccak256(first) != root) revert RootHashMismatch();
        Walk memory w = Walk({
            key: key,
            proof: proof,
            proofIndex: 0,
            consumed: 0,
            buf: first,
            node: first.readExact(0, first.length)
        });

        // Bound: every step that does not return consumes at least one nibble of the key (a branch
        // one, an extension at least one), so there are at most 2 * key.length + 1 steps.
        uint256 keyNibbles = key.length * 2;
        for (uint256 step = 0; step <= keyNibbles; step++) {
            (bool found, bytes memory value) = _step(w);
            if (found) return value;
        }
        // Unreachable: the last possible step is at consumed == keyNibbles, which returns or reverts.
        revert KeyNotInTrie();
    }

    /// @dev Handles the current node: returns the value if the key ends here, otherwise moves the
    ///      walk to the child on the key's path.
    function _step(Walk memory w) private pure returns (bool found, bytes memory value) {
        RLPReader.Item[] memory items = w.buf.readList(w.node, BRANCH_ITEMS);
        RLPReader.Item memory child;
        if (items.length == BRANCH_ITEMS) {
            if (w.consumed == w.key.length * 2) return (true, _value(w, items[16]));
            child = items[_nibble(w.key, w.consumed)];
            w.consumed += 1;
        } else if (items.length == SHORT_ITEMS) {
            (uint256 pathLength, bool isLeaf) = _matchPath(w.buf, items[0], w.key, w.consumed);
            w.consumed += pathLength;
            if (isLeaf) {
                if (w.consumed != w.key.length * 2) revert KeyNotInTrie();
                return (true, _value(w, items[1]));
            }
            // An empty extension would let the walk loop without consuming the key.
            if (pathLength == 0) revert EmptyExtensionPath();
            child = items[1];
        } else {
            revert InvalidNodeItemCount(items.length);
        }

        if (child.isList) {
            // Only nodes whose encoding is under 32 bytes are embedded; a larger one must be
            // referenced by hash, otherwise two encodings of the same trie would verify.
            uint256 inlineLength = child.end - child.start;
            if (inlineLength >= 32) revert InlineNodeTooLarge(inlineLength);
            w.node = child;
            return (false, value);
        }
        uint256 refLength = child.payloadLength();
        if (refLength == 0) revert KeyNotInTrie();
        if (refLength != 32) revert InvalidChildReference(refLength);
        bytes32 childHash = w.buf.load32(child.payloadStart);
        uint256 next = w.proofIndex + 1;
        if (next >= w.proof.length) revert ProofMissingNodes(w.proof.length);
        bytes memory buf = w.proof[next];
        if (keccak256(buf) != childHash) revert NodeHashMismatch(next);
        w.proofIndex = next;
        w.buf = buf;
        w.node = buf.readExact(0, buf.length);
    }

    function _value(Walk memory w, RLPReader.Item memory item) private pure returns (bytes memory) {
        // Extra nodes would be ignored data riding along with a valid proof; refuse them.
        if (w.proofIndex + 1 != w.proof.length) revert ProofHasUnusedNodes(w.proofIndex + 1, w.proof.length);
        if (item.isList) revert ValueIsList();
        // The trie never stores an empty value: an empty slot means the key is absent.
        if (item.payloadLength() == 0) revert KeyNotInTrie();
        return RLPReader.payloadBytes(w.buf, item);
    }

    /// @dev Decodes the hex-prefix path of a leaf or extension and checks it against the key from
    ///      nibble `consumed` on. Returns the path length in nibbles.
    function _matchPath(bytes memory buf, RLPReader.Item memory path, bytes memory key, uint256 consumed)
        private
        pure
        returns (uint256 pathLength, bool isLeaf)
    {
        if (path.isList) revert PathIsList();
        uint256 length = path.payloadLength();
        if (length == 0) revert BadHexPrefix(0);
        uint8 first = uint8(buf[path.payloadStart]);
        uint8 flag = first >> 4;
        if (flag > 3) revert BadHexPrefix(first);
        bool odd = (flag & 1) == 1;
        // An even path pads the prefix byte with a zero nibble; anything else is another spelling.
        if (!odd && (first & 0x0f) != 0) revert BadHexPrefix(first);
        isLeaf = (flag & 2) == 2;
        pathLength = (length - 1) * 2 + (odd ? 1 : 0);
        if (consumed + pathLength > key.length * 2) revert KeyNotInTrie();
        // Nibble i of the path is nibble (i + 1) of the encoding when odd, (i + 2) when even.
        uint256 skip = odd ? 1 : 2;
        // Bound: pathLength <= 64 (checked against the key length above).
        for (uint256 i = 0; i < pathLength; i++) {
            uint256 position = i + skip;
            uint8 b = uint8(buf[path.payloadStart + position / 2]);
            uint8 pathNibble = position % 2 == 0 ? b >> 4 : b & 0x0f;
            if (pathNibble != _nibble(key, consumed + i)) revert KeyNotInTrie();
        }
    }

    function _nibble(bytes memory key, uint256 index) private pure returns (uint8) {
        uint8 b = uint8(key[index / 2]);
        return index % 2 == 0 ? b >> 4 : b & 0x0f;
    }
}
