#!/usr/bin/env node
// A stand-in for a native `solc` binary, so that forge compiles offline with the pinned solc-js
// (npm `solc`) instead of downloading a compiler (tests/foundry/foundry.toml points `solc` here).
// forge only ever runs solc two ways: `--version`, to learn which compiler it has, and
// `--standard-json [--base-path P] [--include-path P]... [--allow-paths P,...]` with the
// standard-JSON input on stdin. Anything else is refused so a new use shows up as an error.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

const solc = createRequire(import.meta.url)("solc");
const args = process.argv.slice(2);

if (args.includes("--version")) {
  // forge parses the last line as native solc prints it; solc-js calls its build
  // "Emscripten.clang", native Linux builds say "Linux.g++": answer as native solc would.
  const version = solc.version().replace(/\.Emscripten\.clang$/, ".Linux.g++");
  process.stdout.write(`solc, the solidity compiler commandline interface\nVersion: ${version}\n`);
} else if (args.includes("--standard-json")) {
  // Directories imports may be read from, as native solc would search them.
  const roots = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === "--base-path" || args[i] === "--include-path") roots.push(args[++i]);
  }
  if (roots.length === 0) roots.push(process.cwd());
  // forge puts every source's content in the input, so this is only a fallback for a source
  // given by path alone (e.g. an input written by hand).
  const findImports = (name) => {
    for (const root of roots) {
      try {
        return { contents: readFileSync(path.resolve(root, name), "utf8") };
      } catch {}
    }
    return { error: `File not found: ${name} (looked in ${roots.join(", ")})` };
  };
  const input = readFileSync(0, "utf8");
  // Compilation errors are in the output JSON, as with native solc; exit 0 like it does.
  process.stdout.write(solc.compile(input, { import: findImports }));
} else {
  process.stderr.write(`solc-shim: unsupported arguments ${JSON.stringify(args)} (only --version and --standard-json)\n`);
  process.exit(1);
}
