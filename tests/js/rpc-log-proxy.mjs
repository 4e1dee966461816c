// Tiny logging JSON-RPC proxy: forwards HTTP POSTs from 127.0.0.1:PORT to UPSTREAM, printing "<method> <ok|error code>"
// per call, to show which RPC methods a client uses (and so which ones rtchain must serve).
// Run: node tests/js/rpc-log-proxy.mjs 18546 http://127.0.0.1:18545, then RPC_URL=http://127.0.0.1:18546 <client>.
// DENY=eth_fillTransaction,... answers those methods with -32601 (as rtchain does); LAG_RECEIPTS=1 answers null
// to the first eth_getTransactionReceipt of each hash (a receipt not indexed yet); VERBOSE=1 prints params. Ctrl-C stops it.
import http from "node:http";

const [port = "18546", upstream = "http://127.0.0.1:8545"] = process.argv.slice(2);
const deny = new Set((process.env.DENY ?? "").split(",").filter(Boolean));
const lagged = new Set();

async function handle(call) {
  if (deny.has(call.method)) {
    return { jsonrpc: "2.0", id: call.id, error: { code: -32601, message: `the method ${call.method} does not exist/is not available` } };
  }
  if (process.env.LAG_RECEIPTS && call.method === "eth_getTransactionReceipt" && !lagged.has(call.params[0])) {
    lagged.add(call.params[0]);
    return { jsonrpc: "2.0", id: call.id, result: null };
  }
  const up = await fetch(upstream, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(call) });
  return up.json();
}

http
  .createServer(async (req, res) => {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    const body = JSON.parse(Buffer.concat(chunks).toString());
    const out = await Promise.all([body].flat().map(handle));
    out.forEach((r, i) => console.log(`${[body].flat()[i].method} ${r.error ? r.error.code : "ok"}${process.env.VERBOSE ? ` ${JSON.stringify([body].flat()[i].params ?? [])}` : ""}`));
    res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(Array.isArray(body) ? out : out[0]));
  })
  .listen(Number(port), "127.0.0.1");
