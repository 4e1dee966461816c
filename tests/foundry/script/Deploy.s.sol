// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Script} from "mini-std/Script.sol";
import {vm} from "mini-std/Vm.sol";
import {Counter} from "../src/Counter.sol";

/// forge script script/Deploy.s.sol --rpc-url URL --broadcast --private-key KEY
/// A plain CREATE, a CREATE2 through the deterministic deployer (0x4e59b448..., which forge uses
/// for `new C{salt: ...}` and the dev genesis holds), and calls. Leaves counter = 42, salted = 8.
contract Deploy is Script {
    function run() external returns (Counter counter, Counter salted) {
        // DEPLOY_SALT lets the script run again on the same chain (a salt deploys only once).
        bytes32 salt = bytes32(vm.envOr("DEPLOY_SALT", uint256(1)));
        vm.startBroadcast();
        counter = new Counter(1);
        salted = new Counter{salt: salt}(7);
        counter.set(42);
        salted.increment();
        vm.stopBroadcast();
    }
}
