// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title L2ToL1MessagePasser
/// @notice L2 predeploy at 0x4200000000000000000000000000000000000016. A withdrawal is a message
///         recorded in `sentMessages`; the Portal on L1 proves the slot with a storage proof
///         against the messagePasserStorageRoot of an output root.
/// @dev Placed in the L2 genesis as deployed code: no constructor, no immutables, empty storage.
///      Storage layout (the Portal depends on slot 0):
///        slot 0: sentMessages  mapping(bytes32 => bool); entry at keccak256(abi.encode(hash, 0)),
///                value 1 for a sent message (RLP 0x01 in the storage trie)
///        slot 1: messageNonce  uint256
///      ETH sent with a withdrawal stays here: on L2 it is out of circulation, and on L1 the Portal
///      pays it out of the deposits it holds.
contract L2ToL1MessagePasser {
    /// @notice A withdrawal must be finalizable on L1: its call gets gasLimit plus 1/63 and the
    ///         Portal's overhead, which must fit in one L1 transaction (2^24 gas since Osaka).
    uint256 public constant MAX_GAS_LIMIT = 16_000_000;
    /// @notice The L1 finalize and prove transactions carry the data; leaves room for the proof
    ///         under the usual 128 KiB transaction size limit of L1 mempools.
    uint256 public constant MAX_DATA_BYTES = 100_000;
    /// @notice Gas limit of the withdrawal a plain ETH transfer makes: enough for an EOA or a
    ///         simple receiving contract on L1.
    uint256 public constant RECEIVE_GAS_LIMIT = 100_000;

    mapping(bytes32 => bool) public sentMessages;
    uint256 public messageNonce;

    error GasLimitTooHigh(uint256 gasLimit, uint256 max);
    error DataTooLarge(uint256 length, uint256 max);

    event MessagePassed(
        uint256 indexed nonce,
        address indexed sender,
        address indexed target,
        uint256 value,
        uint256 gasLimit,
        bytes data,
        bytes32 withdrawalHash
    );

    /// @notice A plain transfer withdraws the ETH to the same address on L1.
    receive() external payable {
        _initiate(msg.sender, RECEIVE_GAS_LIMIT, "");
    }

    function initiateWithdrawal(address target, uint256 gasLimit, bytes calldata data) external payable {
        _initiate(target, gasLimit, data);
    }

    function _initiate(address target, uint256 gasLimit, bytes memory data) internal {
        if (gasLimit > MAX_GAS_LIMIT) revert GasLimitTooHigh(gasLimit, MAX_GAS_LIMIT);
        if (data.length > MAX_DATA_BYTES) revert DataTooLarge(data.length, MAX_DATA_BYTES);
        uint256 nonce = messageNonce;
        // Same encoding as Portal.hashWithdrawal, field by field.
        bytes32 withdrawalHash = keccak256(abi.encode(nonce, msg.sender, target, msg.value, gasLimit, data));
        sentMessages[withdrawalHash] = true;
        emit MessagePassed(nonce, msg.sender, target, msg.value, gasLimit, data, withdrawalHash);
        messageNonce = nonce + 1;
    }
}
