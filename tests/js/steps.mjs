// What the client scripts share: a check that throws, a step that prints one line (ok or FAIL, with
// the time it took) and exits 1 on failure, and the Token artifact they deploy.
import fs from "node:fs";

export const tokenArtifact = JSON.parse(
  fs.readFileSync(new URL("../../contracts/out/Token.json", import.meta.url), "utf8"),
);

export function check(cond, msg) {
  if (!cond) throw new Error(`check failed: ${msg}`);
}

export async function step(name, fn) {
  const t0 = performance.now();
  try {
    const detail = await fn();
    console.log(`ok   ${name}${detail ? `: ${detail}` : ""} (${Math.round(performance.now() - t0)} ms)`);
  } catch (err) {
    console.error(`FAIL ${name}: ${err?.shortMessage ?? err?.message ?? err}`);
    // viem puts the node's message in `details`, ethers in `info`.
    if (err?.details) console.error(`     details: ${err.details}`);
    if (err?.info) console.error(`     info: ${JSON.stringify(err.info)}`);
    process.exit(1);
  }
}
