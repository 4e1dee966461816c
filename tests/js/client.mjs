// End-to-end client check with viem: chainId, deploy Token (contracts/out/Token.json), ETH transfer,
// token transfer, Transfer events via getContractEvents, balanceOf, and a revert whose error carries
// the reason string ("insufficient balance") through eth_call and eth_estimateGas.
// Run: node tests/js/client.mjs            (RPC_URL defaults to http://127.0.0.1:8545; dev account 0 signs)
//      RPC_URL=http://127.0.0.1:18545 node tests/js/client.mjs   — prints one line per step, exits 1 on failure.
import { check, step, tokenArtifact } from "./steps.mjs";
import { createPublicClient, createWalletClient, defineChain, http, parseEther, parseUnits } from "viem";
import { privateKeyToAccount } from "viem/accounts";

const RPC_URL = process.env.RPC_URL ?? "http://127.0.0.1:8545";
const KEY0 = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
const RECIPIENT = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"; // dev account 1
const artifact = tokenArtifact;
const { abi, bytecode } = artifact;

const account = privateKeyToAccount(KEY0);
let publicClient, walletClient, token, deployBlock;
const supply = parseUnits("1000000", 18);
const amount = parseUnits("123.5", 18);

await step("chainId", async () => {
  const probe = createPublicClient({ transport: http(RPC_URL) });
  const id = await probe.getChainId();
  const chain = defineChain({
    id,
    name: "rtchain",
    nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
    rpcUrls: { default: { http: [RPC_URL] } },
  });
  publicClient = createPublicClient({ chain, transport: http(RPC_URL) });
  walletClient = createWalletClient({ account, chain, transport: http(RPC_URL) });
  return `${id} at ${RPC_URL}`;
});

await step("deploy Token", async () => {
  const hash = await walletClient.deployContract({ abi, bytecode, args: ["Test Token", "TT", supply] });
  const receipt = await publicClient.waitForTransactionReceipt({ hash });
  check(receipt.status === "success", `deploy status ${receipt.status}`);
  check(receipt.contractAddress, "receipt has no contractAddress");
  token = receipt.contractAddress;
  deployBlock = receipt.blockNumber;
  const code = await publicClient.getCode({ address: token });
  check(code && code.length > 2, "no code at the deployed address");
  return `${token} in block ${receipt.blockNumber}, gas ${receipt.gasUsed}`;
});

await step("ETH transfer", async () => {
  const before = await publicClient.getBalance({ address: RECIPIENT });
  const value = parseEther("1.25");
  const hash = await walletClient.sendTransaction({ to: RECIPIENT, value });
  const receipt = await publicClient.waitForTransactionReceipt({ hash });
  check(receipt.status === "success", `status ${receipt.status}`);
  const after = await publicClient.getBalance({ address: RECIPIENT });
  check(after - before === value, `recipient balance grew by ${after - before}, expected ${value}`);
  return `1.25 ETH to ${RECIPIENT}, block ${receipt.blockNumber}`;
});

await step("token transfer", async () => {
  const hash = await walletClient.writeContract({ address: token, abi, functionName: "transfer", args: [RECIPIENT, amount] });
  const receipt = await publicClient.waitForTransactionReceipt({ hash });
  check(receipt.status === "success", `status ${receipt.status}`);
  check(receipt.logs.length === 1, `expected 1 log in the receipt, got ${receipt.logs.length}`);
  return `block ${receipt.blockNumber}, gas ${receipt.gasUsed}`;
});

await step("Transfer events", async () => {
  const events = await publicClient.getContractEvents({ address: token, abi, eventName: "Transfer", fromBlock: deployBlock });
  check(events.length === 2, `expected 2 Transfer events (mint + transfer), got ${events.length}`);
  const [mint, sent] = events;
  check(mint.args.from === "0x0000000000000000000000000000000000000000" && mint.args.value === supply, "mint event args");
  check(sent.args.from === account.address && sent.args.to === RECIPIENT && sent.args.value === amount, "transfer event args");
  const logs = await publicClient.getLogs({ address: token, fromBlock: deployBlock, toBlock: "latest" });
  check(logs.length === 2, `getLogs returned ${logs.length} logs`);
  return `mint ${mint.args.value}, transfer ${sent.args.value} (block ${sent.blockNumber}, logIndex ${sent.logIndex})`;
});

await step("balanceOf", async () => {
  const bal1 = await publicClient.readContract({ address: token, abi, functionName: "balanceOf", args: [RECIPIENT] });
  const bal0 = await publicClient.readContract({ address: token, abi, functionName: "balanceOf", args: [account.address] });
  check(bal1 === amount, `recipient has ${bal1}, expected ${amount}`);
  check(bal0 === supply - amount, `sender has ${bal0}, expected ${supply - amount}`);
  return `recipient ${bal1}, sender ${bal0}`;
});

const expectRevert = async (fn) => {
  try {
    await fn();
  } catch (err) {
    const text = `${err?.shortMessage ?? ""} ${err?.message ?? ""} ${err?.walk?.((e) => e.reason)?.reason ?? ""}`;
    check(text.includes("insufficient balance"), `error lacks the reason: ${err?.shortMessage ?? err}`);
    return err.walk((e) => e.reason)?.reason ?? err.shortMessage;
  }
  throw new Error("call did not revert");
};

await step("revert reason via eth_call", () =>
  expectRevert(() => publicClient.simulateContract({ account, address: token, abi, functionName: "transfer", args: [RECIPIENT, supply * 2n] })),
);

await step("revert reason via eth_estimateGas", () =>
  expectRevert(() => walletClient.writeContract({ address: token, abi, functionName: "transfer", args: [RECIPIENT, supply * 2n] })),
);

console.log("all viem client checks passed");
