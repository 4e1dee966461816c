// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {OutputOracle} from "./OutputOracle.sol";
import {MerkleTrie} from "./MerkleTrie.sol";

/// @title Portal
/// @notice Deposits from L1 into L2 (as TransactionDeposited events the L2 derives deposit
///         transactions from) and withdrawals from L2 to L1 (proven against an output root of the
///         OutputOracle, finalized after the finalization period). Holds the ETH that backs L2 ETH.
/// @dev Pausing stops withdrawals only: deposits stay open because they are the path by which users
///      can always reach the L2, and halting them protects nothing held here.
contract Portal {
    struct WithdrawalTransaction {
        uint256 nonce;
        address sender;
        address target;
        uint256 value;
        uint256 gasLimit;
        bytes data;
    }

    struct OutputRootProof {
        bytes32 version;
        bytes32 stateRoot;
        bytes32 messagePasserStorageRoot;
        bytes32 latestBlockhash;
    }

    struct ProvenWithdrawal {
        bytes32 outputRoot;
        uint128 timestamp;
        uint128 l2OutputIndex;
    }

    /// @notice Gas of a deposit is paid on L1 only through this limit, so it must cover the L2
    ///         intrinsic cost (21000 + 16 per data byte, every byte counted as non-zero).
    uint64 public constant DEPOSIT_BASE_GAS = 21_000;
    uint64 public constant DEPOSIT_GAS_PER_BYTE = 16;
    /// @notice A deposit cannot ask for more than an L2 block can hold.
    uint64 public constant MAX_DEPOSIT_GAS_LIMIT = 30_000_000;
    /// @notice Bounds what the L2 must carry per deposit (and the event data L1 stores).
    uint256 public constant MAX_DEPOSIT_DATA = 120_000;
    /// @notice Added to the contract sender of a deposit so an L1 contract cannot act as the L2
    ///         account of the same address (which may belong to someone else there).
    uint160 public constant ALIAS_OFFSET = uint160(0x1111000000000000000000000000000000001111);
    /// @notice l2Sender outside a withdrawal call. Non-zero, so setting the sender for a call
    ///         rewrites a live slot (no 20k fresh-slot cost), and a contract reading it outside a
    ///         withdrawal gets an address nobody controls.
    address public constant DEFAULT_L2_SENDER = 0x000000000000000000000000000000000000dEaD;
    /// @notice Gas kept back beyond the 64/63 of the call's limit: covers the CALL itself (value
    ///         transfer 9000, new account 25000, cold access 2600) and the work after it returns
    ///         (restoring l2Sender, the event), so a relayer cannot make the call run short of gas.
    uint256 public constant FINALIZE_GAS_OVERHEAD = 60_000;
    /// @notice Storage slot of sentMessages in L2ToL1MessagePasser.
    uint256 internal constant SENT_MESSAGES_SLOT = 0;
    /// @dev Bytes 0x01: the RLP encoding of the value true (1) as the storage trie stores it.
    bytes internal constant SENT_VALUE = hex"01";

    error NotGuardian(address caller);
    error ZeroAddress();
    error PortalPaused();
    error PlainTransferRefused();
    error CreationWithTarget(address to);
    error DepositDataTooLarge(uint256 length, uint256 max);
    error DepositGasLimitTooLow(uint64 gasLimit, uint256 minimum);
    error DepositGasLimitTooHigh(uint64 gasLimit, uint64 maximum);
    error WithdrawalTargetIsPortal();
    error UnsupportedOutputVersion(bytes32 version);
    error OutputNotPosted(uint256 l2OutputIndex, uint256 nextOutputIndex);
    error OutputRootMismatch(bytes32 expected, bytes32 computed);
    error WithdrawalAlreadyProven(bytes32 withdrawalHash);
    error WithdrawalAlreadyFinalized(bytes32 withdrawalHash);
    error WithdrawalNotSent(bytes32 withdrawalHash);
    error WithdrawalNotProven(bytes32 withdrawalHash);
    error ProvenOutputDeleted(bytes32 withdrawalHash, uint256 l2OutputIndex);
    error ProofWindowNotElapsed(uint256 readyAt);
    error OutputNotFinalized(uint256 l2OutputIndex);
    error WithdrawalInProgress();
    error InsufficientGasForWithdrawal(uint256 gasLeft, uint256 gasLimit);
    error InsufficientPortalBalance(uint256 balance, uint256 value);

    event TransactionDeposited(address indexed from, address indexed to, uint256 indexed depositNonce, bytes opaqueData);
    event WithdrawalProven(bytes32 indexed withdrawalHash, address indexed from, address indexed to);
    event WithdrawalFinalized(bytes32 indexed withdrawalHash, bool success);
    event Paused(address account);
    event Unpaused(address account);

    OutputOracle public immutable oracle;
    address public immutable guardian;

    bool public paused;
    /// @notice Deposits so far; each deposit's event carries the count before it, so the L2 can
    ///         tell that none was skipped.
    uint64 public depositCount;
    address public l2Sender;
    mapping(bytes32 => ProvenWithdrawal) public provenWithdrawals;
    mapping(bytes32 => bool) public finalizedWithdrawals;

    modifier onlyGuardian() {
        if (msg.sender != guardian) revert NotGuardian(msg.sender);
        _;
    }

    modifier whenNotPaused() {
        if (paused) revert PortalPaused();
        _;
    }

    constructor(address oracle_, address guardian_) {
        if (oracle_ == address(0) || guardian_ == address(0)) revert ZeroAddress();
        oracle = OutputOracle(oracle_);
        guardian = guardian_;
        l2Sender = DEFAULT_L2_SENDER;
    }

    /// @dev ETH sent without a deposit would be credited to nobody on L2.
    receive() external payable {
        revert PlainTransferRefused();
    }

    function pause() external onlyGuardian {
        paused = true;
        emit Paused(msg.sender);
    }

    function unpause() external onlyGuardian {
        paused = false;
        emit Unpaused(msg.sender);
    }

    /// @notice Asks the L2 to run a transaction from msg.sender (aliased when a contract) that first
    ///         mints msg.value to it.
    /// @param value sent to `to` on L2, taken from the L2 balance of the sender (which the mint tops up).
    function depositTransaction(address to, uint256 value, uint64 gasLimit, bool isCreation, bytes calldata data)
        external
        payable
    {
        if (isCreation && to != address(0)) revert CreationWithTarget(to);
        if (data.length > MAX_DEPOSIT_DATA) revert DepositDataTooLarge(data.length, MAX_DEPOSIT_DATA);
        uint256 minimum = DEPOSIT_BASE_GAS + DEPOSIT_GAS_PER_BYTE * data.length;
        if (gasLimit < minimum) revert DepositGasLimitTooLow(gasLimit, minimum);
        if (gasLimit > MAX_DEPOSIT_GAS_LIMIT) revert DepositGasLimitTooHigh(gasLimit, MAX_DEPOSIT_GAS_LIMIT);

        address from = msg.sender;
        // A contract's address on L1 may be controlled by someone else on L2 (or not exist there);
        // only EOAs, whose key is the same on both chains, keep their address.
        if (msg.sender != tx.origin) {
            unchecked {
                from = address(uint160(msg.sender) + ALIAS_OFFSET);
            }
        }
        bytes memory opaqueData = abi.encodePacked(msg.value, value, gasLimit, isCreation, data);
        emit TransactionDeposited(from, to, depositCount, opaqueData);
        depositCount++;
    }

    function hashWithdrawal(WithdrawalTransaction calldata tx_) public pure returns (bytes32) {
        return keccak256(abi.encode(tx_.nonce, tx_.sender, tx_.target, tx_.value, tx_.gasLimit, tx_.data));
    }

    /// @notice Proves that L2ToL1MessagePasser recorded the withdrawal in the L2 state committed to by
    ///         output l2OutputIndex, starting its finalization period.
    /// @param withdrawalProof eth_getProof storageProof[0].proof for the sentMessages slot of the
    ///        withdrawal, against messagePasserStorageRoot.
    function proveWithdrawalTransaction(
        WithdrawalTransaction calldata tx_,
        uint256 l2OutputIndex,
        OutputRootProof calldata outputRootProof,
        bytes[] calldata withdrawalProof
    ) external whenNotPaused {
        // A withdrawal calling the portal could act as the portal (e.g. spend its ETH as deposits).
        if (tx_.target == address(this)) revert WithdrawalTargetIsPortal();
        if (outputRootProof.version != bytes32(0)) revert UnsupportedOutputVersion(outputRootProof.version);

        uint256 nextIndex = oracle.nextOutputIndex();
        if (l2OutputIndex >= nextIndex) revert OutputNotPosted(l2OutputIndex, nextIndex);
        bytes32 outputRoot = oracle.getL2Output(l2OutputIndex).outputRoot;
        bytes32 computed = keccak256(
            abi.encode(
                outputRootProof.version,
                outputRootProof.stateRoot,
                outputRootProof.messagePasserStorageRoot,
                outputRootProof.latestBlockhash
            )
        );
        if (computed != outputRoot) revert OutputRootMismatch(outputRoot, computed);

        bytes32 withdrawalHash = hashWithdrawal(tx_);
        if (finalizedWithdrawals[withdrawalHash]) revert WithdrawalAlreadyFinalized(withdrawalHash);
        ProvenWithdrawal memory earlier = provenWithdrawals[withdrawalHash];
        // Re-proving is only for a proof whose output was deleted; otherwise it would let anyone
        // restart the finalization period of someone else's withdrawal.
        if (earlier.timestamp != 0 && _isStillPosted(earlier)) revert WithdrawalAlreadyProven(withdrawalHash);

        bytes32 storageKey = keccak256(abi.encode(withdrawalHash, SENT_MESSAGES_SLOT));
        bytes memory value = MerkleTrie.get(
            abi.encodePacked(keccak256(abi.encode(storageKey))),
            withdrawalProof,
            outputRootProof.messagePasserStorageRoot
        );
        if (keccak256(value) != keccak256(SENT_VALUE)) revert WithdrawalNotSent(withdrawalHash);

        provenWithdrawals[withdrawalHash] = ProvenWithdrawal({
            outputRoot: outputRoot,
            timestamp: uint128(block.timestamp),
            l2OutputIndex: uint128(l2OutputIndex)
        });
        emit WithdrawalProven(withdrawalHash, tx_.sender, tx_.target);
    }

    /// @notice Executes a proven withdrawal once its proof and its output are past the finalization
    ///         period. The withdrawal counts as finalized even if the call fails (no retries), as the
    ///         sender chose the gas limit and target.
    function finalizeWithdrawalTransaction(WithdrawalTransaction calldata tx_) external whenNotPaused {
        // One withdrawal at a time: a nested one would overwrite l2Sender for the outer call.
        if (l2Sender != DEFAULT_L2_SENDER) revert WithdrawalInProgress();
        bytes32 withdrawalHash = hashWithdrawal(tx_);
        if (finalizedWithdrawals[withdrawalHash]) revert WithdrawalAlreadyFinalized(withdrawalHash);
        ProvenWithdrawal memory proven = provenWithdrawals[withdrawalHash];
        if (proven.timestamp == 0) revert WithdrawalNotProven(withdrawalHash);
        if (!_isStillPosted(proven)) revert ProvenOutputDeleted(withdrawalHash, proven.l2OutputIndex);
        uint256 readyAt = uint256(proven.timestamp) + oracle.finalizationPeriodSeconds();
        if (block.timestamp < readyAt) revert ProofWindowNotElapsed(readyAt);
        if (!oracle.isOutputFinalized(proven.l2OutputIndex)) revert OutputNotFinalized(proven.l2OutputIndex);
        // All ETH here backs L2 ETH, so a shortfall is a bug elsewhere: keep the withdrawal
        // retryable rather than finalize it as a failed call that paid nothing.
        if (address(this).balance < tx_.value) revert InsufficientPortalBalance(address(this).balance, tx_.value);

        // Marked before the call, so the target cannot re-enter and finalize it again.
        finalizedWithdrawals[withdrawalHash] = true;
        l2Sender = tx_.sender;
        bool success = _callWithExactGas(tx_.target, tx_.value, tx_.gasLimit, tx_.data);
        l2Sender = DEFAULT_L2_SENDER;
        emit WithdrawalFinalized(withdrawalHash, success);
    }

    function _isStillPosted(ProvenWithdrawal memory proven) internal view returns (bool) {
        uint256 index = proven.l2OutputIndex;
        if (index >= oracle.nextOutputIndex()) return false;
        return oracle.getL2Output(index).outputRoot == proven.outputRoot;
    }

    /// @dev The callee receives at most 63/64 of the gas left at the CALL (EIP-150), so a relayer
    ///      could otherwise pass just enough gas for this function to succeed while the call runs
    ///      out; the withdrawal would then be finalized as failed. Return data is not copied, so a
    ///      target cannot make the portal pay for a huge return buffer.
    function _callWithExactGas(address target, uint256 value, uint256 gasLimit, bytes memory data)
        internal
        returns (bool success)
    {
        uint256 available = gasleft();
        // Written to avoid overflow for any gasLimit: a limit above the gas left fails either way.
        if (gasLimit >= available || available - gasLimit < gasLimit / 63 + FINALIZE_GAS_OVERHEAD) {
            revert InsufficientGasForWithdrawal(available, gasLimit);
        }
        assembly {
            success := call(gasLimit, target, value, add(data, 32), mload(data), 0, 0)
        }
    }
}
