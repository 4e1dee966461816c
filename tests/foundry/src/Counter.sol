// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// A counter only its owner may set: state to read at different blocks, and a revert reason.
contract Counter {
    address public immutable owner;
    uint256 public number;

    event Set(uint256 number);

    constructor(uint256 start) {
        owner = msg.sender;
        number = start;
    }

    function set(uint256 value) external {
        require(msg.sender == owner, "Counter: not owner");
        number = value;
        emit Set(value);
    }

    function increment() external {
        number += 1;
    }
}
