#!/usr/bin/env node
// Compiles every contracts/*.sol with solc-js (standard JSON, optimizer 200 runs) into
// contracts/out/<ContractName>.json: { contractName, abi, bytecode, deployedBytecode, solcVersion, evmVersion }.
// Usage: node scripts/compile-contracts.mjs            (write artifacts, drop stale ones)
//        node scripts/compile-contracts.mjs --check    (compile in memory; exit 1 if artifacts differ)
// The output is deterministic: same sources + same pinned solc => byte-identical files.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import solc from "solc";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const srcDir = path.join(root, "contracts");
const outDir = path.join(srcDir, "out");
const check = process.argv.includes("--check");
const EVM_VERSION = "prague";

const files = fs.readdirSync(srcDir).filter((f) => f.endsWith(".sol")).sort();
if (files.length === 0) throw new Error(`no .sol files in ${srcDir}`);
const sources = Object.fromEntries(
  files.map((f) => [`contracts/${f}`, { content: fs.readFileSync(path.join(srcDir, f), "utf8") }]),
);
const input = {
  language: "Solidity",
  sources,
  settings: {
    evmVersion: EVM_VERSION,
    optimizer: { enabled: true, runs: 200 },
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
  },
};

const output = JSON.parse(solc.compile(JSON.stringify(input), { import: (p) => ({ error: `imports not supported: ${p}` }) }));
const diagnostics = output.errors ?? [];
for (const d of diagnostics) console.error(d.formattedMessage.trim());
if (diagnostics.some((d) => d.severity === "error")) {
  console.error("compile-contracts: compilation failed");
  process.exit(1);
}

const solcVersion = solc.version();
const artifacts = new Map(); // file name -> content
for (const [source, contracts] of Object.entries(output.contracts).sort(([a], [b]) => a.localeCompare(b))) {
  for (const [name, c] of Object.entries(contracts).sort(([a], [b]) => a.localeCompare(b))) {
    const file = `${name}.json`;
    if (artifacts.has(file)) throw new Error(`duplicate contract name ${name} (in ${source})`);
    const artifact = {
      contractName: name,
      abi: c.abi,
      bytecode: `0x${c.evm.bytecode.object}`,
      deployedBytecode: `0x${c.evm.deployedBytecode.object}`,
      solcVersion,
      evmVersion: EVM_VERSION,
    };
    artifacts.set(file, `${JSON.stringify(artifact, null, 2)}\n`);
  }
}

const existing = fs.existsSync(outDir) ? fs.readdirSync(outDir).filter((f) => f.endsWith(".json")) : [];
const stale = existing.filter((f) => !artifacts.has(f));
if (check) {
  const problems = [];
  for (const [file, content] of artifacts) {
    const p = path.join(outDir, file);
    if (!fs.existsSync(p)) problems.push(`missing ${path.relative(root, p)}`);
    else if (fs.readFileSync(p, "utf8") !== content) problems.push(`outdated ${path.relative(root, p)}`);
  }
  for (const f of stale) problems.push(`stale contracts/out/${f} (no matching contract)`);
  if (problems.length) {
    console.error(`compile-contracts --check: artifacts differ from sources:\n  ${problems.join("\n  ")}`);
    console.error("run `node scripts/compile-contracts.mjs` and commit contracts/out/");
    process.exit(1);
  }
  console.log(`compile-contracts --check: ${artifacts.size} artifacts up to date (solc ${solcVersion}, ${EVM_VERSION})`);
} else {
  fs.mkdirSync(outDir, { recursive: true });
  for (const f of stale) fs.rmSync(path.join(outDir, f));
  for (const [file, content] of artifacts) fs.writeFileSync(path.join(outDir, file), content);
  console.log(`compile-contracts: wrote ${[...artifacts.keys()].map((f) => `contracts/out/${f}`).join(", ")} (solc ${solcVersion}, ${EVM_VERSION})`);
}
