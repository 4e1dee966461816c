// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

/// @title Amm
/// @notice A single constant-product pair with internal balances, for executor tests and the
/// `bench exec` hot-pair workload: every swap reads and writes both reserves, so swaps of
/// different traders conflict on the same two slots. Not a real exchange: no liquidity tokens,
/// and balances are credited by `faucet` (tests and benchmarks also set them in the pre-state).
contract Amm {
    /// Storage layout (tests and benchmarks write these slots directly): 0 and 1.
    uint256 public reserve0;
    uint256 public reserve1;
    /// Slots keccak256(abi.encode(trader, 2)) and keccak256(abi.encode(trader, 3)).
    mapping(address => uint256) public balance0;
    mapping(address => uint256) public balance1;

    event Swap(address indexed trader, bool zeroForOne, uint256 amountIn, uint256 amountOut);

    /// @notice Credits the caller with `amount` of each token (tests only: anyone may mint).
    function faucet(uint256 amount) external {
        balance0[msg.sender] += amount;
        balance1[msg.sender] += amount;
    }

    /// @notice Swaps `amountIn` of token 0 for token 1 (or the reverse), 0.3% fee, reverting
    /// when the output would be below `minOut`.
    function swap(bool zeroForOne, uint256 amountIn, uint256 minOut) external returns (uint256 amountOut) {
        (uint256 reserveIn, uint256 reserveOut) = zeroForOne ? (reserve0, reserve1) : (reserve1, reserve0);
        require(reserveIn > 0 && reserveOut > 0, "no liquidity");
        uint256 inWithFee = amountIn * 997;
        amountOut = (inWithFee * reserveOut) / (reserveIn * 1000 + inWithFee);
        require(amountOut >= minOut, "slippage");
        if (zeroForOne) {
            require(balance0[msg.sender] >= amountIn, "insufficient balance");
            balance0[msg.sender] -= amountIn;
            balance1[msg.sender] += amountOut;
            reserve0 = reserveIn + amountIn;
            reserve1 = reserveOut - amountOut;
        } else {
            require(balance1[msg.sender] >= amountIn, "insufficient balance");
            balance1[msg.sender] -= amountIn;
            balance0[msg.sender] += amountOut;
            reserve1 = reserveIn + amountIn;
            reserve0 = reserveOut - amountOut;
        }
        emit Swap(msg.sender, zeroForOne, amountIn, amountOut);
    }
}
