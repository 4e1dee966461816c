// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title ValidatorRegistry
/// @notice The validator sets of the L2, each effective from an L2 epoch. A validator has an ed25519
///         consensus key (used by L2 consensus, only stored here so the node can read it from L1) and
///         a secp256k1 settlement key (the address whose signatures the OutputOracle counts).
/// @dev Sets are append-only and ordered by epoch, so the set in force at any L2 block is found by
///      binary search and outputs for old blocks stay verifiable against the set of their epoch.
contract ValidatorRegistry {
    /// @notice Upper bound on validators per set: keeps signature checks in OutputOracle and the
    ///         duplicate checks here within a predictable gas budget.
    uint256 public constant MAX_VALIDATORS = 128;

    struct ValidatorSet {
        uint64 epoch;
        bytes32[] consensusKeys;
        address[] settlementKeys;
    }

    error NotOwner(address caller);
    error ZeroOwner();
    error ZeroEpochLength();
    error KeyCountMismatch(uint256 consensusKeys, uint256 settlementKeys);
    error ValidatorCountOutOfRange(uint256 count, uint256 max);
    error ZeroSettlementKey(uint256 index);
    error DuplicateSettlementKey(address key);
    error ZeroConsensusKey(uint256 index);
    error DuplicateConsensusKey(bytes32 key);
    error EpochNotIncreasing(uint64 latestEpoch, uint64 givenEpoch);
    error EpochStartOverflows(uint64 epoch, uint64 epochLength);

    event ValidatorSetScheduled(uint64 indexed epoch, bytes32[] consensusKeys, address[] settlementKeys);
    event OwnershipTransferred(address indexed previousOwner, address indexed newOwner);

    address public owner;
    uint64 public immutable epochLength;

    ValidatorSet[] internal sets;
    /// @dev setIndex => settlement key => member. Makes isValidatorAt O(1) after the epoch lookup
    ///      and doubles as the duplicate check when a set is stored.
    mapping(uint256 => mapping(address => bool)) internal isSettlementKeyOf;

    modifier onlyOwner() {
        if (msg.sender != owner) revert NotOwner(msg.sender);
        _;
    }

    constructor(
        address owner_,
        uint64 epochLength_,
        bytes32[] memory consensusKeys,
        address[] memory settlementKeys
    ) {
        if (owner_ == address(0)) revert ZeroOwner();
        if (epochLength_ == 0) revert ZeroEpochLength();
        owner = owner_;
        epochLength = epochLength_;
        emit OwnershipTransferred(address(0), owner_);
        _store(0, consensusKeys, settlementKeys);
    }

    function transferOwnership(address newOwner) external onlyOwner {
        if (newOwner == address(0)) revert ZeroOwner();
        emit OwnershipTransferred(owner, newOwner);
        owner = newOwner;
    }

    /// @notice Schedules a set that takes effect from L2 block `epoch * epochLength`.
    /// @dev The registry cannot see the L2 head, so scheduling an epoch the L2 already reached would
    ///      change who may sign outputs for blocks that are already built: the owner must schedule
    ///      ahead of time.
    function scheduleValidators(
        uint64 epoch,
        bytes32[] calldata consensusKeys,
        address[] calldata settlementKeys
    ) external onlyOwner {
        uint64 latest = sets[sets.length - 1].epoch;
        if (epoch <= latest) revert EpochNotIncreasing(latest, epoch);
        // The node computes the first block as epoch * epochLength in u64.
        if (uint256(epoch) * epochLength > type(uint64).max) revert EpochStartOverflows(epoch, epochLength);
        _store(epoch, consensusKeys, settlementKeys);
    }

    function setCount() external view returns (uint256) {
        return sets.length;
    }

    function validatorsAt(uint64 l2BlockNumber)
        external
        view
        returns (uint64 epoch, bytes32[] memory consensusKeys, address[] memory settlementKeys)
    {
        ValidatorSet storage s = sets[_setIndexAt(l2BlockNumber)];
        return (s.epoch, s.consensusKeys, s.settlementKeys);
    }

    function isValidatorAt(uint64 l2BlockNumber, address signer) external view returns (bool) {
        return isSettlementKeyOf[_setIndexAt(l2BlockNumber)][signer];
    }

    /// @notice n - floor((n-1)/3): the smallest count that outnumbers f faulty validators twice over
    ///         (2f+1 when n = 3f+1), and 1 for a single validator.
    function quorumAt(uint64 l2BlockNumber) external view returns (uint256) {
        uint256 n = sets[_setIndexAt(l2BlockNumber)].settlementKeys.length;
        return n - (n - 1) / 3;
    }

    /// @dev Latest set whose epoch <= l2BlockNumber / epochLength. Set 0 has epoch 0, so one always
    ///      matches. Bound: log2(setCount) + 1 iterations.
    function _setIndexAt(uint64 l2BlockNumber) internal view returns (uint256) {
        uint64 epoch = l2BlockNumber / epochLength;
        uint256 lo = 0;
        uint256 hi = sets.length - 1;
        while (lo < hi) {
            uint256 mid = (lo + hi + 1) / 2;
            if (sets[mid].epoch <= epoch) lo = mid;
            else hi = mid - 1;
        }
        return lo;
    }

    function _store(uint64 epoch, bytes32[] memory consensusKeys, address[] memory settlementKeys) internal {
        uint256 n = settlementKeys.length;
        if (consensusKeys.length != n) revert KeyCountMismatch(consensusKeys.length, n);
        if (n == 0 || n > MAX_VALIDATORS) revert ValidatorCountOutOfRange(n, MAX_VALIDATORS);

        uint256 index = sets.length;
        ValidatorSet storage s = sets.push();
        s.epoch = epoch;
        // Bound: n <= 128 iterations; the membership mapping of this fresh set index is the
        // duplicate check.
        for (uint256 i = 0; i < n; i++) {
            address key = settlementKeys[i];
            if (key == address(0)) revert ZeroSettlementKey(i);
            if (isSettlementKeyOf[index][key]) revert DuplicateSettlementKey(key);
            isSettlementKeyOf[index][key] = true;
            s.settlementKeys.push(key);
        }
        // Consensus keys are never looked up on L1, so a pairwise check in memory is cheaper than a
        // mapping. Bound: n(n-1)/2 <= 8128 comparisons.
        for (uint256 i = 0; i < n; i++) {
            bytes32 key = consensusKeys[i];
            if (key == bytes32(0)) revert ZeroConsensusKey(i);
            for (uint256 j = 0; j < i; j++) {
                if (consensusKeys[j] == key) revert DuplicateConsensusKey(key);
            }
            s.consensusKeys.push(key);
        }
        emit ValidatorSetScheduled(epoch, consensusKeys, settlementKeys);
    }
}
