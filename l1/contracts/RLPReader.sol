// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title RLPReader
/// @notice Strict, bounds-checked reader of RLP items inside a memory buffer, for MerkleTrie.
/// @dev Items are addressed by offsets into the buffer instead of being copied, because trie nodes
///      embed their children inline and the verifier must hash and re-read exact byte ranges.
///      Every read is checked against an explicit limit, so malformed input reverts with a named
///      error and never reads outside [start, limit). Only canonical encodings are accepted: a trie
///      node is identified by the hash of its encoding, so a second spelling of a node can only be
///      an attempt to confuse the verifier.
library RLPReader {
    /// @dev [start, end) is the whole encoding, [payloadStart, end) the payload.
    struct Item {
        uint256 start;
        uint256 payloadStart;
        uint256 end;
        bool isList;
    }

    error RLPEmptyInput();
    error RLPOutOfBounds(uint256 end, uint256 limit);
    error RLPNonCanonicalSingleByte(uint256 offset);
    error RLPNonCanonicalLength(uint256 offset);
    error RLPTrailingBytes(uint256 itemEnd, uint256 limit);
    error RLPNotAList(uint256 offset);
    error RLPTooManyItems(uint256 max);

    /// @notice Reads the item starting at `start`, which must end at or before `limit`.
    function readItem(bytes memory buf, uint256 start, uint256 limit) internal pure returns (Item memory item) {
        if (limit > buf.length) revert RLPOutOfBounds(limit, buf.length);
        if (start >= limit) revert RLPEmptyInput();
        uint256 prefix = uint8(buf[start]);
        uint256 payloadStart;
        uint256 length;
        if (prefix < 0x80) {
            return Item({start: start, payloadStart: start, end: start + 1, isList: false});
        } else if (prefix <= 0xb7) {
            payloadStart = start + 1;
            length = prefix - 0x80;
            // One byte below 0x80 is its own encoding; the two-byte form is a second spelling.
            if (length == 1) {
                if (payloadStart >= limit) revert RLPOutOfBounds(payloadStart + 1, limit);
                if (uint8(buf[payloadStart]) < 0x80) revert RLPNonCanonicalSingleByte(start);
            }
        } else if (prefix <= 0xbf) {
            (payloadStart, length) = _longLength(buf, start, prefix - 0xb7, limit);
        } else if (prefix <= 0xf7) {
            payloadStart = start + 1;
            length = prefix - 0xc0;
            item.isList = true;
        } else {
            (payloadStart, length) = _longLength(buf, start, prefix - 0xf7, limit);
            item.isList = true;
        }
        // length < 2^64 (at most 8 length bytes), so the sum cannot overflow.
        uint256 end = payloadStart + length;
        if (end > limit) revert RLPOutOfBounds(end, limit);
        item.start = start;
        item.payloadStart = payloadStart;
        item.end = end;
    }

    /// @notice Reads the single item that must span exactly [start, end).
    function readExact(bytes memory buf, uint256 start, uint256 end) internal pure returns (Item memory item) {
        item = readItem(buf, start, end);
        if (item.end != end) revert RLPTrailingBytes(item.end, end);
    }

    /// @notice The items of a list, at most maxItems of them.
    /// @dev Bound: maxItems iterations; each item advances by at least one byte.
    function readList(bytes memory buf, Item memory list, uint256 maxItems) internal pure returns (Item[] memory items) {
        if (!list.isList) revert RLPNotAList(list.start);
        items = new Item[](maxItems);
        uint256 count = 0;
        uint256 offset = list.payloadStart;
        while (offset < list.end) {
            if (count == maxItems) revert RLPTooManyItems(maxItems);
            Item memory it = readItem(buf, offset, list.end);
            items[count] = it;
            count++;
            offset = it.end;
        }
        // Shrink to the items read; the unused tail of the allocation is simply abandoned.
        assembly {
            mstore(items, count)
        }
    }

    function payloadLength(Item memory item) internal pure returns (uint256) {
        return item.end - item.payloadStart;
    }

    /// @notice The 32 bytes at `offset` (the caller has checked that they lie within the item).
    function load32(bytes memory buf, uint256 offset) internal pure returns (bytes32 word) {
        if (offset + 32 > buf.length) revert RLPOutOfBounds(offset + 32, buf.length);
        assembly {
            word := mload(add(add(buf, 32), offset))
        }
    }

    /// @notice keccak256 of buf[start:end).
    function hashRange(bytes memory buf, uint256 start, uint256 end) internal pure returns (bytes32 h) {
        if (end > buf.length || start > end) revert RLPOutOfBounds(end, buf.length);
        assembly {
            h := keccak256(add(add(buf, 32), start), sub(end, start))
        }
    }

    /// @notice A copy of the item's payload.
    function payloadBytes(bytes memory buf, Item memory item) internal pure returns (bytes memory out) {
        uint256 length = item.end - item.payloadStart;
        out = new bytes(length);
        // Bound: length <= buf.length bytes.
        for (uint256 i = 0; i < length; i++) {
            out[i] = buf[item.payloadStart + i];
        }
    }

    function _longLength(bytes memory buf, uint256 start, uint256 lengthOfLength, uint256 limit)
        private
        pure
        returns (uint256 payloadStart, uint256 length)
    {
        // lengthOfLength is 1..8 by construction of the prefix ranges.
        payloadStart = start + 1 + lengthOfLength;
        if (payloadStart > limit) revert RLPOutOfBounds(payloadStart, limit);
        if (buf[start + 1] == 0) revert RLPNonCanonicalLength(start);
        for (uint256 i = 0; i < lengthOfLength; i++) {
            length = (length << 8) | uint8(buf[start + 1 + i]);
        }
        // Payloads up to 55 bytes must use the short form.
        if (length <= 55) revert RLPNonCanonicalLength(start);
    }
}
