// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Test} from "mini-std/Test.sol";
import {vm} from "mini-std/Vm.sol";
import {Counter} from "../src/Counter.sol";

/// Runs forked from a devnet where script/Deploy.s.sol ran and the counter was then set from
/// OLD_NUMBER (at OLD_BLOCK) to NEW_NUMBER (in NEW_BLOCK): `forge test --fork-url URL`, or with
/// `--fork-block-number N` and FORK_BLOCK=N for an N in [OLD_BLOCK, NEW_BLOCK). tests/forge.rs sets
/// the environment: COUNTER, SALTED, FORK_URL, OLD_BLOCK, OLD_NUMBER, NEW_BLOCK, NEW_NUMBER.
contract ForkTest is Test {
    address constant DEV_0 = 0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266;

    Counter counter;
    Counter salted;

    function setUp() public {
        counter = Counter(vm.envAddress("COUNTER"));
        salted = Counter(vm.envAddress("SALTED"));
    }

    /// The state at the block forge forked at.
    function test_ForkedState() public view {
        uint256 forkBlock = vm.envOr("FORK_BLOCK", uint256(0));
        if (forkBlock != 0) {
            vm.assertEq(block.number, forkBlock, "block.number is the fork block");
            vm.assertEq(counter.number(), vm.envUint("OLD_NUMBER"), "counter at the old block");
        } else {
            vm.assertGe(block.number, vm.envUint("NEW_BLOCK"), "forked at the latest block");
            vm.assertEq(counter.number(), vm.envUint("NEW_NUMBER"), "counter at the latest block");
        }
        vm.assertEq(salted.number(), 8, "salted counter");
        vm.assertEq(counter.owner(), DEV_0, "owner");
        vm.assertGt(DEV_0.balance, 0, "dev account 0 has ether");
        vm.assertGt(address(0x4e59b44847b379578588920cA78FbF26c0B4956C).code.length, 0, "CREATE2 deployer");
    }

    /// Calls on the fork execute against the devnet's state, reverts and all; writes stay local.
    function test_RevertAndLocalWrite() public {
        vm.expectRevert(bytes("Counter: not owner"));
        counter.set(1);
        vm.prank(DEV_0);
        counter.set(1000);
        vm.assertEq(counter.number(), 1000, "written on the fork");
    }

    /// A second fork at an older block, then one at the newest.
    function test_SelectForkAtOldBlock() public {
        string memory url = vm.envString("FORK_URL");
        uint256 oldBlock = vm.envUint("OLD_BLOCK");
        vm.createSelectFork(url, oldBlock);
        vm.assertEq(block.number, oldBlock, "block.number at the old fork");
        vm.assertEq(counter.number(), vm.envUint("OLD_NUMBER"), "counter at the old block");
        vm.createSelectFork(url);
        vm.assertGe(block.number, vm.envUint("NEW_BLOCK"), "block.number at the new fork");
        vm.assertEq(counter.number(), vm.envUint("NEW_NUMBER"), "counter at the latest block");
    }
}
