// viem against the devnet's dev accounts, as a test suite uses anvil's or hardhat's: the node holds
// the keys (JSON-RPC accounts), viem sends only addresses. eth_accounts lists the ten accounts;
// sendTransaction and deployContract go through eth_sendTransaction (the node fills nonce, gas and
// fees); signMessage (personal_sign) and signTypedData (eth_signTypedData_v4) give signatures that
// recover to the account, locally and through viem's on-chain verifier (an eth_call); an account the
// node has no key for is refused with "unknown account".
// Run: RPC_URL=http://127.0.0.1:8545 node tests/js/dev-accounts.mjs   — one line per step, exits 1 on failure.
import { check, step, tokenArtifact } from "./steps.mjs";
import {
  createPublicClient,
  createWalletClient,
  defineChain,
  http,
  parseEther,
  recoverMessageAddress,
  recoverTypedDataAddress,
} from "viem";

const RPC_URL = process.env.RPC_URL ?? "http://127.0.0.1:8545";
// The first two of the mnemonic "test test ... junk", as anvil and hardhat fund them.
const DEV0 = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";
const DEV1 = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
const NOBODY = "0x000000000000000000000000000000000000dEaD";
const artifact = tokenArtifact;

let chain, publicClient, wallet;

await step("eth_accounts", async () => {
  const probe = createPublicClient({ transport: http(RPC_URL) });
  chain = defineChain({
    id: await probe.getChainId(),
    name: "rtchain devnet",
    nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
    rpcUrls: { default: { http: [RPC_URL] } },
  });
  publicClient = createPublicClient({ chain, transport: http(RPC_URL) });
  // No account: viem sends `from` and the node signs, as with anvil.
  wallet = createWalletClient({ chain, transport: http(RPC_URL) });
  const addresses = await wallet.getAddresses();
  check(addresses.length === 10, `ten dev accounts, got ${addresses.length}`);
  check(addresses[0].toLowerCase() === DEV0.toLowerCase(), `first is ${DEV0}, got ${addresses[0]}`);
  check(addresses[1].toLowerCase() === DEV1.toLowerCase(), `second is ${DEV1}, got ${addresses[1]}`);
  return `${addresses.length} accounts, first ${addresses[0]}`;
});

await step("sendTransaction from a dev account", async () => {
  const before = await publicClient.getBalance({ address: DEV1 });
  const hash = await wallet.sendTransaction({ account: DEV0, to: DEV1, value: parseEther("1.5") });
  const receipt = await publicClient.waitForTransactionReceipt({ hash });
  check(receipt.status === "success", `status ${receipt.status}`);
  check(receipt.from.toLowerCase() === DEV0.toLowerCase(), `sent from ${receipt.from}`);
  const after = await publicClient.getBalance({ address: DEV1 });
  check(after - before === parseEther("1.5"), `balance moved by ${after - before}`);
  const tx = await publicClient.getTransaction({ hash });
  check(tx.type === "eip1559", `the node filled an EIP-1559 transaction, got ${tx.type}`);
  return `${hash} in block ${receipt.blockNumber}, type ${tx.type}`;
});

await step("deployContract from a dev account", async () => {
  const hash = await wallet.deployContract({
    account: DEV1,
    abi: artifact.abi,
    bytecode: artifact.bytecode,
    args: ["Dev Token", "DEV", 1000n],
  });
  const receipt = await publicClient.waitForTransactionReceipt({ hash });
  check(receipt.status === "success" && receipt.contractAddress, `status ${receipt.status}`);
  const supply = await publicClient.readContract({
    address: receipt.contractAddress,
    abi: artifact.abi,
    functionName: "balanceOf",
    args: [DEV1],
  });
  check(supply === 1000n, `deployer holds the supply, got ${supply}`);
  return `${receipt.contractAddress}`;
});

await step("signMessage (personal_sign)", async () => {
  const message = "rtchain dev accounts sign as anvil's do";
  const signature = await wallet.signMessage({ account: DEV0, message });
  const recovered = await recoverMessageAddress({ message, signature });
  check(recovered.toLowerCase() === DEV0.toLowerCase(), `recovers to ${recovered}`);
  const valid = await publicClient.verifyMessage({ address: DEV0, message, signature });
  check(valid, "viem's verifier (eth_call) accepts it");
  const wrong = await publicClient.verifyMessage({ address: DEV1, message, signature });
  check(!wrong, "and refuses it for another account");
  return `${signature.slice(0, 18)}…`;
});

await step("signTypedData (eth_signTypedData_v4)", async () => {
  // EIP-712's own example, with a nested struct and an array, on this chain's domain.
  const typedData = {
    domain: { name: "Ether Mail", version: "1", chainId: chain.id, verifyingContract: "0xCcCCccccCCCCcCCCCCCcCcCccCcCCCcCcccccccC" },
    types: {
      Person: [
        { name: "name", type: "string" },
        { name: "wallets", type: "address[]" },
      ],
      Mail: [
        { name: "from", type: "Person" },
        { name: "to", type: "Person" },
        { name: "contents", type: "string" },
        { name: "amount", type: "uint256" },
      ],
    },
    primaryType: "Mail",
    message: {
      from: { name: "Cow", wallets: [DEV0] },
      to: { name: "Bob", wallets: [DEV1, NOBODY] },
      contents: "Hello, Bob!",
      amount: 10n ** 20n,
    },
  };
  const signature = await wallet.signTypedData({ account: DEV0, ...typedData });
  const recovered = await recoverTypedDataAddress({ ...typedData, signature });
  check(recovered.toLowerCase() === DEV0.toLowerCase(), `recovers to ${recovered}`);
  const valid = await publicClient.verifyTypedData({ address: DEV0, ...typedData, signature });
  check(valid, "viem's verifier (eth_call) accepts it");
  return `${signature.slice(0, 18)}…`;
});

await step("an account without a key is refused", async () => {
  let error;
  try {
    await wallet.sendTransaction({ account: NOBODY, to: DEV1, value: 1n });
  } catch (err) {
    error = err;
  }
  check(error, "sending from an unknown account fails");
  const text = `${error.details ?? ""} ${error.shortMessage ?? ""} ${error.message ?? ""}`;
  check(/unknown account/i.test(text), `the error says "unknown account": ${text}`);
  let signError;
  try {
    await wallet.signMessage({ account: NOBODY, message: "x" });
  } catch (err) {
    signError = err;
  }
  check(signError && /unknown account/i.test(`${signError.details ?? ""} ${signError.message ?? ""}`), "and so is signing");
  return "unknown account";
});

console.log("dev accounts: all steps passed");
