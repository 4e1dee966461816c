// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title BatchInbox
/// @notice Records, as a hash chain, which L2 blocks each batch of posted transaction data covers
///         and the hashes of that data (blob versioned hashes, or keccak256 of calldata). Anyone can
///         rebuild the L2 by walking the chain from the first batch and fetching each batch's data.
/// @dev The chain (parent hash + contiguous block ranges) makes a missing, reordered or duplicated
///      batch visible on L1 itself, so derivation does not have to trust the order of L1 logs.
contract BatchInbox {
    struct Batch {
        bytes32 batchHash;
        bytes32 parentBatchHash;
        uint64 firstBlock;
        uint64 lastBlock;
        uint64 l1BlockNumber;
        bool blobs;
    }

    /// @notice More blobs than any fork allows in one block (9 at Prague), so the scan is bounded
    ///         without limiting real batches.
    uint256 public constant MAX_BLOBS = 16;
    /// @notice Calldata batches are the fallback when blobs are unavailable or dearer; 1 MB keeps a
    ///         batch well inside an L1 block's gas.
    uint256 public constant MAX_CALLDATA_BYTES = 1_000_000;

    error NotOwner(address caller);
    error NotBatcher(address caller);
    error ZeroAddress();
    error WrongParent(bytes32 expected, bytes32 given);
    error NotNextBlock(uint64 expected, uint64 given);
    error LastBlockBeforeFirst(uint64 firstBlock, uint64 lastBlock);
    error LastBlockTooLarge(uint64 lastBlock);
    error NoBlobs();
    error TooManyBlobs(uint256 max);
    error BatchDataSizeOutOfRange(uint256 length, uint256 max);
    error BatchIndexOutOfRange(uint256 index, uint256 count);

    event BatcherChanged(address batcher);
    event BatchSubmitted(
        uint256 indexed index,
        uint64 firstBlock,
        uint64 lastBlock,
        bytes32 batchHash,
        bytes32 parentBatchHash,
        bytes32[] dataHashes,
        bool blobs
    );

    address public immutable owner;
    address public batcher;
    uint64 public nextL2Block;
    Batch[] internal batches;

    modifier onlyOwner() {
        if (msg.sender != owner) revert NotOwner(msg.sender);
        _;
    }

    modifier onlyBatcher() {
        if (msg.sender != batcher) revert NotBatcher(msg.sender);
        _;
    }

    /// @param firstL2Block_ the first block batches cover (1: block 0 is genesis, not posted).
    constructor(address owner_, address batcher_, uint64 firstL2Block_) {
        if (owner_ == address(0) || batcher_ == address(0)) revert ZeroAddress();
        owner = owner_;
        batcher = batcher_;
        nextL2Block = firstL2Block_;
        emit BatcherChanged(batcher_);
    }

    /// @param batcher_ non-zero: a zero batcher would stop posting (and so the L2) until fixed.
    function setBatcher(address batcher_) external onlyOwner {
        if (batcher_ == address(0)) revert ZeroAddress();
        batcher = batcher_;
        emit BatcherChanged(batcher_);
    }

    /// @notice A batch whose data is the blobs of this transaction, in order.
    function submitBatch(uint64 firstBlock, uint64 lastBlock, bytes32 parentBatchHash) external onlyBatcher {
        uint256 count = 0;
        // Bound: MAX_BLOBS + 1 blobhash reads (the extra one proves there are no more).
        while (count <= MAX_BLOBS && blobhash(count) != bytes32(0)) count++;
        if (count == 0) revert NoBlobs();
        if (count > MAX_BLOBS) revert TooManyBlobs(MAX_BLOBS);
        bytes32[] memory dataHashes = new bytes32[](count);
        for (uint256 i = 0; i < count; i++) {
            dataHashes[i] = blobhash(i);
        }
        _append(firstBlock, lastBlock, parentBatchHash, dataHashes, true);
    }

    /// @notice A batch whose data is `data` itself (the calldata fallback).
    function submitBatchCalldata(uint64 firstBlock, uint64 lastBlock, bytes32 parentBatchHash, bytes calldata data)
        external
        onlyBatcher
    {
        if (data.length == 0 || data.length > MAX_CALLDATA_BYTES) {
            revert BatchDataSizeOutOfRange(data.length, MAX_CALLDATA_BYTES);
        }
        bytes32[] memory dataHashes = new bytes32[](1);
        dataHashes[0] = keccak256(data);
        _append(firstBlock, lastBlock, parentBatchHash, dataHashes, false);
    }

    function latestBatchHash() public view returns (bytes32) {
        uint256 n = batches.length;
        return n == 0 ? bytes32(0) : batches[n - 1].batchHash;
    }

    function batchCount() external view returns (uint256) {
        return batches.length;
    }

    function getBatch(uint256 index) external view returns (Batch memory) {
        if (index >= batches.length) revert BatchIndexOutOfRange(index, batches.length);
        return batches[index];
    }

    function _append(
        uint64 firstBlock,
        uint64 lastBlock,
        bytes32 parentBatchHash,
        bytes32[] memory dataHashes,
        bool blobs
    ) internal {
        bytes32 expectedParent = latestBatchHash();
        if (parentBatchHash != expectedParent) revert WrongParent(expectedParent, parentBatchHash);
        uint64 expectedFirst = nextL2Block;
        if (firstBlock != expectedFirst) revert NotNextBlock(expectedFirst, firstBlock);
        if (lastBlock < firstBlock) revert LastBlockBeforeFirst(firstBlock, lastBlock);
        // nextL2Block = lastBlock + 1 must stay representable.
        if (lastBlock == type(uint64).max) revert LastBlockTooLarge(lastBlock);

        bytes32 batchHash = keccak256(abi.encode(parentBatchHash, firstBlock, lastBlock, dataHashes));
        uint256 index = batches.length;
        batches.push(
            Batch({
                batchHash: batchHash,
                parentBatchHash: parentBatchHash,
                firstBlock: firstBlock,
                lastBlock: lastBlock,
                l1BlockNumber: uint64(block.number),
                blobs: blobs
            })
        );
        nextL2Block = lastBlock + 1;
        emit BatchSubmitted(index, firstBlock, lastBlock, batchHash, parentBatchHash, dataHashes, blobs);
    }
}
