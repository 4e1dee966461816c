// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {vm} from "./Vm.sol";

/// Base of test contracts: forge runs their `test*` functions (after `setUp`) and counts a revert,
/// including a failed vm.assert*, as a failure.
abstract contract Test {
    bool public IS_TEST = true;
}
