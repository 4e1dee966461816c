#!/usr/bin/env node
// End-to-end test of the L1 settlement contracts (l1/contracts/out/*.json) against a real anvil that this
// script starts itself (prague, free port, killed at exit even on failure). Real transactions for every
// state change; refusals are checked with eth_call on the latest state and decoded to their custom error.
// Withdrawals run end to end without an L2: the L2ToL1MessagePasser is deployed on anvil itself, and the
// output root is built from anvil's own eth_getProof / block header. Blob batches are built with
// `cast mktx --blob --eip4844` (node_modules has no JS KZG library; cast embeds c-kzg and the trusted setup).
// Run: node tests/js/l1-contracts.mjs   (after node scripts/compile-contracts.mjs) — one line per check,
// exit 1 at the first failure.
import { execFile, spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import solc from "solc";
import {
  concat,
  createPublicClient,
  createWalletClient,
  decodeErrorResult,
  decodeFunctionResult,
  defineChain,
  encodeAbiParameters,
  encodeDeployData,
  encodeFunctionData,
  encodePacked,
  fromRlp,
  getAddress,
  getContractAddress,
  http,
  keccak256,
  numberToHex,
  pad,
  parseEther,
  parseEventLogs,
  size,
  toHex,
  toRlp,
  zeroAddress,
  zeroHash,
} from "viem";
import { privateKeyToAccount, sign } from "viem/accounts";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const ANVIL = path.join(ROOT, "node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil");
const CAST = path.join(ROOT, "node_modules/@foundry-rs/cast-linux-amd64/bin/cast");
const T0 = performance.now();

// ---------------------------------------------------------------- anvil -------------------------------

const PORT = await new Promise((resolve, reject) => {
  const srv = net.createServer();
  srv.once("error", reject);
  srv.listen(0, "127.0.0.1", () => {
    const { port } = srv.address();
    srv.close(() => resolve(port));
  });
});
const RPC = `http://127.0.0.1:${PORT}`;
const anvil = spawn(ANVIL, ["--port", String(PORT), "--hardfork", "prague", "--no-request-size-limit"], {
  stdio: ["ignore", "pipe", "pipe"],
});
let anvilLog = "";
const keepLog = (b) => {
  anvilLog = (anvilLog + b.toString()).slice(-4000);
};
anvil.stdout.on("data", keepLog);
anvil.stderr.on("data", keepLog);
const children = new Set([anvil]);
const tempFiles = new Set();
process.on("exit", () => {
  for (const f of tempFiles) fs.rmSync(f, { force: true });
  for (const c of children) {
    try {
      c.kill("SIGKILL");
    } catch {}
  }
});
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => process.exit(130));
process.on("unhandledRejection", (e) => {
  console.error(`FAIL unhandled: ${e?.stack ?? e}`);
  process.exit(1);
});

let rpcId = 0;
async function rpc(method, params = []) {
  const res = await fetch(RPC, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ jsonrpc: "2.0", id: ++rpcId, method, params }),
  });
  const j = await res.json();
  if (j.error) {
    const e = new Error(`${method}: ${j.error.message}`);
    e.rpc = j.error;
    throw e;
  }
  return j.result;
}

// ---------------------------------------------------------------- reporting ---------------------------

let passed = 0;
async function check(name, fn) {
  const t = performance.now();
  try {
    const detail = await fn();
    passed++;
    console.log(`ok   ${name}${detail ? `: ${detail}` : ""} (${Math.round(performance.now() - t)} ms)`);
  } catch (err) {
    console.error(`FAIL ${name}: ${err?.shortMessage ?? err?.message ?? err}`);
    if (err?.details) console.error(`     details: ${err.details}`);
    if (process.env.DEBUG) console.error(err?.stack);
    process.exit(1);
  }
}
function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}
const norm = (v) => (typeof v === "string" && v.startsWith("0x") ? v.toLowerCase() : v);
function eq(actual, expected, what) {
  const a = JSON.stringify(actual, (_, v) => (typeof v === "bigint" ? v.toString() : norm(v)));
  const e = JSON.stringify(expected, (_, v) => (typeof v === "bigint" ? v.toString() : norm(v)));
  if (a !== e) throw new Error(`${what}: got ${a}, want ${e}`);
}

// ---------------------------------------------------------------- artifacts ---------------------------

const load = (name) => JSON.parse(fs.readFileSync(path.join(ROOT, "l1/contracts/out", `${name}.json`), "utf8"));
const A = Object.fromEntries(
  ["ValidatorRegistry", "OutputOracle", "Portal", "BatchInbox", "L2ToL1MessagePasser", "L1Block", "MerkleTrie", "RLPReader"].map(
    (n) => [n, load(n)],
  ),
);

// Test-only helpers, compiled here so they never become artifacts of l1/contracts.
const HARNESS = `// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;
import {MerkleTrie} from "l1/contracts/MerkleTrie.sol";
import {IOutputVerifier} from "l1/contracts/OutputOracle.sol";
interface IPortal {
    function depositTransaction(address, uint256, uint64, bool, bytes calldata) external payable;
    function l2Sender() external view returns (address);
}
contract TrieHarness {
    function get(bytes calldata key, bytes[] calldata proof, bytes32 root) external pure returns (bytes memory) {
        return MerkleTrie.get(key, proof, root);
    }
}
contract MockVerifier is IOutputVerifier {
    bool public answer;
    function setAnswer(bool a) external { answer = a; }
    function verifyOutput(uint64, bytes32) external view returns (bool) { return answer; }
}
contract DepositCaller {
    function deposit(address portal, address to, uint256 value, uint64 gasLimit, bytes calldata data) external payable {
        IPortal(portal).depositTransaction{value: msg.value}(to, value, gasLimit, false, data);
    }
}
contract WithdrawalTarget {
    address public lastCaller;
    address public lastL2Sender;
    uint256 public lastValue;
    bytes public lastData;
    uint256 public calls;
    function fail() external payable { revert("WithdrawalTarget: fail"); }
    fallback() external payable {
        lastCaller = msg.sender;
        lastL2Sender = IPortal(msg.sender).l2Sender();
        lastValue = msg.value;
        lastData = msg.data;
        calls++;
    }
}
contract Reenterer {
    bytes public payload;
    bool public lastOk;
    bytes public lastReturn;
    function setPayload(bytes calldata p) external { payload = p; }
    fallback() external payable {
        (lastOk, lastReturn) = msg.sender.call(payload);
    }
}
contract StorageWriter {
    function set(bytes32 slot, bytes32 value) external { assembly { sstore(slot, value) } }
}
`;
function compileHarness() {
  const input = {
    language: "Solidity",
    sources: { "tests/js/Harness.sol": { content: HARNESS } },
    settings: {
      evmVersion: "prague",
      optimizer: { enabled: true, runs: 200 },
      outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
    },
  };
  const out = JSON.parse(
    solc.compile(JSON.stringify(input), {
      import: (p) => {
        const f = path.join(ROOT, path.posix.normalize(p));
        return f.startsWith(path.join(ROOT, "l1/contracts/")) && fs.existsSync(f)
          ? { contents: fs.readFileSync(f, "utf8") }
          : { error: `not found: ${p}` };
      },
    }),
  );
  const errors = (out.errors ?? []).filter((e) => e.severity === "error");
  if (errors.length) throw new Error(errors.map((e) => e.formattedMessage).join("\n"));
  const r = {};
  for (const [n, c] of Object.entries(out.contracts["tests/js/Harness.sol"])) {
    r[n] = { abi: c.abi, bytecode: `0x${c.evm.bytecode.object}` };
  }
  return r;
}

// Every custom error of every contract, so a revert bubbling up from a callee (oracle under portal,
// library under harness) decodes too.
let ERRORS = [];
function addErrors(abi) {
  const seen = new Set(ERRORS.map((e) => `${e.name}(${e.inputs.map((i) => i.type)})`));
  for (const e of abi.filter((x) => x.type === "error")) {
    const sig = `${e.name}(${e.inputs.map((i) => i.type)})`;
    if (!seen.has(sig)) {
      seen.add(sig);
      ERRORS.push(e);
    }
  }
}
for (const a of Object.values(A)) addErrors(a.abi);

// ---------------------------------------------------------------- accounts and clients ---------------

const KEYS = [
  "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
  "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
  "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
  "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
  "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
];
const [owner, guardian, user, batcher, deployer] = KEYS.map((k) => privateKeyToAccount(k));
const validatorKey = (i) => keccak256(toHex(`rtchain test validator ${i}`));
const validator = (i) => privateKeyToAccount(validatorKey(i));
const consensusKey = (i) => keccak256(toHex(`rtchain test consensus key ${i}`));
const DEPOSITOR = "0xDeaDDEaDDeAdDeAdDEAdDEaddeAddEAdDEAd0001";
const DEAD = "0x000000000000000000000000000000000000dEaD";
const CHAIN_ID = 31337;

const chain = defineChain({
  id: CHAIN_ID,
  name: "anvil",
  nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
  rpcUrls: { default: { http: [RPC] } },
});
const pub = createPublicClient({ chain, transport: http(RPC), pollingInterval: 10 });
const wallet = createWalletClient({ chain, transport: http(RPC), pollingInterval: 10 });

const gasReport = [];

async function sendTx(account, req, label = "tx") {
  let hash;
  try {
    hash = await wallet.sendTransaction({ account, chain, ...req });
  } catch (e) {
    // Say which custom error the refused transaction hit, not just "execution reverted".
    let why = "";
    try {
      const r = await revertOf(account, req);
      why = ` (${r.name}${r.args.length ? `(${r.args.join(", ")})` : ""})`;
    } catch {}
    throw new Error(`${label} refused${why}: ${e.shortMessage ?? e.message}`);
  }
  const receipt = await waitReceipt(hash);
  assert(receipt.status === "success", `${label} reverted (gas ${receipt.gasUsed})`);
  return receipt;
}
// Polls the node directly: anvil mines on arrival, so the receipt is there within milliseconds, and
// viem's block-number cache cannot make this wait on a stale head.
async function waitReceipt(hash) {
  const deadline = performance.now() + 20_000;
  while (performance.now() < deadline) {
    if (await rpc("eth_getTransactionReceipt", [hash])) return pub.getTransactionReceipt({ hash });
    await new Promise((r) => setTimeout(r, 5));
  }
  const tx = await rpc("eth_getTransactionByHash", [hash]);
  const pool = await rpc("txpool_status").catch(() => null);
  throw new Error(`no receipt for ${hash} after 20 s (tx ${JSON.stringify(tx)?.slice(0, 300)}, txpool ${JSON.stringify(pool)})`);
}
const headNumber = async () => BigInt(await rpc("eth_blockNumber"));
async function deploy(art, args = [], account = owner) {
  const receipt = await sendTx(account, { data: encodeDeployData({ abi: art.abi, bytecode: art.bytecode, args }) }, "deploy");
  return { address: receipt.contractAddress, abi: art.abi, receipt };
}
const read = (c, functionName, args = []) => pub.readContract({ address: c.address, abi: c.abi, functionName, args });
const write = (c, functionName, args = [], { from = owner, value, gas } = {}) =>
  sendTx(from, { to: c.address, data: encodeFunctionData({ abi: c.abi, functionName, args }), value, gas }, functionName);
const events = (c, receipt, eventName) => parseEventLogs({ abi: c.abi, logs: receipt.logs, eventName });

async function revertOf(account, { to, data, value, gas }) {
  const from = typeof account === "string" ? account : account.address;
  const call = { from, to, data };
  if (value) call.value = toHex(value);
  if (gas) call.gas = toHex(gas);
  try {
    await rpc("eth_call", [call, "latest"]);
  } catch (e) {
    const d = e.rpc?.data;
    if (typeof d !== "string") throw new Error(`refused without revert data: ${e.message}`);
    if (d === "0x") return { name: "(empty revert)", args: [] };
    try {
      const r = decodeErrorResult({ abi: ERRORS, data: d });
      return { name: r.errorName, args: r.args ?? [] };
    } catch {
      return { name: `(undecoded ${d.slice(0, 10)})`, args: [] };
    }
  }
  throw new Error("call did not revert");
}
async function expectRevert(c, functionName, args, errorName, { from = owner, value, gas, errorArgs } = {}) {
  const r = await revertOf(from, { to: c.address, data: encodeFunctionData({ abi: c.abi, functionName, args }), value, gas });
  eq(r.name, errorName, `${functionName} refusal`);
  if (errorArgs) eq(r.args, errorArgs, `${errorName} arguments`);
  return `${errorName}${r.args.length ? `(${r.args.map((x) => (typeof x === "string" && x.length > 20 ? `${x.slice(0, 10)}…` : x)).join(", ")})` : ""}`;
}
async function increaseTime(seconds) {
  await rpc("evm_increaseTime", [seconds]);
  await rpc("evm_mine", []);
}
const latestTimestamp = async () => (await pub.getBlock()).timestamp;

// ---------------------------------------------------------------- output signing ----------------------

async function signatures(oracle, l2Block, outputRoot, indices) {
  const digest = await read(oracle, "outputDigest", [l2Block, outputRoot]);
  const signed = await Promise.all(
    indices.map(async (i) => ({ address: validator(i).address, sig: await sign({ hash: digest, privateKey: validatorKey(i), to: "hex" }) })),
  );
  return signed.sort((a, b) => (BigInt(a.address) < BigInt(b.address) ? -1 : 1)).map((s) => s.sig);
}
// The validator indices sorted by settlement address (the order signatures must come in).
const byAddress = (indices) => [...indices].sort((a, b) => (BigInt(validator(a).address) < BigInt(validator(b).address) ? -1 : 1));
const outputRootOf = (stateRoot, storageRoot, blockHash) =>
  keccak256(encodeAbiParameters([{ type: "bytes32" }, { type: "bytes32" }, { type: "bytes32" }, { type: "bytes32" }], [zeroHash, stateRoot, storageRoot, blockHash]));

// ---------------------------------------------------------------- Merkle-Patricia trie (test side) ---

const nibblesOf = (hex) => [...hex.slice(2)].map((c) => parseInt(c, 16));
function hexPrefix(nibs, leaf) {
  const flag = (leaf ? 2 : 0) + (nibs.length % 2);
  const all = nibs.length % 2 ? [flag, ...nibs] : [flag, 0, ...nibs];
  return `0x${all.map((n) => n.toString(16)).join("")}`;
}
// Builds a trie over entries { nib: number[], value: hex } sharing nib[0, depth): returns a node
// { kind, struct (RLP structure), enc (hex), ... } whose children are referenced inline when their
// encoding is under 32 bytes, by hash otherwise (the Ethereum rule).
function buildTrie(entries, depth = 0) {
  const mk = (node) => ({ ...node, enc: toRlp(node.struct) });
  const ref = (child) => (size(child.enc) < 32 ? child.struct : keccak256(child.enc));
  if (entries.length === 1) {
    const e = entries[0];
    return mk({ kind: "leaf", struct: [hexPrefix(e.nib.slice(depth), true), e.value] });
  }
  const minLen = Math.min(...entries.map((e) => e.nib.length));
  let common = 0;
  while (depth + common < minLen && entries.every((e) => e.nib[depth + common] === entries[0].nib[depth + common])) common++;
  if (common > 0) {
    const child = buildTrie(entries, depth + common);
    return mk({ kind: "ext", pathLen: common, child, struct: [hexPrefix(entries[0].nib.slice(depth, depth + common), false), ref(child)] });
  }
  const children = new Array(16).fill(null);
  let value = "0x";
  const groups = Array.from({ length: 16 }, () => []);
  for (const e of entries) {
    if (e.nib.length === depth) value = e.value;
    else groups[e.nib[depth]].push(e);
  }
  groups.forEach((g, n) => {
    if (g.length) children[n] = buildTrie(g, depth + 1);
  });
  return mk({ kind: "branch", children, struct: [...children.map((c) => (c ? ref(c) : "0x")), value] });
}
function trieProof(root, nib) {
  const proof = [root.enc];
  let node = root;
  let d = 0;
  for (;;) {
    let child;
    if (node.kind === "leaf") return proof;
    if (node.kind === "ext") {
      d += node.pathLen;
      child = node.child;
    } else {
      if (d === nib.length) return proof;
      child = node.children[nib[d]];
      d++;
      if (!child) return proof;
    }
    if (size(child.enc) >= 32) proof.push(child.enc);
    node = child;
  }
}
function countInline(node, isRoot = true) {
  const here = !isRoot && size(node.enc) < 32 ? 1 : 0;
  if (node.kind === "leaf") return here;
  if (node.kind === "ext") return here + countInline(node.child, false);
  return here + node.children.reduce((s, c) => s + (c ? countInline(c, false) : 0), 0);
}
// Minimal big-endian bytes of an integer, as the storage trie stores it (RLP'd).
const minimalBytes = (v) => (v === 0n ? "0x" : numberToHex(v, { size: Math.ceil(v.toString(16).length / 2) }));
const storageKeyOf = (withdrawalHash) => keccak256(encodeAbiParameters([{ type: "bytes32" }, { type: "uint256" }], [withdrawalHash, 0n]));

// Deterministic pseudo-random bytes (xorshift32) so failures reproduce.
function prng(seed) {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}
function randomHex(n, seed) {
  const r = prng(seed);
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = r() & 0xff;
  return `0x${b.toString("hex")}`;
}

// ---------------------------------------------------------------- blob transactions via cast ---------

function castMktx(args) {
  return new Promise((resolve, reject) => {
    const child = execFile(CAST, ["mktx", ...args], { maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      children.delete(child);
      if (err) reject(new Error(`cast mktx: ${stderr || err.message}`));
      else resolve(stdout.trim());
    });
    children.add(child);
  });
}
// A type-3 transaction with its sidecar, fully offline (nonce, fees and gas given), so it can be built
// in the background while other checks run: c-kzg in cast takes seconds per transaction here.
async function blobBatchTx({ inbox, nonce, first, last, parent, dataBytes, seed }) {
  const file = path.join(os.tmpdir(), `rtchain-l1-blob-${process.pid}-${nonce}.bin`);
  tempFiles.add(file);
  fs.writeFileSync(file, Buffer.from(randomHex(dataBytes, seed).slice(2), "hex"));
  try {
    const raw = await castMktx([
      "--blob", "--eip4844", "--path", file,
      "--private-key", KEYS[3], "--chain", String(CHAIN_ID), "--nonce", String(nonce),
      "--gas-limit", "400000", "--gas-price", "20000000000", "--priority-gas-price", "1000000000", "--blob-gas-price", "1000",
      inbox, "submitBatch(uint64,uint64,bytes32)", String(first), String(last), parent,
    ]);
    // 0x03 || rlp([tx, blobs, commitments, proofs]); tx[10] is blob_versioned_hashes.
    assert(raw.startsWith("0x03"), `cast produced ${raw.slice(0, 6)}…, not a type-3 transaction`);
    const [body, blobs] = fromRlp(`0x${raw.slice(4)}`);
    return { raw, versionedHashes: body[10], blobCount: blobs.length };
  } finally {
    fs.rmSync(file, { force: true });
  }
}
const batchHashOf = (parent, first, last, dataHashes) =>
  keccak256(
    encodeAbiParameters([{ type: "bytes32" }, { type: "uint64" }, { type: "uint64" }, { type: "bytes32[]" }], [parent, first, last, dataHashes]),
  );

// =====================================================================================================

await check("anvil up", async () => {
  for (let i = 0; i < 100; i++) {
    try {
      const id = await rpc("eth_chainId");
      eq(Number(id), CHAIN_ID, "chain id");
      return `${RPC}, ${await rpc("web3_clientVersion")}`;
    } catch (e) {
      if (anvil.exitCode !== null) throw new Error(`anvil exited ${anvil.exitCode}: ${anvilLog}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  throw new Error(`anvil did not answer: ${anvilLog}`);
});

// The BatchInbox comes first, from its own deployer, so its address is known while the blob
// transactions are built in the background.
let inbox;
let blobPlan;
await check("deploy BatchInbox, start building blob transactions in the background", async () => {
  inbox = await deploy(A.BatchInbox, [owner.address, batcher.address, 1n], deployer);
  eq(inbox.address, getContractAddress({ from: deployer.address, nonce: 0n }), "inbox address");
  const one = blobBatchTx({ inbox: inbox.address, nonce: 0, first: 1n, last: 10n, parent: zeroHash, dataBytes: 1000, seed: 11 });
  const six = one.then((b) =>
    blobBatchTx({
      inbox: inbox.address,
      nonce: 1,
      first: 11n,
      last: 40n,
      parent: batchHashOf(zeroHash, 1n, 10n, b.versionedHashes),
      // SimpleCoder packs 31 bytes per field element, 4096 per blob: 5.5 blobs of data need 6.
      dataBytes: Math.floor(5.5 * 4096 * 31),
      seed: 12,
    }),
  );
  blobPlan = { one, six };
  one.catch(() => {});
  six.catch(() => {});
  return inbox.address;
});

let H;
await check("compile test helpers (solc-js, in memory)", async () => {
  H = compileHarness();
  for (const h of Object.values(H)) addErrors(h.abi);
  return Object.keys(H).join(", ");
});

// ---------------------------------------------------------------- ValidatorRegistry ------------------

let registry;
await check("registry: constructor sets epoch 0 (n = 4), owner, epoch length", async () => {
  registry = await deploy(A.ValidatorRegistry, [owner.address, 10n, [0, 1, 2, 3].map(consensusKey), [0, 1, 2, 3].map((i) => validator(i).address)]);
  const ev = events(registry, registry.receipt, "ValidatorSetScheduled");
  eq(ev.length, 1, "constructor events");
  eq(ev[0].args.epoch, 0n, "event epoch");
  eq(ev[0].args.settlementKeys, [0, 1, 2, 3].map((i) => validator(i).address), "event settlement keys");
  eq(ev[0].args.consensusKeys, [0, 1, 2, 3].map(consensusKey), "event consensus keys");
  eq(await read(registry, "owner"), owner.address, "owner");
  eq(await read(registry, "epochLength"), 10n, "epochLength");
  eq(await read(registry, "setCount"), 1n, "setCount");
  eq(await read(registry, "quorumAt", [0n]), 3n, "quorum n=4");
  return `gas ${registry.receipt.gasUsed}`;
});

await check("registry: schedule n = 7 at epoch 3 and n = 1 at epoch 5", async () => {
  const r1 = await write(registry, "scheduleValidators", [3n, [10, 11, 12, 13, 14, 15, 16].map(consensusKey), [10, 11, 12, 13, 14, 15, 16].map((i) => validator(i).address)]);
  const ev = events(registry, r1, "ValidatorSetScheduled");
  eq([ev[0].args.epoch, ev[0].args.settlementKeys.length], [3n, 7], "event");
  await write(registry, "scheduleValidators", [5n, [consensusKey(20)], [validator(20).address]]);
  eq(await read(registry, "setCount"), 3n, "setCount");
  return `gas (7 validators) ${r1.gasUsed}`;
});

await check("registry: validatorsAt / quorumAt / isValidatorAt across epochs (n = 4, 7, 1)", async () => {
  const cases = [
    [0n, 0n, 4, 3n],
    [29n, 0n, 4, 3n],
    [30n, 3n, 7, 5n],
    [49n, 3n, 7, 5n],
    [50n, 5n, 1, 1n],
    [18446744073709551615n, 5n, 1, 1n],
  ];
  for (const [block, epoch, n, quorum] of cases) {
    const [e, ck, sk] = await read(registry, "validatorsAt", [block]);
    eq([e, ck.length, sk.length], [epoch, n, n], `validatorsAt(${block})`);
    eq(await read(registry, "quorumAt", [block]), quorum, `quorumAt(${block})`);
  }
  const [, ck7, sk7] = await read(registry, "validatorsAt", [35n]);
  eq(sk7, [10, 11, 12, 13, 14, 15, 16].map((i) => validator(i).address), "n=7 settlement keys");
  eq(ck7, [10, 11, 12, 13, 14, 15, 16].map(consensusKey), "n=7 consensus keys");
  eq(await read(registry, "isValidatorAt", [29n, validator(0).address]), true, "v0 in epoch 2");
  eq(await read(registry, "isValidatorAt", [30n, validator(0).address]), false, "v0 not in epoch 3");
  eq(await read(registry, "isValidatorAt", [30n, validator(16).address]), true, "v16 in epoch 3");
  eq(await read(registry, "isValidatorAt", [50n, validator(16).address]), false, "v16 not in epoch 5");
  eq(await read(registry, "isValidatorAt", [50n, validator(20).address]), true, "v20 in epoch 5");
  eq(await read(registry, "isValidatorAt", [50n, zeroAddress]), false, "zero address");
  return "quorum 3 / 5 / 1";
});

await check("registry: quorum formula n - (n-1)/3 for n = 1..10", async () => {
  const got = [];
  for (let n = 1; n <= 10; n++) {
    const idx = Array.from({ length: n }, (_, i) => 100 + i);
    const r = await deploy(A.ValidatorRegistry, [owner.address, 1n, idx.map(consensusKey), idx.map((i) => validator(i).address)]);
    got.push(Number(await read(r, "quorumAt", [0n])));
  }
  eq(got, [1, 2, 3, 3, 4, 5, 5, 6, 7, 7], "quorums");
  return got.join(" ");
});

await check("registry: refusals", async () => {
  const keys = (a) => [a.map(consensusKey), a.map((i) => validator(i).address)];
  const out = [];
  out.push(await expectRevert(registry, "scheduleValidators", [6n, ...keys([1])], "NotOwner", { from: user }));
  out.push(await expectRevert(registry, "scheduleValidators", [5n, ...keys([1])], "EpochNotIncreasing", { errorArgs: [5n, 5n] }));
  out.push(await expectRevert(registry, "scheduleValidators", [4n, ...keys([1])], "EpochNotIncreasing"));
  out.push(await expectRevert(registry, "scheduleValidators", [6n, [consensusKey(1)], []], "KeyCountMismatch"));
  out.push(await expectRevert(registry, "scheduleValidators", [6n, [], []], "ValidatorCountOutOfRange"));
  const many = Array.from({ length: 129 }, (_, i) => 200 + i);
  out.push(await expectRevert(registry, "scheduleValidators", [6n, ...keys(many)], "ValidatorCountOutOfRange", { errorArgs: [129n, 128n] }));
  out.push(await expectRevert(registry, "scheduleValidators", [6n, keys([1, 2])[0], [validator(1).address, zeroAddress]], "ZeroSettlementKey", { errorArgs: [1n] }));
  out.push(await expectRevert(registry, "scheduleValidators", [6n, keys([1, 2])[0], [validator(1).address, validator(1).address]], "DuplicateSettlementKey"));
  out.push(await expectRevert(registry, "scheduleValidators", [6n, [consensusKey(1), zeroHash], keys([1, 2])[1]], "ZeroConsensusKey", { errorArgs: [1n] }));
  out.push(await expectRevert(registry, "scheduleValidators", [6n, [consensusKey(1), consensusKey(1)], keys([1, 2])[1]], "DuplicateConsensusKey"));
  out.push(await expectRevert(registry, "scheduleValidators", [2n ** 63n, ...keys([1])], "EpochStartOverflows"));
  out.push(await expectRevert(registry, "transferOwnership", [zeroAddress], "ZeroOwner"));
  out.push(await expectRevert(registry, "transferOwnership", [user.address], "NotOwner", { from: user }));
  return out.join(", ");
});

await check("registry: 128 validators accepted (the bound), ownership transfer", async () => {
  const r = await deploy(A.ValidatorRegistry, [owner.address, 1n, [consensusKey(1)], [validator(1).address]]);
  const idx = Array.from({ length: 128 }, (_, i) => 300 + i);
  const rc = await write(r, "scheduleValidators", [1n, idx.map(consensusKey), idx.map((i) => validator(i).address)]);
  eq(await read(r, "quorumAt", [1n]), 86n, "quorum 128");
  const t = await write(r, "transferOwnership", [user.address]);
  eq(events(r, t, "OwnershipTransferred")[0].args, { previousOwner: owner.address, newOwner: user.address }, "event");
  eq(await read(r, "owner"), user.address, "new owner");
  await expectRevert(r, "scheduleValidators", [2n, [consensusKey(1)], [validator(1).address]], "NotOwner", { from: owner });
  await write(r, "scheduleValidators", [2n, [consensusKey(1)], [validator(1).address]], { from: user });
  return `128-validator schedule gas ${rc.gasUsed}`;
});

// ---------------------------------------------------------------- OutputOracle -----------------------

// Registry of the oracle tests: 4 validators (0..3) from epoch 0, 7 (10..16) from epoch 5 = block 50.
let oreg;
let oracle;
let verifier;
const L2_CHAIN_ID = 4242n;
const root = (i) => keccak256(toHex(`output root ${i}`));
await check("oracle: deploy (interval 10, finalization 1000 s) and digest formula", async () => {
  oreg = await deploy(A.ValidatorRegistry, [owner.address, 10n, [0, 1, 2, 3].map(consensusKey), [0, 1, 2, 3].map((i) => validator(i).address)]);
  await write(oreg, "scheduleValidators", [5n, [10, 11, 12, 13, 14, 15, 16].map(consensusKey), [10, 11, 12, 13, 14, 15, 16].map((i) => validator(i).address)]);
  oracle = await deploy(A.OutputOracle, [oreg.address, guardian.address, 10n, 1000n, L2_CHAIN_ID, 0n]);
  eq(await read(oracle, "registry"), oreg.address, "registry");
  eq(await read(oracle, "guardian"), guardian.address, "guardian");
  eq(
    [await read(oracle, "submissionInterval"), await read(oracle, "finalizationPeriodSeconds"), await read(oracle, "l2ChainId"), await read(oracle, "startingBlockNumber")],
    [10n, 1000n, L2_CHAIN_ID, 0n],
    "parameters",
  );
  eq([await read(oracle, "proofVerifier"), await read(oracle, "paused")], [zeroAddress, false], "verifier, paused");
  eq([await read(oracle, "nextBlockNumber"), await read(oracle, "latestBlockNumber"), await read(oracle, "nextOutputIndex")], [10n, 0n, 0n], "empty oracle");
  await expectRevert(oracle, "latestOutputIndex", [], "NoOutputs");
  await expectRevert(oracle, "getL2Output", [0n], "OutputIndexOutOfRange");
  await expectRevert(oracle, "getL2OutputIndexAfter", [0n], "NoOutputAtOrAfter");
  const want = keccak256(
    encodeAbiParameters(
      [{ type: "bytes32" }, { type: "uint256" }, { type: "address" }, { type: "uint64" }, { type: "uint64" }, { type: "bytes32" }],
      [keccak256(toHex("rtchain.OutputOracle.v1")), BigInt(CHAIN_ID), oracle.address, L2_CHAIN_ID, 10n, root(1)],
    ),
  );
  eq(await read(oracle, "outputDigest", [10n, root(1)]), want, "outputDigest");
  const sig = await sign({ hash: want, privateKey: validatorKey(0), to: "hex" });
  assert(size(sig) === 65 && ["1b", "1c"].includes(sig.slice(-2)), `viem signature is r||s||v with v 27/28: ${sig.slice(-2)}`);
  return "digest matches keccak256(abi.encode(typehash, chainid, oracle, l2ChainId, block, root))";
});

await check("oracle: output accepted with 4 validators' signatures", async () => {
  const sigs = await signatures(oracle, 10n, root(1), [0, 1, 2, 3]);
  const r = await write(oracle, "proposeOutput", [root(1), 10n, sigs], { from: user });
  gasReport.push(["proposeOutput (4 signatures)", r.gasUsed]);
  const ev = events(oracle, r, "OutputProposed")[0].args;
  const block = await pub.getBlock({ blockNumber: r.blockNumber });
  eq(ev, { outputRoot: root(1), l2OutputIndex: 0n, l2BlockNumber: 10n, l1Timestamp: block.timestamp }, "OutputProposed");
  eq(await read(oracle, "getL2Output", [0n]), { outputRoot: root(1), timestamp: block.timestamp, l2BlockNumber: 10n }, "stored output");
  eq([await read(oracle, "nextBlockNumber"), await read(oracle, "latestBlockNumber"), await read(oracle, "nextOutputIndex"), await read(oracle, "latestOutputIndex")], [20n, 10n, 1n, 0n], "indices");
  eq(await read(oracle, "isOutputFinalized", [0n]), false, "fresh output not finalized");
  return `gas ${r.gasUsed}`;
});

await check("oracle: output accepted with exactly a quorum (3 of 4)", async () => {
  const r = await write(oracle, "proposeOutput", [root(2), 20n, await signatures(oracle, 20n, root(2), [1, 2, 3])]);
  return `gas ${r.gasUsed}`;
});

await check("oracle: refused signature sets", async () => {
  const digest = await read(oracle, "outputDigest", [30n, root(3)]);
  const sigOf = (i) => sign({ hash: digest, privateKey: validatorKey(i), to: "hex" });
  const [a, b, c] = byAddress([0, 1, 2, 3]);
  const S = async (list) => Promise.all(list.map(sigOf));
  const out = [];
  out.push(await expectRevert(oracle, "proposeOutput", [root(3), 30n, await S([a, b])], "InsufficientSignatures", { errorArgs: [2n, 3n] }));
  out.push(await expectRevert(oracle, "proposeOutput", [root(3), 30n, []], "InsufficientSignatures"));
  out.push(await expectRevert(oracle, "proposeOutput", [root(3), 30n, await S([a, b, b])], "DuplicateSigner"));
  out.push(await expectRevert(oracle, "proposeOutput", [root(3), 30n, await S([b, a, c])], "SignersNotSorted"));
  // An outsider that sorts between validators, so only membership can refuse it.
  let outsider = 1000;
  while (!(BigInt(validator(outsider).address) > BigInt(validator(a).address))) outsider++;
  const withOutsider = [a, b, c, outsider].sort((x, y) => (BigInt(validator(x).address) < BigInt(validator(y).address) ? -1 : 1));
  out.push(await expectRevert(oracle, "proposeOutput", [root(3), 30n, await S(withOutsider)], "NotValidator"));
  // Signatures of the right validators over another output.
  const wrong = await signatures(oracle, 30n, root(4), [0, 1, 2]);
  const rw = await revertOf(owner, { to: oracle.address, data: encodeFunctionData({ abi: oracle.abi, functionName: "proposeOutput", args: [root(3), 30n, wrong] }) });
  assert(["NotValidator", "SignersNotSorted", "DuplicateSigner"].includes(rw.name), `signatures over another root: ${rw.name}`);
  out.push(`other root → ${rw.name}`);
  // Malleability: (r, n - s, v ^ 1) recovers the same signer (EIP-2 forbids the high s).
  const N = 0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141n;
  const sa = await sigOf(a);
  const s = BigInt(`0x${sa.slice(66, 130)}`);
  const v = parseInt(sa.slice(130), 16);
  const malleable = concat([sa.slice(0, 66), pad(toHex(N - s), { size: 32 }), toHex(v === 27 ? 28 : 27)]);
  out.push(await expectRevert(oracle, "proposeOutput", [root(3), 30n, [malleable, ...(await S([b, c]))]], "MalleableSignature", { errorArgs: [0n] }));
  // Garbage: wrong length, bad v, unrecoverable (r = 0).
  out.push(await expectRevert(oracle, "proposeOutput", [root(3), 30n, [...(await S([a, b])), sa.slice(0, 130)]], "BadSignatureLength", { errorArgs: [2n, 64n] }));
  out.push(await expectRevert(oracle, "proposeOutput", [root(3), 30n, [...(await S([a, b])), `${sa}00`]], "BadSignatureLength"));
  out.push(await expectRevert(oracle, "proposeOutput", [root(3), 30n, [`${sa.slice(0, 130)}1d`, ...(await S([b, c]))]], "BadSignatureV", { errorArgs: [0n, 29] }));
  out.push(await expectRevert(oracle, "proposeOutput", [root(3), 30n, [`${sa.slice(0, 130)}01`, ...(await S([b, c]))]], "BadSignatureV"));
  const zeroR = concat([zeroHash, pad("0x01", { size: 32 }), "0x1b"]);
  out.push(await expectRevert(oracle, "proposeOutput", [root(3), 30n, [zeroR, ...(await S([b, c]))]], "UnrecoverableSignature", { errorArgs: [0n] }));
  // Random r with a low s: recovers to some unknown key, or to nothing when r is not on the curve.
  const junk = concat([keccak256(toHex("junk r")), pad("0x0123", { size: 32 }), "0x1b"]);
  const rj = await revertOf(owner, { to: oracle.address, data: encodeFunctionData({ abi: oracle.abi, functionName: "proposeOutput", args: [root(3), 30n, [junk, ...(await S([b, c]))]] }) });
  assert(["NotValidator", "UnrecoverableSignature"].includes(rj.name), `junk signature: ${rj.name}`);
  out.push(`junk → ${rj.name}`);
  const tooMany = Array.from({ length: 129 }, () => sa);
  out.push(await expectRevert(oracle, "proposeOutput", [root(3), 30n, tooMany], "TooManySignatures", { errorArgs: [129n, 128n] }));
  // Still proposable with the right set: nothing above changed state.
  eq(await read(oracle, "nextOutputIndex"), 2n, "no output added by refusals");
  return out.join(", ");
});

await check("oracle: wrong block number, zero root", async () => {
  const sigs = (b, r) => signatures(oracle, b, r, [0, 1, 2, 3]);
  const out = [];
  out.push(await expectRevert(oracle, "proposeOutput", [root(3), 31n, await sigs(31n, root(3))], "WrongBlockNumber", { errorArgs: [30n, 31n] }));
  out.push(await expectRevert(oracle, "proposeOutput", [root(3), 20n, await sigs(20n, root(3))], "WrongBlockNumber", { errorArgs: [30n, 20n] }));
  out.push(await expectRevert(oracle, "proposeOutput", [zeroHash, 30n, await sigs(30n, zeroHash)], "ZeroOutputRoot"));
  return out.join(", ");
});

await check("oracle: pause / unpause by the guardian only", async () => {
  const sigs = await signatures(oracle, 30n, root(3), [0, 1, 2, 3]);
  const out = [await expectRevert(oracle, "pause", [], "NotGuardian", { from: owner })];
  const p = await write(oracle, "pause", [], { from: guardian });
  eq(events(oracle, p, "Paused")[0].args.account, guardian.address, "Paused event");
  eq(await read(oracle, "paused"), true, "paused");
  out.push(await expectRevert(oracle, "proposeOutput", [root(3), 30n, sigs], "OraclePaused"));
  out.push(await expectRevert(oracle, "unpause", [], "NotGuardian", { from: user }));
  const u = await write(oracle, "unpause", [], { from: guardian });
  eq(events(oracle, u, "Unpaused")[0].args.account, guardian.address, "Unpaused event");
  await write(oracle, "proposeOutput", [root(3), 30n, sigs]);
  return out.join(", ");
});

await check("oracle: proof verifier hook (false refuses, true accepts, zero disables)", async () => {
  verifier = await deploy(H.MockVerifier);
  const out = [await expectRevert(oracle, "setProofVerifier", [verifier.address], "NotGuardian", { from: owner })];
  const r = await write(oracle, "setProofVerifier", [verifier.address], { from: guardian });
  eq(events(oracle, r, "ProofVerifierSet")[0].args.verifier, verifier.address, "event");
  const sigs = await signatures(oracle, 40n, root(4), [0, 1, 2, 3]);
  out.push(await expectRevert(oracle, "proposeOutput", [root(4), 40n, sigs], "OutputNotVerified", { errorArgs: [verifier.address] }));
  await write(verifier, "setAnswer", [true]);
  await write(oracle, "proposeOutput", [root(4), 40n, sigs]);
  await write(verifier, "setAnswer", [false]);
  await write(oracle, "setProofVerifier", [zeroAddress], { from: guardian });
  eq(await read(oracle, "proofVerifier"), zeroAddress, "disabled");
  return out.join(", ");
});

await check("oracle: block 50 is in epoch 5, signed by the 7-validator set (quorum 5)", async () => {
  const out = [];
  out.push(await expectRevert(oracle, "proposeOutput", [root(5), 50n, await signatures(oracle, 50n, root(5), [0, 1, 2, 3])], "InsufficientSignatures", { errorArgs: [4n, 5n] }));
  out.push(await expectRevert(oracle, "proposeOutput", [root(5), 50n, await signatures(oracle, 50n, root(5), [0, 1, 2, 3, 10])], "NotValidator"));
  out.push(await expectRevert(oracle, "proposeOutput", [root(5), 50n, await signatures(oracle, 50n, root(5), [10, 11, 12, 13])], "InsufficientSignatures"));
  await write(oracle, "proposeOutput", [root(5), 50n, await signatures(oracle, 50n, root(5), [10, 11, 12, 13, 14])]);
  const r = await write(oracle, "proposeOutput", [root(6), 60n, await signatures(oracle, 60n, root(6), [10, 11, 12, 13, 14, 15, 16])]);
  return `${out.join(", ")}; 7 signatures gas ${r.gasUsed}`;
});

await check("oracle: getL2OutputIndexAfter (binary search) over blocks 10..60", async () => {
  const cases = [[0n, 0n], [1n, 0n], [10n, 0n], [11n, 1n], [20n, 1n], [35n, 3n], [50n, 4n], [59n, 5n], [60n, 5n]];
  for (const [block, index] of cases) eq(await read(oracle, "getL2OutputIndexAfter", [block]), index, `after(${block})`);
  return await expectRevert(oracle, "getL2OutputIndexAfter", [61n], "NoOutputAtOrAfter", { errorArgs: [61n] });
});

await check("oracle: guardian deletes an unfinalized output (and every later one)", async () => {
  const out = [await expectRevert(oracle, "deleteL2Outputs", [4n], "NotGuardian", { from: owner })];
  out.push(await expectRevert(oracle, "deleteL2Outputs", [6n], "OutputIndexOutOfRange", { from: guardian, errorArgs: [6n, 6n] }));
  const r = await write(oracle, "deleteL2Outputs", [4n], { from: guardian });
  eq(events(oracle, r, "OutputsDeleted")[0].args, { prevNextOutputIndex: 6n, newNextOutputIndex: 4n }, "OutputsDeleted");
  eq([await read(oracle, "nextOutputIndex"), await read(oracle, "latestBlockNumber"), await read(oracle, "nextBlockNumber")], [4n, 40n, 50n], "after delete");
  out.push(await expectRevert(oracle, "getL2Output", [4n], "OutputIndexOutOfRange"));
  // Index 4 is reused by the next proposal, fully overwritten.
  await write(oracle, "proposeOutput", [root(7), 50n, await signatures(oracle, 50n, root(7), [10, 11, 12, 13, 14])]);
  const o = await read(oracle, "getL2Output", [4n]);
  eq([o.outputRoot, o.l2BlockNumber], [root(7), 50n], "re-proposed output 4");
  return `gas ${r.gasUsed}; ${out.join(", ")}`;
});

await check("oracle: finalization after 1000 s; a finalized output cannot be deleted", async () => {
  const o = await read(oracle, "getL2Output", [4n]);
  await increaseTime(500);
  eq(await read(oracle, "isOutputFinalized", [4n]), false, "not finalized at +500 s");
  const out = [];
  await increaseTime(Number(o.timestamp + 1000n - (await latestTimestamp())));
  eq(await read(oracle, "isOutputFinalized", [4n]), true, "finalized at timestamp + 1000");
  out.push(await expectRevert(oracle, "deleteL2Outputs", [4n], "OutputAlreadyFinalized", { from: guardian, errorArgs: [4n] }));
  out.push(await expectRevert(oracle, "deleteL2Outputs", [0n], "OutputAlreadyFinalized", { from: guardian }));
  await write(oracle, "proposeOutput", [root(8), 60n, await signatures(oracle, 60n, root(8), [10, 11, 12, 13, 14])]);
  eq(await read(oracle, "isOutputFinalized", [5n]), false, "new output not finalized");
  await write(oracle, "deleteL2Outputs", [5n], { from: guardian });
  eq(await read(oracle, "nextOutputIndex"), 5n, "unfinalized output 5 deleted");
  return out.join(", ");
});

// ---------------------------------------------------------------- Portal: deposits -------------------

let wreg;
let woracle;
let portal;
const FINALIZATION = 600n;
await check("portal: deploy with its own oracle (interval 10, finalization 600 s)", async () => {
  wreg = await deploy(A.ValidatorRegistry, [owner.address, 100n, [0, 1, 2, 3].map(consensusKey), [0, 1, 2, 3].map((i) => validator(i).address)]);
  woracle = await deploy(A.OutputOracle, [wreg.address, guardian.address, 10n, FINALIZATION, L2_CHAIN_ID, 0n]);
  portal = await deploy(A.Portal, [woracle.address, guardian.address]);
  eq([await read(portal, "oracle"), await read(portal, "guardian"), await read(portal, "paused"), await read(portal, "l2Sender"), await read(portal, "depositCount")], [woracle.address, guardian.address, false, DEAD, 0n], "initial state");
  return portal.address;
});

const opaque = (mint, value, gasLimit, isCreation, data) =>
  encodePacked(["uint256", "uint256", "uint64", "bool", "bytes"], [mint, value, gasLimit, isCreation, data]);

await check("portal: EOA deposit, event fields and packing (funds the portal)", async () => {
  const data = "0xc0ffee";
  const r = await write(portal, "depositTransaction", [user.address, parseEther("1"), 100_000n, false, data], { from: user, value: parseEther("5") });
  const ev = events(portal, r, "TransactionDeposited");
  eq(ev.length, 1, "one event");
  eq(ev[0].args, { from: user.address, to: user.address, depositNonce: 0n, opaqueData: opaque(parseEther("5"), parseEther("1"), 100_000n, false, data) }, "event");
  eq(size(ev[0].args.opaqueData), 32 + 32 + 8 + 1 + 3, "opaque data length");
  eq(await read(portal, "depositCount"), 1n, "depositCount");
  eq(await pub.getBalance({ address: portal.address }), parseEther("5"), "portal balance");
  return `gas ${r.gasUsed}`;
});

await check("portal: contract sender is aliased (+0x1111…1111)", async () => {
  const caller = await deploy(H.DepositCaller);
  const r = await write(caller, "deposit", [portal.address, owner.address, 7n, 50_000n, "0x"], { value: 9n });
  const ev = events(portal, r, "TransactionDeposited")[0].args;
  const aliased = getAddress(numberToHex((BigInt(caller.address) + 0x1111000000000000000000000000000000001111n) % 2n ** 160n, { size: 20 }));
  eq(ev, { from: aliased, to: owner.address, depositNonce: 1n, opaqueData: opaque(9n, 7n, 50_000n, false, "0x") }, "event");
  assert(ev.from !== caller.address, "from must differ from the contract address");
  return `${caller.address} → ${aliased}`;
});

await check("portal: creation deposit, and deposit bounds", async () => {
  const r = await write(portal, "depositTransaction", [zeroAddress, 0n, 60_000n, true, "0x6000"], { from: owner });
  eq(events(portal, r, "TransactionDeposited")[0].args.opaqueData, opaque(0n, 0n, 60_000n, true, "0x6000"), "creation packing");
  const out = [];
  out.push(await expectRevert(portal, "depositTransaction", [user.address, 0n, 60_000n, true, "0x"], "CreationWithTarget", { errorArgs: [user.address] }));
  const data = randomHex(1000, 3);
  out.push(await expectRevert(portal, "depositTransaction", [user.address, 0n, 21_000n + 16_000n - 1n, false, data], "DepositGasLimitTooLow", { errorArgs: [36_999n, 37_000n] }));
  out.push(await expectRevert(portal, "depositTransaction", [user.address, 0n, 20_999n, false, "0x"], "DepositGasLimitTooLow"));
  await write(portal, "depositTransaction", [user.address, 0n, 37_000n, false, data]);
  out.push(await expectRevert(portal, "depositTransaction", [user.address, 0n, 30_000_001n, false, "0x"], "DepositGasLimitTooHigh", { errorArgs: [30_000_001n, 30_000_000n] }));
  await write(portal, "depositTransaction", [user.address, 0n, 30_000_000n, false, "0x"]);
  const big = randomHex(120_001, 4);
  out.push(await expectRevert(portal, "depositTransaction", [user.address, 0n, 29_000_000n, false, big], "DepositDataTooLarge", { errorArgs: [120_001n, 120_000n] }));
  const max = await write(portal, "depositTransaction", [user.address, 0n, 21_000n + 16n * 120_000n, false, big.slice(0, 2 + 240_000)]);
  eq(events(portal, max, "TransactionDeposited")[0].args.depositNonce, 5n, "nonce of the 6th deposit");
  eq(await read(portal, "depositCount"), 6n, "depositCount");
  // Plain ETH has no deposit to go with it.
  const plain = await revertOf(owner, { to: portal.address, data: "0x", value: 1n });
  eq(plain.name, "PlainTransferRefused", "plain ETH transfer");
  out.push(plain.name);
  return out.join(", ");
});

// ---------------------------------------------------------------- MerkleTrie -------------------------

let trie;
const trieGet = async (key, proof, rootHash) => {
  const data = encodeFunctionData({ abi: trie.abi, functionName: "get", args: [key, proof, rootHash] });
  try {
    const ret = await rpc("eth_call", [{ to: trie.address, data }, "latest"]);
    return { value: decodeFunctionResult({ abi: trie.abi, functionName: "get", data: ret }) };
  } catch (e) {
    const d = e.rpc?.data;
    if (typeof d !== "string") throw e;
    if (d === "0x") return { error: "(empty revert)" };
    try {
      return { error: decodeErrorResult({ abi: ERRORS, data: d }).errorName };
    } catch {
      return { error: `(undecoded ${d.slice(0, 10)})` };
    }
  }
};
const LIB_ERRORS = new Set(
  [...A.MerkleTrie.abi, ...A.RLPReader.abi].filter((x) => x.type === "error").map((x) => x.name),
);

await check("trie: test-side trie builder matches anvil's storage root and proofs", async () => {
  trie = await deploy(H.TrieHarness);
  const sw = await deploy(H.StorageWriter);
  const slots = [];
  for (let i = 0; i < 40; i++) {
    const slot = i < 20 ? pad(toHex(i), { size: 32 }) : keccak256(toHex(i));
    const value = i % 3 === 0 ? BigInt(i + 1) : BigInt(keccak256(toHex(`v${i}`)));
    slots.push({ slot, value });
    await write(sw, "set", [slot, pad(toHex(value), { size: 32 })]);
  }
  const proof = await rpc("eth_getProof", [sw.address, slots.map((s) => s.slot), "latest"]);
  const t = buildTrie(slots.map((s) => ({ nib: nibblesOf(keccak256(s.slot)), value: toRlp(minimalBytes(s.value)) })));
  eq(keccak256(t.enc), proof.storageHash, "storage root");
  for (let i = 0; i < slots.length; i++) {
    eq(trieProof(t, nibblesOf(keccak256(slots[i].slot))), proof.storageProof[i].proof, `proof of slot ${i}`);
    const got = await trieGet(keccak256(slots[i].slot), proof.storageProof[i].proof, proof.storageHash);
    eq(got, { value: toRlp(minimalBytes(slots[i].value)) }, `library value of slot ${i}`);
  }
  return `40 slots, root ${proof.storageHash.slice(0, 10)}…, every proof equal and verified`;
});

await check("trie: inline (< 32 byte) nodes, branch values, odd/even paths, absent keys", async () => {
  const entries = [
    ["0x01", "0x05"],
    ["0x02", "0x06"],
    ["0x0102", "0xaa"],
    ["0x0103", "0xbb"],
    ["0x010203", "0x0c"],
    ["0x1234", "0x77"],
    ["0x1235", "0x78"],
    ["0x12", "0x99"],
    ["0x20", randomHex(40, 9)],
    ["0x21", randomHex(40, 10)],
    ["0x300000", "0x01"],
    ["0x3000", "0x02"],
  ];
  const t = buildTrie(entries.map(([k, v]) => ({ nib: nibblesOf(k), value: v })));
  const inline = countInline(t);
  assert(inline >= 5, `expected several inline nodes, got ${inline}`);
  const rootHash = keccak256(t.enc);
  for (const [k, v] of entries) {
    const proof = trieProof(t, nibblesOf(k));
    eq(await trieGet(k, proof, rootHash), { value: v }, `get(${k})`);
  }
  const absent = [];
  for (const k of ["0x03", "0x0104", "0x01020304", "0x13", "0x1236", "0x30", "0x", "0x2100"]) {
    const r = await trieGet(k, trieProof(t, nibblesOf(k)), rootHash);
    eq(r, { error: "KeyNotInTrie" }, `absent ${k}`);
    absent.push(k);
  }
  // A proof for one key does not prove another.
  const r = await trieGet("0x20", trieProof(t, nibblesOf("0x21")), rootHash);
  assert(r.error, `proof of 0x21 proved 0x20: ${JSON.stringify(r)}`);
  return `${inline} inline nodes; ${entries.length} keys found; ${absent.length} absent keys refused; other key's proof → ${r.error}`;
});

await check("trie: malformed proofs revert with named errors", async () => {
  const one = async (node, key, want, extra = {}) => {
    const proof = extra.proof ?? [node];
    const r = await trieGet(key, proof, extra.root ?? keccak256(proof[0]));
    eq(r, { error: want }, `${want} case (${node?.slice?.(0, 16) ?? ""})`);
    return want;
  };
  const h = keccak256("0x1234");
  const out = [];
  out.push(await one("0xc3808080", "0x", "InvalidNodeItemCount"));
  out.push(await one(toRlp(Array(18).fill("0x")), "0x", "RLPTooManyItems"));
  out.push(await one("0x80", "0x", "RLPNotAList"));
  out.push(await one("0x05", "0x", "RLPNotAList"));
  out.push(await one("0xf8", "0x", "RLPOutOfBounds"));
  out.push(await one("0xc58080", "0x", "RLPOutOfBounds"));
  out.push(await one("0xc3b90100", "0x", "RLPOutOfBounds"));
  out.push(await one("0xc2808000", "0x", "RLPTrailingBytes"));
  out.push(await one("0xc3812005", "0x", "RLPNonCanonicalSingleByte"));
  out.push(await one("0xf8028080", "0x", "RLPNonCanonicalLength"));
  out.push(await one("0xf900c28080", "0x", "RLPNonCanonicalLength"));
  out.push(await one("0xc24005", "0x", "BadHexPrefix"));
  out.push(await one("0xc22105", "0x", "BadHexPrefix"));
  out.push(await one("0xc28005", "0x", "BadHexPrefix"));
  out.push(await one(toRlp([["0x20"], "0x05"]), "0x", "PathIsList"));
  out.push(await one(toRlp(["0x00", h]), "0x12", "EmptyExtensionPath"));
  out.push(await one(toRlp(["0x20", ["0x01"]]), "0x", "ValueIsList"));
  out.push(await one(toRlp(["0x20", "0x"]), "0x", "KeyNotInTrie"));
  const branch = (slot1) => toRlp([...Array(16).fill("0x").map((x, i) => (i === 1 ? slot1 : x)), "0x"]);
  out.push(await one(branch("0x0102030405"), "0x10", "InvalidChildReference"));
  out.push(await one(branch([hexPrefix([0, 0], true), randomHex(30, 1)]), "0x10", "InlineNodeTooLarge"));
  out.push(await one(branch(h), "0x10", "ProofMissingNodes"));
  out.push(await one(branch(h), "0x10", "NodeHashMismatch", { proof: [branch(h), "0xc0"] }));
  out.push(await one(branch(h), "0x", "KeyNotInTrie"));
  out.push(await one(branch(h), "0x20", "KeyNotInTrie"));
  const leaf = toRlp([hexPrefix(nibblesOf("0xabcd"), true), "0x01"]);
  out.push(await one(leaf, "0xabcd", "ProofHasUnusedNodes", { proof: [leaf, leaf] }));
  out.push(await one(leaf, "0xabcd", "RootHashMismatch", { root: keccak256("0x00") }));
  out.push(await one(leaf, "0xab", "KeyNotInTrie"));
  out.push(await one(leaf, "0xabcdef", "KeyNotInTrie"));
  out.push(await one(leaf, `0x${"ab".repeat(33)}`, "KeyTooLong"));
  out.push(await one(leaf, "0xabcd", "EmptyProof", { proof: [], root: zeroHash }));
  out.push(await one(leaf, "0xabcd", "ProofTooLong", { proof: Array(65).fill(leaf) }));
  eq(await trieGet("0xabcd", [leaf], keccak256(leaf)), { value: "0x01" }, "the well-formed leaf");
  return `${out.length} cases: ${[...new Set(out)].join(", ")}`;
});

await check("trie: 400 random corruptions of real nodes never panic or read out of bounds", async () => {
  const entries = Array.from({ length: 64 }, (_, i) => ({ nib: nibblesOf(keccak256(toHex(i))), value: "0x01" }));
  const t = buildTrie(entries);
  const single = buildTrie([entries[0]]);
  const rnd = prng(99);
  const outcomes = {};
  for (let i = 0; i < 400; i++) {
    const base = i % 2 ? t : single;
    const key = keccak256(toHex(0));
    const proof = trieProof(base, nibblesOf(key));
    // Corrupt the root (re-hashed, so the parser sees the damage): flip, truncate or extend.
    const bytes = Buffer.from(proof[0].slice(2), "hex");
    let mutated;
    const kind = rnd() % 3;
    if (kind === 0) {
      bytes[rnd() % bytes.length] ^= 1 << rnd() % 8;
      mutated = bytes;
    } else if (kind === 1) mutated = bytes.subarray(0, rnd() % bytes.length);
    else mutated = Buffer.concat([bytes, Buffer.from([rnd() & 0xff])]);
    proof[0] = `0x${mutated.toString("hex")}`;
    const r = await trieGet(key, proof, keccak256(proof[0]));
    const what = r.error ?? (r.value === "0x01" ? "value 0x01" : "other value");
    if (r.error) assert(LIB_ERRORS.has(r.error), `corruption ${i} reverted with ${r.error}, not a library error`);
    outcomes[what] = (outcomes[what] ?? 0) + 1;
  }
  return Object.entries(outcomes)
    .sort((a, b) => b[1] - a[1])
    .map(([k, v]) => `${k} ${v}`)
    .join(", ");
});

// ---------------------------------------------------------------- withdrawals end to end -------------

let passer;
let target;
let reenterer;
let deepOutput;
const W = {}; // name -> { tx, hash }
const wtx = (ev) => ({ nonce: ev.nonce, sender: ev.sender, target: ev.target, value: ev.value, gasLimit: ev.gasLimit, data: ev.data });
async function initiate(name, to, gasLimit, data, value) {
  const r = await write(passer, "initiateWithdrawal", [to, gasLimit, data], { from: user, value });
  const ev = events(passer, r, "MessagePassed")[0].args;
  W[name] = { tx: wtx(ev), hash: ev.withdrawalHash, block: r.blockNumber };
  return ev;
}
// The "L2" here is anvil itself: the output root commits to its state at `blockNumber`.
async function outputAt(blockNumber, keysOf) {
  const block = await pub.getBlock({ blockNumber });
  const proof = await rpc("eth_getProof", [passer.address, keysOf.map((h) => storageKeyOf(h)), numberToHex(blockNumber)]);
  proof.storageProof.forEach((p, i) => eq(p.value, "0x1", `slot of withdrawal ${keysOf[i].slice(0, 10)}… at block ${blockNumber}`));
  const orp = { version: zeroHash, stateRoot: block.stateRoot, messagePasserStorageRoot: proof.storageHash, latestBlockhash: block.hash };
  return { block, proof, orp, outputRoot: outputRootOf(block.stateRoot, proof.storageHash, block.hash) };
}
async function propose(o) {
  const next = await read(woracle, "nextBlockNumber");
  const index = await read(woracle, "nextOutputIndex");
  await write(woracle, "proposeOutput", [o.outputRoot, next, await signatures(woracle, next, o.outputRoot, [0, 1, 2, 3])]);
  return index;
}

await check("withdrawals: L2ToL1MessagePasser on anvil records withdrawals", async () => {
  passer = await deploy(A.L2ToL1MessagePasser);
  target = await deploy(H.WithdrawalTarget);
  const ev = await initiate("main", target.address, 200_000n, "0xdeadbeef0102", parseEther("1"));
  eq(ev.nonce, 0n, "first nonce");
  const want = keccak256(
    encodeAbiParameters(
      [{ type: "uint256" }, { type: "address" }, { type: "address" }, { type: "uint256" }, { type: "uint256" }, { type: "bytes" }],
      [0n, user.address, target.address, parseEther("1"), 200_000n, "0xdeadbeef0102"],
    ),
  );
  eq(ev.withdrawalHash, want, "withdrawal hash");
  eq(await read(portal, "hashWithdrawal", [W.main.tx]), want, "Portal.hashWithdrawal");
  eq(await read(passer, "sentMessages", [want]), true, "sentMessages");
  for (let i = 0; i < 10; i++) await initiate(`w${i}`, target.address, 150_000n, toHex(`withdrawal ${i}`), BigInt(i + 1) * 1000n);
  await initiate("failing", target.address, 100_000n, encodeFunctionData({ abi: H.WithdrawalTarget.abi, functionName: "fail" }), 5n);
  // receive(): a plain transfer withdraws to the sender with the default gas limit.
  const r = await sendTx(user, { to: passer.address, value: 3n }, "plain transfer");
  const pe = events(passer, r, "MessagePassed")[0].args;
  eq([pe.nonce, pe.sender, pe.target, pe.value, pe.gasLimit, pe.data], [12n, user.address, user.address, 3n, 100_000n, "0x"], "receive() withdrawal");
  eq(await read(passer, "messageNonce"), 13n, "messageNonce");
  eq(await pub.getBalance({ address: passer.address }), parseEther("1") + 55_000n + 5n + 3n, "ETH stays in the passer");
  const out = [await expectRevert(passer, "initiateWithdrawal", [user.address, 16_000_001n, "0x"], "GasLimitTooHigh")];
  out.push(await expectRevert(passer, "initiateWithdrawal", [user.address, 1n, randomHex(100_001, 5)], "DataTooLarge"));
  return `13 withdrawals, hash ${want.slice(0, 10)}…; ${out.join(", ")}`;
});

let out0; // the first output (later deleted)
await check("withdrawals: output root from anvil's header + eth_getProof, proposed with signatures", async () => {
  const head = await headNumber();
  out0 = await outputAt(head, [W.main.hash, W.w0.hash]);
  eq(out0.proof.storageProof[0].value, "0x1", "proven slot value");
  eq(await rpc("eth_getStorageAt", [passer.address, storageKeyOf(W.main.hash), numberToHex(head)]), pad("0x01", { size: 32 }), "slot");
  const index = await propose(out0);
  eq(index, 0n, "output index");
  return `block ${head}, ${out0.proof.storageProof[0].proof.length} proof nodes, root ${out0.outputRoot.slice(0, 10)}…`;
});

const proveArgs = (w, index, o, proof) => [w.tx, index, o.orp, proof];
await check("withdrawals: forged proofs and output proofs are refused", async () => {
  const p = out0.proof.storageProof[0].proof;
  const other = out0.proof.storageProof[1].proof;
  assert(p.length >= 2, `want a multi-node proof, got ${p.length}`);
  const flip = (hex, at) => {
    const b = Buffer.from(hex.slice(2), "hex");
    b[at] ^= 0x01;
    return `0x${b.toString("hex")}`;
  };
  const out = [];
  out.push(await expectRevert(portal, "proveWithdrawalTransaction", proveArgs(W.main, 0n, out0, [flip(p[0], 40), ...p.slice(1)]), "RootHashMismatch"));
  out.push(await expectRevert(portal, "proveWithdrawalTransaction", proveArgs(W.main, 0n, out0, [...p.slice(0, -1), flip(p.at(-1), p.at(-1).length / 2 - 3)]), "NodeHashMismatch"));
  out.push(await expectRevert(portal, "proveWithdrawalTransaction", proveArgs(W.main, 0n, out0, p.slice(0, -1)), "ProofMissingNodes"));
  out.push(await expectRevert(portal, "proveWithdrawalTransaction", proveArgs(W.main, 0n, out0, []), "EmptyProof"));
  out.push(await expectRevert(portal, "proveWithdrawalTransaction", proveArgs(W.main, 0n, out0, [...p, p.at(-1)]), "ProofHasUnusedNodes"));
  const otherKey = await revertOf(owner, { to: portal.address, data: encodeFunctionData({ abi: portal.abi, functionName: "proveWithdrawalTransaction", args: proveArgs(W.main, 0n, out0, other) }) });
  assert(LIB_ERRORS.has(otherKey.name), `proof for another key: ${otherKey.name}`);
  out.push(`another key's proof → ${otherKey.name}`);
  // The withdrawal with another value is another hash, which the passer never recorded.
  const changed = { ...W.main, tx: { ...W.main.tx, value: W.main.tx.value + 1n } };
  const wrongValue = await revertOf(owner, { to: portal.address, data: encodeFunctionData({ abi: portal.abi, functionName: "proveWithdrawalTransaction", args: proveArgs(changed, 0n, out0, p) }) });
  assert(LIB_ERRORS.has(wrongValue.name), `changed value: ${wrongValue.name}`);
  out.push(`changed withdrawal value → ${wrongValue.name}`);
  out.push(await expectRevert(portal, "proveWithdrawalTransaction", [W.main.tx, 0n, { ...out0.orp, stateRoot: keccak256("0x01") }, p], "OutputRootMismatch"));
  out.push(await expectRevert(portal, "proveWithdrawalTransaction", [W.main.tx, 0n, { ...out0.orp, messagePasserStorageRoot: keccak256("0x01") }, p], "OutputRootMismatch"));
  out.push(await expectRevert(portal, "proveWithdrawalTransaction", [W.main.tx, 0n, { ...out0.orp, version: pad("0x01", { size: 32 }) }, p], "UnsupportedOutputVersion"));
  out.push(await expectRevert(portal, "proveWithdrawalTransaction", [{ ...W.main.tx, target: portal.address }, 0n, out0.orp, p], "WithdrawalTargetIsPortal"));
  out.push(await expectRevert(portal, "proveWithdrawalTransaction", proveArgs(W.main, 1n, out0, p), "OutputNotPosted", { errorArgs: [1n, 1n] }));
  out.push(await expectRevert(portal, "finalizeWithdrawalTransaction", [W.main.tx], "WithdrawalNotProven"));
  return out.join(", ");
});

await check("withdrawals: a slot holding another value than 1 is not a sent message", async () => {
  // A contract whose sentMessages slot of this withdrawal holds 2: a valid storage proof of a wrong value.
  const sw = await deploy(H.StorageWriter);
  const r = await write(sw, "set", [storageKeyOf(W.w1.hash), pad("0x02", { size: 32 })]);
  const block = await pub.getBlock({ blockNumber: r.blockNumber });
  const proof = await rpc("eth_getProof", [sw.address, [storageKeyOf(W.w1.hash)], numberToHex(r.blockNumber)]);
  const o = { orp: { version: zeroHash, stateRoot: block.stateRoot, messagePasserStorageRoot: proof.storageHash, latestBlockhash: block.hash }, outputRoot: outputRootOf(block.stateRoot, proof.storageHash, block.hash) };
  const index = await propose(o);
  const out = await expectRevert(portal, "proveWithdrawalTransaction", proveArgs(W.w1, index, o, proof.storageProof[0].proof), "WithdrawalNotSent", { errorArgs: [W.w1.hash] });
  // Drop that output again so the flow below starts from output 0 only.
  await write(woracle, "deleteL2Outputs", [index], { from: guardian });
  return out;
});

await check("withdrawals: prove against output 0", async () => {
  const r = await write(portal, "proveWithdrawalTransaction", proveArgs(W.main, 0n, out0, out0.proof.storageProof[0].proof), { from: owner });
  gasReport.push([`proveWithdrawalTransaction (${out0.proof.storageProof[0].proof.length}-node proof)`, r.gasUsed]);
  eq(events(portal, r, "WithdrawalProven")[0].args, { withdrawalHash: W.main.hash, from: user.address, to: target.address }, "WithdrawalProven");
  const block = await pub.getBlock({ blockNumber: r.blockNumber });
  eq(await read(portal, "provenWithdrawals", [W.main.hash]), [out0.outputRoot, block.timestamp, 0n], "provenWithdrawals");
  const out = [await expectRevert(portal, "proveWithdrawalTransaction", proveArgs(W.main, 0n, out0, out0.proof.storageProof[0].proof), "WithdrawalAlreadyProven")];
  out.push(await expectRevert(portal, "finalizeWithdrawalTransaction", [W.main.tx], "ProofWindowNotElapsed", { errorArgs: [block.timestamp + FINALIZATION] }));
  return `gas ${r.gasUsed}; ${out.join(", ")}`;
});

let out1;
await check("withdrawals: deleted output: finalize refused, prove refused, re-prove against the new output", async () => {
  await write(woracle, "deleteL2Outputs", [0n], { from: guardian });
  const out = [await expectRevert(portal, "finalizeWithdrawalTransaction", [W.main.tx], "ProvenOutputDeleted", { errorArgs: [W.main.hash, 0n] })];
  out.push(await expectRevert(portal, "proveWithdrawalTransaction", proveArgs(W.w0, 0n, out0, out0.proof.storageProof[1].proof), "OutputNotPosted", { errorArgs: [0n, 0n] }));
  // A later state (one more withdrawal) gives another output root for the same L2 block number.
  await initiate("late", target.address, 100_000n, "0x", 1n);
  out1 = await outputAt(await headNumber(), [W.main.hash, W.w0.hash, W.failing.hash, W.w2.hash]);
  assert(out1.outputRoot !== out0.outputRoot, "new output root differs");
  eq(await propose(out1), 0n, "re-proposed at index 0");
  // Proving against the old root at the same index is refused now that index 0 holds out1.
  out.push(await expectRevert(portal, "proveWithdrawalTransaction", proveArgs(W.w0, 0n, out0, out0.proof.storageProof[1].proof), "OutputRootMismatch"));
  const r = await write(portal, "proveWithdrawalTransaction", proveArgs(W.main, 0n, out1, out1.proof.storageProof[0].proof));
  eq((await read(portal, "provenWithdrawals", [W.main.hash]))[0], out1.outputRoot, "proof now on the new output");
  await write(portal, "proveWithdrawalTransaction", proveArgs(W.w0, 0n, out1, out1.proof.storageProof[1].proof));
  await write(portal, "proveWithdrawalTransaction", proveArgs(W.failing, 0n, out1, out1.proof.storageProof[2].proof));
  await write(portal, "proveWithdrawalTransaction", proveArgs(W.w2, 0n, out1, out1.proof.storageProof[3].proof));
  return `re-prove gas ${r.gasUsed}; ${out.join(", ")}`;
});

await check("withdrawals: portal pause stops prove and finalize, not deposits", async () => {
  const out = [await expectRevert(portal, "pause", [], "NotGuardian", { from: owner })];
  await write(portal, "pause", [], { from: guardian });
  out.push(await expectRevert(portal, "finalizeWithdrawalTransaction", [W.main.tx], "PortalPaused"));
  out.push(await expectRevert(portal, "proveWithdrawalTransaction", proveArgs(W.main, 0n, out1, out1.proof.storageProof[0].proof), "PortalPaused"));
  await write(portal, "depositTransaction", [user.address, 0n, 21_000n, false, "0x"], { from: user, value: parseEther("1") });
  out.push(await expectRevert(portal, "unpause", [], "NotGuardian", { from: user }));
  await write(portal, "unpause", [], { from: guardian });
  return out.join(", ");
});

await check("withdrawals: finalize after the window pays the target with value, data and l2Sender", async () => {
  await increaseTime(Number(FINALIZATION) + 1);
  eq(await read(woracle, "isOutputFinalized", [0n]), true, "output finalized");
  const portalBefore = await pub.getBalance({ address: portal.address });
  const targetBefore = await pub.getBalance({ address: target.address });
  const r = await write(portal, "finalizeWithdrawalTransaction", [W.main.tx], { from: owner });
  gasReport.push(["finalizeWithdrawalTransaction (200k gas limit call)", r.gasUsed]);
  eq(events(portal, r, "WithdrawalFinalized")[0].args, { withdrawalHash: W.main.hash, success: true }, "WithdrawalFinalized");
  eq(await read(portal, "finalizedWithdrawals", [W.main.hash]), true, "finalizedWithdrawals");
  eq(await pub.getBalance({ address: target.address }), targetBefore + parseEther("1"), "target balance");
  eq(await pub.getBalance({ address: portal.address }), portalBefore - parseEther("1"), "portal balance");
  eq([await read(target, "lastCaller"), await read(target, "lastL2Sender"), await read(target, "lastValue"), await read(target, "lastData"), await read(target, "calls")], [portal.address, user.address, parseEther("1"), "0xdeadbeef0102", 1n], "target saw");
  eq(await read(portal, "l2Sender"), DEAD, "l2Sender reset");
  return `gas ${r.gasUsed}`;
});

await check("withdrawals: replayed finalize and re-prove of a finalized withdrawal are refused", async () => {
  const out = [await expectRevert(portal, "finalizeWithdrawalTransaction", [W.main.tx], "WithdrawalAlreadyFinalized", { errorArgs: [W.main.hash] })];
  // A real transaction too: mined, reverted, nothing paid twice.
  const hash = await wallet.sendTransaction({ account: owner, chain, to: portal.address, data: encodeFunctionData({ abi: portal.abi, functionName: "finalizeWithdrawalTransaction", args: [W.main.tx] }), gas: 500_000n });
  const receipt = await waitReceipt(hash);
  eq(receipt.status, "reverted", "replay transaction status");
  eq(await read(target, "calls"), 1n, "target called once");
  out.push(await expectRevert(portal, "proveWithdrawalTransaction", proveArgs(W.main, 0n, out1, out1.proof.storageProof[0].proof), "WithdrawalAlreadyFinalized"));
  return out.join(", ");
});

await check("withdrawals: a failing call still finalizes (success = false)", async () => {
  const r = await write(portal, "finalizeWithdrawalTransaction", [W.failing.tx]);
  eq(events(portal, r, "WithdrawalFinalized")[0].args, { withdrawalHash: W.failing.hash, success: false }, "event");
  eq(await read(portal, "finalizedWithdrawals", [W.failing.hash]), true, "finalized");
  return await expectRevert(portal, "finalizeWithdrawalTransaction", [W.failing.tx], "WithdrawalAlreadyFinalized");
});

await check("withdrawals: a relayer cannot starve the call of its gas limit", async () => {
  const data = encodeFunctionData({ abi: portal.abi, functionName: "finalizeWithdrawalTransaction", args: [W.w0.tx] });
  const starved = await revertOf(owner, { to: portal.address, data, gas: 200_000n });
  eq(starved.name, "InsufficientGasForWithdrawal", "starved finalize");
  const r = await sendTx(owner, { to: portal.address, data }, "finalize w0");
  eq(events(portal, r, "WithdrawalFinalized")[0].args.success, true, "w0 success");
  return `150k-gas withdrawal with 200k transaction gas → ${starved.name}; estimated finalize used ${r.gasUsed}`;
});

await check("withdrawals: an unproven and an unposted-output withdrawal", async () => {
  const out = [await expectRevert(portal, "finalizeWithdrawalTransaction", [W.w5.tx], "WithdrawalNotProven")];
  out.push(await expectRevert(portal, "proveWithdrawalTransaction", proveArgs(W.w5, 7n, out1, out1.proof.storageProof[0].proof), "OutputNotPosted", { errorArgs: [7n, 1n] }));
  out.push(await expectRevert(woracle, "deleteL2Outputs", [0n], "OutputAlreadyFinalized", { from: guardian }));
  return out.join(", ");
});

await check("withdrawals: prove with a deep proof (passer holding 4096 more messages)", async () => {
  // Fill the passer's storage trie as a busy L2 would, so the proof has a realistic depth.
  const fill = Array.from({ length: 4096 }, (_, i) => ({
    jsonrpc: "2.0",
    id: i,
    method: "anvil_setStorageAt",
    params: [passer.address, storageKeyOf(keccak256(toHex(`filler ${i}`))), pad("0x01", { size: 32 })],
  }));
  for (let i = 0; i < fill.length; i += 1024) {
    const res = await fetch(RPC, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(fill.slice(i, i + 1024)) });
    const answers = await res.json();
    assert(answers.every((a) => !a.error), `anvil_setStorageAt: ${JSON.stringify(answers.find((a) => a.error))}`);
  }
  await initiate("deep", target.address, 100_000n, "0x", 1n);
  // Two more for the checks below: more ETH than the portal holds, and a target that re-enters.
  await initiate("rich", target.address, 100_000n, "0x", parseEther("50"));
  reenterer = await deploy(H.Reenterer);
  await initiate("reenter", reenterer.address, 300_000n, "0x", 0n);
  deepOutput = await outputAt(await headNumber(), [W.deep.hash, W.rich.hash, W.reenter.hash]);
  const o = deepOutput;
  const index = await propose(o);
  const proof = o.proof.storageProof[0].proof;
  assert(proof.length >= 4, `expected a proof of 4+ nodes, got ${proof.length}`);
  const r = await write(portal, "proveWithdrawalTransaction", proveArgs(W.deep, index, o, proof));
  gasReport.push([`proveWithdrawalTransaction (${proof.length}-node proof, ${proof.reduce((n, x) => n + size(x), 0)} bytes)`, r.gasUsed]);
  await write(portal, "proveWithdrawalTransaction", proveArgs(W.rich, index, o, o.proof.storageProof[1].proof));
  await write(portal, "proveWithdrawalTransaction", proveArgs(W.reenter, index, o, o.proof.storageProof[2].proof));
  return `${proof.length} nodes, gas ${r.gasUsed}`;
});

await check("withdrawals: more ETH than the portal holds stays retryable; re-entering finalize is refused", async () => {
  await increaseTime(Number(FINALIZATION) + 1);
  const balance = await pub.getBalance({ address: portal.address });
  const out = [await expectRevert(portal, "finalizeWithdrawalTransaction", [W.rich.tx], "InsufficientPortalBalance", { errorArgs: [balance, parseEther("50")] })];
  // The target tries to finalize another proven withdrawal from inside its own call.
  await write(reenterer, "setPayload", [encodeFunctionData({ abi: portal.abi, functionName: "finalizeWithdrawalTransaction", args: [W.deep.tx] })]);
  const r = await write(portal, "finalizeWithdrawalTransaction", [W.reenter.tx]);
  eq(events(portal, r, "WithdrawalFinalized")[0].args.success, true, "outer call");
  eq(await read(reenterer, "lastOk"), false, "inner finalize failed");
  const inner = decodeErrorResult({ abi: ERRORS, data: await read(reenterer, "lastReturn") }).errorName;
  eq(inner, "WithdrawalInProgress", "inner refusal");
  out.push(`nested finalize → ${inner}`);
  eq(await read(portal, "finalizedWithdrawals", [W.deep.hash]), false, "deep not finalized by the nested call");
  await write(portal, "finalizeWithdrawalTransaction", [W.deep.tx]);
  eq(await read(portal, "finalizedWithdrawals", [W.deep.hash]), true, "deep finalized afterwards");
  return out.join(", ");
});

// ---------------------------------------------------------------- BatchInbox -------------------------

const batches = []; // { hash, first, last }
await check("batches: initial state, owner and batcher", async () => {
  eq([await read(inbox, "owner"), await read(inbox, "batcher"), await read(inbox, "nextL2Block"), await read(inbox, "batchCount"), await read(inbox, "latestBatchHash")], [owner.address, batcher.address, 1n, 0n, zeroHash], "initial state");
  const out = [await expectRevert(inbox, "getBatch", [0n], "BatchIndexOutOfRange")];
  out.push(await expectRevert(inbox, "submitBatch", [1n, 10n, zeroHash], "NoBlobs", { from: batcher }));
  out.push(await expectRevert(inbox, "submitBatchCalldata", [1n, 10n, zeroHash, "0x01"], "NotBatcher", { from: owner, errorArgs: [owner.address] }));
  out.push(await expectRevert(inbox, "submitBatch", [1n, 10n, zeroHash], "NotBatcher", { from: user }));
  return out.join(", ");
});

async function submitBlob(plan, label) {
  const b = await plan;
  const hash = await rpc("eth_sendRawTransaction", [b.raw]);
  const receipt = await waitReceipt(hash);
  eq(receipt.status, "success", `${label} status`);
  const tx = await pub.getTransaction({ hash });
  eq(tx.blobVersionedHashes, b.versionedHashes, "versioned hashes on chain");
  return { b, receipt };
}
function checkBatchEvent(receipt, index, first, last, parent, dataHashes, blobs) {
  const ev = events(inbox, receipt, "BatchSubmitted");
  eq(ev.length, 1, "one BatchSubmitted");
  const batchHash = batchHashOf(parent, first, last, dataHashes);
  eq(ev[0].args, { index, firstBlock: first, lastBlock: last, batchHash, parentBatchHash: parent, dataHashes, blobs }, "BatchSubmitted");
  return batchHash;
}

await check("batches: blob batch (1 blob), built by cast with KZG proofs, accepted by anvil", async () => {
  const { b, receipt } = await submitBlob(blobPlan.one, "1-blob batch");
  eq(b.blobCount, 1, "blob count");
  const h = checkBatchEvent(receipt, 0n, 1n, 10n, zeroHash, b.versionedHashes, true);
  eq(await read(inbox, "getBatch", [0n]), { batchHash: h, parentBatchHash: zeroHash, firstBlock: 1n, lastBlock: 10n, l1BlockNumber: receipt.blockNumber, blobs: true }, "stored batch");
  eq([await read(inbox, "latestBatchHash"), await read(inbox, "nextL2Block"), await read(inbox, "batchCount")], [h, 11n, 1n], "chain head");
  batches.push({ hash: h, first: 1n, last: 10n });
  gasReport.push(["submitBatch (1 blob)", receipt.gasUsed]);
  return `gas ${receipt.gasUsed}, versioned hash ${b.versionedHashes[0].slice(0, 12)}…`;
});

await check("batches: blob batch (6 blobs)", async () => {
  const { b, receipt } = await submitBlob(blobPlan.six, "6-blob batch");
  eq(b.blobCount, 6, "blob count");
  const h = checkBatchEvent(receipt, 1n, 11n, 40n, batches[0].hash, b.versionedHashes, true);
  eq((await read(inbox, "getBatch", [1n])).parentBatchHash, batches[0].hash, "parent link");
  batches.push({ hash: h, first: 11n, last: 40n });
  gasReport.push(["submitBatch (6 blobs)", receipt.gasUsed]);
  return `gas ${receipt.gasUsed}`;
});

await check("batches: calldata batch (100 KB)", async () => {
  const data = randomHex(100_000, 21);
  const r = await write(inbox, "submitBatchCalldata", [41n, 41n, batches[1].hash, data], { from: batcher });
  const h = checkBatchEvent(r, 2n, 41n, 41n, batches[1].hash, [keccak256(data)], false);
  const stored = await read(inbox, "getBatch", [2n]);
  eq([stored.batchHash, stored.blobs, stored.l1BlockNumber], [h, false, r.blockNumber], "stored");
  batches.push({ hash: h, first: 41n, last: 41n });
  gasReport.push(["submitBatchCalldata (100 KB)", r.gasUsed]);
  return `gas ${r.gasUsed}`;
});

await check("batches: wrong parent, gap, reversed range, sizes, non-batcher", async () => {
  const head = batches.at(-1).hash;
  const out = [];
  out.push(await expectRevert(inbox, "submitBatchCalldata", [42n, 50n, batches[1].hash, "0x01"], "WrongParent", { from: batcher, errorArgs: [head, batches[1].hash] }));
  out.push(await expectRevert(inbox, "submitBatchCalldata", [42n, 50n, zeroHash, "0x01"], "WrongParent", { from: batcher }));
  out.push(await expectRevert(inbox, "submitBatchCalldata", [43n, 50n, head, "0x01"], "NotNextBlock", { from: batcher, errorArgs: [42n, 43n] }));
  out.push(await expectRevert(inbox, "submitBatchCalldata", [41n, 50n, head, "0x01"], "NotNextBlock", { from: batcher, errorArgs: [42n, 41n] }));
  out.push(await expectRevert(inbox, "submitBatchCalldata", [42n, 41n, head, "0x01"], "LastBlockBeforeFirst", { from: batcher }));
  out.push(await expectRevert(inbox, "submitBatchCalldata", [42n, 50n, head, "0x"], "BatchDataSizeOutOfRange", { from: batcher, errorArgs: [0n, 1_000_000n] }));
  // Zero bytes: 1 MB of non-zero calldata costs 40M gas at the EIP-7623 floor, over anvil's block gas limit.
  out.push(await expectRevert(inbox, "submitBatchCalldata", [42n, 50n, head, `0x${"00".repeat(1_000_001)}`], "BatchDataSizeOutOfRange", { from: batcher, errorArgs: [1_000_001n, 1_000_000n] }));
  out.push(await expectRevert(inbox, "submitBatchCalldata", [42n, 50n, head, "0x01"], "NotBatcher", { from: user }));
  out.push(await expectRevert(inbox, "submitBatch", [42n, 50n, head], "NoBlobs", { from: batcher }));
  out.push(await expectRevert(inbox, "setBatcher", [user.address], "NotOwner", { from: batcher }));
  out.push(await expectRevert(inbox, "setBatcher", [zeroAddress], "ZeroAddress"));
  return out.join(", ");
});

await check("batches: owner changes the batcher; hash chain values", async () => {
  const r = await write(inbox, "setBatcher", [user.address]);
  eq(events(inbox, r, "BatcherChanged")[0].args.batcher, user.address, "BatcherChanged");
  const head = batches.at(-1).hash;
  await expectRevert(inbox, "submitBatchCalldata", [42n, 50n, head, "0x01"], "NotBatcher", { from: batcher });
  const s = await write(inbox, "submitBatchCalldata", [42n, 50n, head, "0x01"], { from: user });
  const h = checkBatchEvent(s, 3n, 42n, 50n, head, [keccak256("0x01")], false);
  batches.push({ hash: h, first: 42n, last: 50n });
  // Walk the chain from L1 state alone.
  let parent = zeroHash;
  let next = 1n;
  for (let i = 0n; i < (await read(inbox, "batchCount")); i++) {
    const b = await read(inbox, "getBatch", [i]);
    eq([b.parentBatchHash, b.firstBlock], [parent, next], `batch ${i} links`);
    eq(b.batchHash, batches[Number(i)].hash, `batch ${i} hash`);
    parent = b.batchHash;
    next = b.lastBlock + 1n;
  }
  eq([await read(inbox, "latestBatchHash"), await read(inbox, "nextL2Block")], [parent, 51n], "head");
  return `4 batches, blocks 1..50, head ${parent.slice(0, 10)}…`;
});

// ---------------------------------------------------------------- L2 predeploys ----------------------

await check("L1Block: only the depositor sets values; storage layout as documented", async () => {
  const l1b = await deploy(A.L1Block);
  const args = [123456789n, 1_700_000_000n, 7_000_000_000n, keccak256("0xabcd"), 3n, keccak256("0xbeac"), 42n];
  const out = [await expectRevert(l1b, "setL1BlockValues", args, "NotDepositor", { from: owner, errorArgs: [owner.address] })];
  await rpc("anvil_impersonateAccount", [DEPOSITOR]);
  await rpc("anvil_setBalance", [DEPOSITOR, toHex(parseEther("1"))]);
  const hash = await wallet.sendTransaction({ account: DEPOSITOR, chain, to: l1b.address, data: encodeFunctionData({ abi: l1b.abi, functionName: "setL1BlockValues", args }) });
  const receipt = await waitReceipt(hash);
  eq(receipt.status, "success", "depositor transaction");
  await rpc("anvil_stopImpersonatingAccount", [DEPOSITOR]);
  const names = ["number", "timestamp", "basefee", "hash", "blobBaseFee", "parentBeaconRoot", "depositsProcessed"];
  for (let i = 0; i < names.length; i++) eq(await read(l1b, names[i]), args[i], names[i]);
  const slot = async (i) => BigInt(await rpc("eth_getStorageAt", [l1b.address, toHex(i), "latest"]));
  eq(await slot(0), (args[1] << 64n) | args[0], "slot 0 = timestamp << 64 | number");
  eq(await slot(1), args[2], "slot 1 = basefee");
  eq(numberToHex(await slot(2), { size: 32 }), args[3], "slot 2 = hash");
  eq(await slot(3), args[4], "slot 3 = blobBaseFee");
  eq(numberToHex(await slot(4), { size: 32 }), args[5], "slot 4 = parentBeaconRoot");
  eq(await slot(5), args[6], "slot 5 = depositsProcessed");
  eq(await slot(6), 0n, "slot 6 unused");
  eq(await read(l1b, "DEPOSITOR_ACCOUNT"), DEPOSITOR, "depositor constant");
  return `gas ${receipt.gasUsed}; ${out.join(", ")}`;
});

await check("predeploys: deployed code has no immutables and needs no constructor", async () => {
  for (const name of ["L1Block", "L2ToL1MessagePasser"]) {
    const art = A[name];
    // Genesis places deployedBytecode directly: it must be what the constructor would install.
    const c = await deploy(art);
    eq(await pub.getCode({ address: c.address }), art.deployedBytecode, `${name} runtime code`);
    eq(await rpc("eth_getStorageAt", [c.address, "0x0", "latest"]), zeroHash, `${name} storage empty`);
  }
  eq(await rpc("eth_getStorageAt", [passer.address, "0x1", "latest"]), pad(toHex(17n), { size: 32 }), "passer slot 1 = messageNonce");
  return "runtime code == deployedBytecode for both";
});

console.log("gas used:");
for (const [what, gas] of gasReport) console.log(`  ${what}: ${gas}`);
console.log(`all ${passed} checks passed in ${((performance.now() - T0) / 1000).toFixed(1)} s`);
process.exit(0);
