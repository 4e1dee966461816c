// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {vm} from "./Vm.sol";

/// Base of scripts: forge runs `run()` and, with --broadcast, sends the calls made between
/// vm.startBroadcast() and vm.stopBroadcast() as transactions.
abstract contract Script {
    bool public IS_SCRIPT = true;
}
