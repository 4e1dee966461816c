// End-to-end client check with ethers v6: chainId, deploy Token (contracts/out/Token.json) with a ContractFactory,
// ETH transfer, token transfer (each awaited with tx.wait()), Transfer events via queryFilter, balanceOf, and a
// revert that throws with the reason "insufficient balance" (eth_call and eth_estimateGas). The provider uses
// cacheTimeout: -1: ethers caches identical requests for 250 ms, which breaks back-to-back sends (nonce too low).
// Run: RPC_URL=http://127.0.0.1:18545 node tests/js/ethers-client.mjs   — one line per step, exits 1 on failure.
import { check, step, tokenArtifact } from "./steps.mjs";
import { ContractFactory, JsonRpcProvider, Wallet, ZeroAddress, parseEther, parseUnits } from "ethers";

const RPC_URL = process.env.RPC_URL ?? "http://127.0.0.1:8545";
const KEY0 = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
const RECIPIENT = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"; // dev account 1
const artifact = tokenArtifact;

const provider = new JsonRpcProvider(RPC_URL, undefined, { cacheTimeout: -1 });
const wallet = new Wallet(KEY0, provider);
let token, deployBlock;
const supply = parseUnits("1000000", 18);
const amount = parseUnits("123.5", 18);

await step("chainId", async () => {
  const { chainId } = await provider.getNetwork();
  return `${chainId} at ${RPC_URL}`;
});

await step("deploy Token", async () => {
  const factory = new ContractFactory(artifact.abi, artifact.bytecode, wallet);
  token = await factory.deploy("Test Token", "TT", supply);
  const receipt = await token.deploymentTransaction().wait();
  check(receipt.status === 1, `deploy status ${receipt.status}`);
  check(receipt.contractAddress === (await token.getAddress()), "receipt contractAddress differs");
  deployBlock = receipt.blockNumber;
  const code = await provider.getCode(receipt.contractAddress);
  check(code.length > 2, "no code at the deployed address");
  return `${receipt.contractAddress} in block ${receipt.blockNumber}, gas ${receipt.gasUsed}`;
});

await step("ETH transfer", async () => {
  const before = await provider.getBalance(RECIPIENT);
  const value = parseEther("1.25");
  const receipt = await (await wallet.sendTransaction({ to: RECIPIENT, value })).wait();
  check(receipt.status === 1, `status ${receipt.status}`);
  const after = await provider.getBalance(RECIPIENT);
  check(after - before === value, `recipient balance grew by ${after - before}, expected ${value}`);
  return `1.25 ETH to ${RECIPIENT}, block ${receipt.blockNumber}`;
});

await step("token transfer", async () => {
  const receipt = await (await token.transfer(RECIPIENT, amount)).wait();
  check(receipt.status === 1, `status ${receipt.status}`);
  check(receipt.logs.length === 1, `expected 1 log in the receipt, got ${receipt.logs.length}`);
  return `block ${receipt.blockNumber}, gas ${receipt.gasUsed}`;
});

await step("Transfer events", async () => {
  const events = await token.queryFilter(token.filters.Transfer(), deployBlock, "latest");
  check(events.length === 2, `expected 2 Transfer events (mint + transfer), got ${events.length}`);
  const [mint, sent] = events;
  check(mint.args.from === ZeroAddress && mint.args.value === supply, "mint event args");
  check(sent.args.from === wallet.address && sent.args.to === RECIPIENT && sent.args.value === amount, "transfer event args");
  return `mint ${mint.args.value}, transfer ${sent.args.value} (block ${sent.blockNumber}, index ${sent.index})`;
});

await step("balanceOf", async () => {
  const bal1 = await token.balanceOf(RECIPIENT);
  const bal0 = await token.balanceOf(wallet.address);
  check(bal1 === amount, `recipient has ${bal1}, expected ${amount}`);
  check(bal0 === supply - amount, `sender has ${bal0}, expected ${supply - amount}`);
  return `recipient ${bal1}, sender ${bal0}`;
});

const expectRevert = async (fn) => {
  try {
    await fn();
  } catch (err) {
    check(err.code === "CALL_EXCEPTION", `expected CALL_EXCEPTION, got ${err.code}: ${err.shortMessage ?? err}`);
    check(err.reason === "insufficient balance", `reason ${JSON.stringify(err.reason)}: ${err.shortMessage ?? err}`);
    return err.reason;
  }
  throw new Error("call did not revert");
};

await step("revert reason via eth_call", () => expectRevert(() => token.transfer.staticCall(RECIPIENT, supply * 2n)));

await step("revert reason via eth_estimateGas", () => expectRevert(() => token.transfer(RECIPIENT, supply * 2n)));

console.log("all ethers client checks passed");
