// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

/// @title Reverter
/// @notice Always-failing functions for testing how revert data reaches RPC clients.
contract Reverter {
    error Custom(uint256 code, string why);

    /// @notice Reverts with Error(string) "Reverter: always reverts".
    function alwaysRevert() external pure {
        revert("Reverter: always reverts");
    }

    /// @notice Reverts with Error(string) carrying the caller's message.
    function revertWith(string calldata reason) external pure {
        revert(reason);
    }

    /// @notice Reverts with the custom error Custom(code, why).
    function revertCustom(uint256 code) external pure {
        revert Custom(code, "custom error");
    }

    /// @notice Panics with code 0x12 (division by zero).
    function panicDivZero(uint256 a) external pure returns (uint256) {
        return a / (a - a);
    }
}
