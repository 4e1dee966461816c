// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title L1Block
/// @notice L2 predeploy at 0x4200000000000000000000000000000000000015: the L1 block the L2 builds on
///         (its origin), written by the depositor account at the start of every L2 block.
/// @dev Placed in the L2 genesis as deployed code: no constructor, no immutables, empty storage.
///      The node reads number, hash and depositsProcessed straight from storage, so this layout is
///      part of the protocol and must not change (values are big-endian words; a packed field
///      occupies the lowest-order bytes first):
///        slot 0: number            uint64, bytes [24, 32) of the word (value = word & (2^64 - 1))
///                timestamp         uint64, bytes [16, 24) (value = (word >> 64) & (2^64 - 1))
///        slot 1: basefee           uint256
///        slot 2: hash              bytes32
///        slot 3: blobBaseFee       uint256
///        slot 4: parentBeaconRoot  bytes32
///        slot 5: depositsProcessed uint64, bytes [24, 32) (value = word & (2^64 - 1))
contract L1Block {
    /// @notice The system account the L2 node sends the per-block L1 info transaction from.
    address public constant DEPOSITOR_ACCOUNT = 0xDeaDDEaDDeAdDeAdDEAdDEaddeAddEAdDEAd0001;

    uint64 public number;
    uint64 public timestamp;
    uint256 public basefee;
    bytes32 public hash;
    uint256 public blobBaseFee;
    bytes32 public parentBeaconRoot;
    /// @notice Portal deposits (by depositNonce) included on L2 so far: the next expected nonce.
    uint64 public depositsProcessed;

    error NotDepositor(address caller);

    function setL1BlockValues(
        uint64 number_,
        uint64 timestamp_,
        uint256 basefee_,
        bytes32 hash_,
        uint256 blobBaseFee_,
        bytes32 parentBeaconRoot_,
        uint64 depositsProcessed_
    ) external {
        if (msg.sender != DEPOSITOR_ACCOUNT) revert NotDepositor(msg.sender);
        number = number_;
        timestamp = timestamp_;
        basefee = basefee_;
        hash = hash_;
        blobBaseFee = blobBaseFee_;
        parentBeaconRoot = parentBeaconRoot_;
        depositsProcessed = depositsProcessed_;
    }
}
