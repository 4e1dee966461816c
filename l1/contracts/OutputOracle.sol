// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ValidatorRegistry} from "./ValidatorRegistry.sol";

/// @notice Hook for a validity prover: when set on the oracle, every output must also pass it.
interface IOutputVerifier {
    function verifyOutput(uint64 l2BlockNumber, bytes32 outputRoot) external view returns (bool);
}

/// @title OutputOracle
/// @notice Output roots of L2 blocks at a fixed interval, each accepted with secp256k1 signatures
///         from a quorum of the validators registered for that block's epoch. Withdrawals are
///         proven against these roots once they are older than the finalization period.
/// @dev Output root = keccak256(abi.encode(bytes32(0) version, stateRoot, messagePasserStorageRoot,
///      l2BlockHash)), computed off-chain; the oracle stores it opaquely.
contract OutputOracle {
    struct Output {
        bytes32 outputRoot;
        uint64 timestamp;
        uint64 l2BlockNumber;
    }

    /// @notice Equal to the registry's MAX_VALIDATORS: more signatures than validators cannot all
    ///         be distinct members, and it bounds the signature loop.
    uint256 public constant MAX_SIGNATURES = 128;

    /// @dev Domain tag of outputDigest: keeps these signatures useless for any other message type.
    bytes32 public constant OUTPUT_DIGEST_TYPEHASH = keccak256("rtchain.OutputOracle.v1");

    /// @dev secp256k1n / 2: signatures with a larger s are the malleated twin of a valid one (EIP-2).
    uint256 internal constant SECP256K1_HALF_ORDER =
        0x7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0;

    error NotGuardian(address caller);
    error OraclePaused();
    error ZeroAddress();
    error ZeroSubmissionInterval();
    error WrongBlockNumber(uint256 expected, uint256 given);
    error ZeroOutputRoot();
    error TooManySignatures(uint256 count, uint256 max);
    error InsufficientSignatures(uint256 count, uint256 quorum);
    error BadSignatureLength(uint256 index, uint256 length);
    error BadSignatureV(uint256 index, uint8 v);
    error MalleableSignature(uint256 index);
    error UnrecoverableSignature(uint256 index);
    error DuplicateSigner(uint256 index, address signer);
    error SignersNotSorted(uint256 index, address previous, address signer);
    error NotValidator(uint256 index, address signer);
    error OutputNotVerified(address verifier);
    error NoOutputs();
    error OutputIndexOutOfRange(uint256 index, uint256 count);
    error NoOutputAtOrAfter(uint256 l2BlockNumber);
    error OutputAlreadyFinalized(uint256 index);

    event OutputProposed(
        bytes32 indexed outputRoot, uint256 indexed l2OutputIndex, uint256 indexed l2BlockNumber, uint256 l1Timestamp
    );
    event OutputsDeleted(uint256 indexed prevNextOutputIndex, uint256 indexed newNextOutputIndex);
    event Paused(address account);
    event Unpaused(address account);
    event ProofVerifierSet(address verifier);

    ValidatorRegistry public immutable registry;
    address public immutable guardian;
    uint64 public immutable submissionInterval;
    uint64 public immutable finalizationPeriodSeconds;
    uint64 public immutable l2ChainId;
    uint64 public immutable startingBlockNumber;

    address public proofVerifier;
    bool public paused;
    Output[] internal l2Outputs;

    modifier onlyGuardian() {
        if (msg.sender != guardian) revert NotGuardian(msg.sender);
        _;
    }

    constructor(
        address registry_,
        address guardian_,
        uint64 submissionInterval_,
        uint64 finalizationPeriodSeconds_,
        uint64 l2ChainId_,
        uint64 startingBlockNumber_
    ) {
        if (registry_ == address(0) || guardian_ == address(0)) revert ZeroAddress();
        // A zero interval would make nextBlockNumber() constant and accept the same block forever.
        if (submissionInterval_ == 0) revert ZeroSubmissionInterval();
        registry = ValidatorRegistry(registry_);
        guardian = guardian_;
        submissionInterval = submissionInterval_;
        finalizationPeriodSeconds = finalizationPeriodSeconds_;
        l2ChainId = l2ChainId_;
        startingBlockNumber = startingBlockNumber_;
    }

    /// @notice The 32-byte digest validators sign (raw secp256k1, no EIP-191 prefix). It binds the
    ///         L1 chain and this oracle so a signature cannot be replayed on another deployment.
    function outputDigest(uint64 l2BlockNumber, bytes32 outputRoot) public view returns (bytes32) {
        return keccak256(
            abi.encode(OUTPUT_DIGEST_TYPEHASH, block.chainid, address(this), l2ChainId, l2BlockNumber, outputRoot)
        );
    }

    /// @param signatures 65-byte r || s || v signatures over outputDigest, ordered by strictly
    ///        increasing signer address (ordering makes duplicates detectable in one pass).
    function proposeOutput(bytes32 outputRoot, uint64 l2BlockNumber, bytes[] calldata signatures) external {
        if (paused) revert OraclePaused();
        uint256 expected = nextBlockNumber();
        if (l2BlockNumber != expected) revert WrongBlockNumber(expected, l2BlockNumber);
        if (outputRoot == bytes32(0)) revert ZeroOutputRoot();

        uint256 count = signatures.length;
        if (count > MAX_SIGNATURES) revert TooManySignatures(count, MAX_SIGNATURES);
        uint256 quorum = registry.quorumAt(l2BlockNumber);
        if (count < quorum) revert InsufficientSignatures(count, quorum);

        bytes32 digest = outputDigest(l2BlockNumber, outputRoot);
        address previous = address(0);
        // Bound: count <= MAX_SIGNATURES iterations.
        for (uint256 i = 0; i < count; i++) {
            address signer = _recover(digest, signatures[i], i);
            if (signer == previous) revert DuplicateSigner(i, signer);
            if (signer < previous) revert SignersNotSorted(i, previous, signer);
            if (!registry.isValidatorAt(l2BlockNumber, signer)) revert NotValidator(i, signer);
            previous = signer;
        }

        address verifier = proofVerifier;
        if (verifier != address(0) && !IOutputVerifier(verifier).verifyOutput(l2BlockNumber, outputRoot)) {
            revert OutputNotVerified(verifier);
        }

        emit OutputProposed(outputRoot, l2Outputs.length, l2BlockNumber, block.timestamp);
        l2Outputs.push(Output({outputRoot: outputRoot, timestamp: uint64(block.timestamp), l2BlockNumber: l2BlockNumber}));
    }

    function nextBlockNumber() public view returns (uint256) {
        return latestBlockNumber() + submissionInterval;
    }

    function latestBlockNumber() public view returns (uint256) {
        uint256 n = l2Outputs.length;
        return n == 0 ? startingBlockNumber : l2Outputs[n - 1].l2BlockNumber;
    }

    function nextOutputIndex() public view returns (uint256) {
        return l2Outputs.length;
    }

    function latestOutputIndex() external view returns (uint256) {
        uint256 n = l2Outputs.length;
        if (n == 0) revert NoOutputs();
        return n - 1;
    }

    function getL2Output(uint256 index) external view returns (Output memory) {
        return _output(index);
    }

    /// @notice Index of the first output whose L2 block is >= l2BlockNumber (the output a withdrawal
    ///         made in that block can be proven against). Bound: log2(outputs) + 1 iterations.
    function getL2OutputIndexAfter(uint256 l2BlockNumber) external view returns (uint256) {
        uint256 n = l2Outputs.length;
        if (n == 0 || l2Outputs[n - 1].l2BlockNumber < l2BlockNumber) revert NoOutputAtOrAfter(l2BlockNumber);
        uint256 lo = 0;
        uint256 hi = n - 1;
        while (lo < hi) {
            uint256 mid = (lo + hi) / 2;
            if (l2Outputs[mid].l2BlockNumber < l2BlockNumber) lo = mid + 1;
            else hi = mid;
        }
        return lo;
    }

    function isOutputFinalized(uint256 index) public view returns (bool) {
        return block.timestamp >= uint256(_output(index).timestamp) + finalizationPeriodSeconds;
    }

    function pause() external onlyGuardian {
        paused = true;
        emit Paused(msg.sender);
    }

    function unpause() external onlyGuardian {
        paused = false;
        emit Unpaused(msg.sender);
    }

    /// @param verifier zero disables the check.
    function setProofVerifier(address verifier) external onlyGuardian {
        proofVerifier = verifier;
        emit ProofVerifierSet(verifier);
    }

    /// @notice Deletes output l2OutputIndex and every later one (they build on it), while it is still
    ///         in its challenge window. Withdrawals proven against a deleted output must be re-proven.
    function deleteL2Outputs(uint256 l2OutputIndex) external onlyGuardian {
        // Later outputs have later timestamps, so checking the first covers them all.
        if (isOutputFinalized(l2OutputIndex)) revert OutputAlreadyFinalized(l2OutputIndex);
        uint256 prevNextOutputIndex = l2Outputs.length;
        // Shortening the length in place costs O(1) instead of popping every later output; stale
        // slots beyond the length are unreachable and fully overwritten by the next push.
        assembly {
            sstore(l2Outputs.slot, l2OutputIndex)
        }
        emit OutputsDeleted(prevNextOutputIndex, l2OutputIndex);
    }

    function _output(uint256 index) internal view returns (Output storage) {
        uint256 n = l2Outputs.length;
        if (index >= n) revert OutputIndexOutOfRange(index, n);
        return l2Outputs[index];
    }

    function _recover(bytes32 digest, bytes calldata sig, uint256 index) internal pure returns (address signer) {
        if (sig.length != 65) revert BadSignatureLength(index, sig.length);
        bytes32 r;
        bytes32 s;
        uint8 v;
        assembly {
            r := calldataload(sig.offset)
            s := calldataload(add(sig.offset, 32))
            v := byte(0, calldataload(add(sig.offset, 64)))
        }
        if (v != 27 && v != 28) revert BadSignatureV(index, v);
        if (uint256(s) > SECP256K1_HALF_ORDER) revert MalleableSignature(index);
        signer = ecrecover(digest, v, r, s);
        if (signer == address(0)) revert UnrecoverableSignature(index);
    }
}
