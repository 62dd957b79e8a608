// SPDX-License-Identifier: MIT
// Helpers shared by the `v4rt serve` end-to-end scripts (serve_e2e.cjs, serve_load.cjs,
// serve_fault.cjs): checks, waiting for /health, collecting a streamed chat completion, percentiles
// and the server's resident memory.
'use strict';
const fs = require('fs');

function check(cond, what) {
  if (!cond) throw new Error(`FAILED: ${what}`);
  console.log(`ok - ${what}`);
}

async function waitHealthy(base, tries = 600) {
  for (let i = 0; i < tries; ++i) {
    try {
      const r = await fetch(`${base}/health`);
      if (r.status === 200) return await r.json();
    } catch (e) { /* not listening yet */ }
    await new Promise((res) => setTimeout(res, 100));
  }
  throw new Error('server never became healthy');
}

// Consumes a chat completion stream. tokens: the tokens named by the streamed logprobs (when the
// request asked for logprobs), so a lost or duplicated token shows as a count mismatch.
async function collect(stream) {
  const out = { reasoning: '', content: '', finish: null, calls: {}, usage: null, chunks: 0, roleSeen: false,
                firstDeltaMs: null, deltaTimes: [], tokens: [] };
  const t0 = Date.now();
  for await (const chunk of stream) {
    out.chunks++;
    if (chunk.usage) out.usage = chunk.usage;
    const ch = chunk.choices && chunk.choices[0];
    if (!ch) continue;
    const d = ch.delta || {};
    if (d.role === 'assistant') out.roleSeen = true;
    if (d.reasoning_content || d.content) {
      const now = Date.now() - t0;
      if (out.firstDeltaMs === null) out.firstDeltaMs = now;
      out.deltaTimes.push(now);
    }
    if (d.reasoning_content) out.reasoning += d.reasoning_content;
    if (d.content) out.content += d.content;
    for (const tc of d.tool_calls || []) {
      const c = out.calls[tc.index] || (out.calls[tc.index] = { id: null, name: null, arguments: '' });
      if (tc.id) c.id = tc.id;
      if (tc.function && tc.function.name) c.name = tc.function.name;
      if (tc.function && tc.function.arguments) c.arguments += tc.function.arguments;
    }
    if (ch.logprobs && ch.logprobs.content) for (const lp of ch.logprobs.content) out.tokens.push(lp.token);
    if (ch.finish_reason) out.finish = ch.finish_reason;
  }
  return out;
}

function pct(a, q) {
  const s = [...a].sort((x, y) => x - y);
  return s.length ? s[Math.min(s.length - 1, Math.floor(q * s.length))] : 0;
}

// Resident set size of process `pid` in MiB (Linux), or null.
function rssMiB(pid) {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : null;
  } catch (e) {
    return null;
  }
}

module.exports = { check, waitHealthy, collect, pct, rssMiB };
