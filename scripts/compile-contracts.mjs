#!/usr/bin/env node
// Compiles with solc-js (standard JSON, optimizer 200 runs, evmVersion prague), one compiler run per
// source directory, into <dir>/out/<ContractName>.json: { contractName, abi, bytecode, deployedBytecode, solcVersion, evmVersion }.
//   contracts/*.sol    -> contracts/out/      (test contracts for the L2; no imports)
//   l1/contracts/*.sol -> l1/contracts/out/   (L1 settlement contracts and L2 predeploys; relative imports
//                                              between files of l1/contracts/ only)
// Usage: node scripts/compile-contracts.mjs            (write artifacts, drop stale ones)
//        node scripts/compile-contracts.mjs --check    (compile in memory; exit 1 if any artifact differs)
// The output is deterministic: same sources + same pinned solc => byte-identical files. Each directory is
// compiled on its own so adding l1 sources cannot change the contracts/ artifacts (bytecode embeds a
// metadata hash that depends on the compiler input).
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import solc from "solc";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const check = process.argv.includes("--check");
const EVM_VERSION = "prague";
const TARGETS = [
  { dir: "contracts", imports: false },
  { dir: "l1/contracts", imports: true },
];

// Source unit names are paths relative to the repository root ("l1/contracts/Portal.sol"), so a
// relative import inside l1/contracts/ resolves to a name of the same directory. solc only asks for a
// name it was not given; allow exactly the .sol files of the directory being compiled (no escaping it,
// no subdirectories, nothing from node_modules).
function importCallback(target) {
  return (name) => {
    if (!target.imports) return { error: `imports not supported in ${target.dir}/: ${name}` };
    const normalized = path.posix.normalize(name);
    if (path.posix.dirname(normalized) !== target.dir || !normalized.endsWith(".sol")) {
      return { error: `import outside ${target.dir}/ refused: ${name}` };
    }
    const file = path.join(root, normalized);
    if (!fs.existsSync(file)) return { error: `import not found: ${name}` };
    return { contents: fs.readFileSync(file, "utf8") };
  };
}

function compile(target) {
  const srcDir = path.join(root, target.dir);
  const files = fs.readdirSync(srcDir).filter((f) => f.endsWith(".sol")).sort();
  if (files.length === 0) throw new Error(`no .sol files in ${srcDir}`);
  const sources = Object.fromEntries(
    files.map((f) => [`${target.dir}/${f}`, { content: fs.readFileSync(path.join(srcDir, f), "utf8") }]),
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

  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: importCallback(target) }));
  const diagnostics = output.errors ?? [];
  for (const d of diagnostics) console.error(d.formattedMessage.trim());
  if (diagnostics.some((d) => d.severity === "error")) {
    console.error(`compile-contracts: compilation of ${target.dir}/ failed`);
    process.exit(1);
  }

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
  return artifacts;
}

const solcVersion = solc.version();
const problems = [];
const written = [];
let upToDate = 0;
for (const target of TARGETS) {
  const artifacts = compile(target);
  const outRel = `${target.dir}/out`;
  const outDir = path.join(root, outRel);
  const existing = fs.existsSync(outDir) ? fs.readdirSync(outDir).filter((f) => f.endsWith(".json")) : [];
  const stale = existing.filter((f) => !artifacts.has(f));
  if (check) {
    for (const [file, content] of artifacts) {
      const p = path.join(outDir, file);
      if (!fs.existsSync(p)) problems.push(`missing ${outRel}/${file}`);
      else if (fs.readFileSync(p, "utf8") !== content) problems.push(`outdated ${outRel}/${file}`);
      else upToDate++;
    }
    for (const f of stale) problems.push(`stale ${outRel}/${f} (no matching contract)`);
  } else {
    fs.mkdirSync(outDir, { recursive: true });
    for (const f of stale) fs.rmSync(path.join(outDir, f));
    for (const [file, content] of artifacts) fs.writeFileSync(path.join(outDir, file), content);
    written.push(...[...artifacts.keys()].map((f) => `${outRel}/${f}`));
  }
}

if (check) {
  if (problems.length) {
    console.error(`compile-contracts --check: artifacts differ from sources:\n  ${problems.join("\n  ")}`);
    console.error("run `node scripts/compile-contracts.mjs` and commit contracts/out/ and l1/contracts/out/");
    process.exit(1);
  }
  console.log(`compile-contracts --check: ${upToDate} artifacts up to date (solc ${solcVersion}, ${EVM_VERSION})`);
} else {
  console.log(`compile-contracts: wrote ${written.join(", ")} (solc ${solcVersion}, ${EVM_VERSION})`);
}
