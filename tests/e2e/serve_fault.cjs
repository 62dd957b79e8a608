// SPDX-License-Identifier: MIT
// Client side of the rank-failure test (run by run_serve_fault.sh): STREAMS streaming and PLAIN
// non-streaming long generations; once every stream has produced tokens it writes READY_FILE (the
// script then kills or stops a follower rank). Every request must then end within DEADLINE_S with
// an error (503 status or an SSE error event carrying code 503; a dropped connection is counted
// apart), none may end as a normal completion cut short, and none may hang. Prints a figures line.
'use strict';
const OpenAI = require('openai');
const fs = require('fs');
const { check, waitHealthy } = require('./serve_util.cjs');

const base = process.env.BASE_URL;
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: process.env.API_KEY, maxRetries: 0, timeout: 60000 });
const streams = Number(process.env.STREAMS || 6), plain = Number(process.env.PLAIN || 2);
const deadlineS = Number(process.env.DEADLINE_S || 20);
const maxTokens = 4000;

function classify(e) {
  if (e && (e.status === 503 || e.code === 503)) return 'error_503';
  if (e && e.status) return `status_${e.status}`;
  return 'connection';  // reset / closed without a response
}

async function main() {
  await waitHealthy(base);
  const req = (i) => ({ model: 'tiny', messages: [{ role: 'user', content: `Story number ${i}, go.` }],
                        max_tokens: maxTokens, temperature: 0.8, seed: i, thinking: { type: 'disabled' } });
  let streaming = 0;
  const outcomes = {};
  const messages = [];
  const note = (kind, msg) => { outcomes[kind] = (outcomes[kind] || 0) + 1; if (msg) messages.push(msg); };
  const tasks = [];
  for (let i = 0; i < streams; ++i) {
    tasks.push((async () => {
      let tokens = 0, counted = false;
      try {
        const s = await client.chat.completions.create({ ...req(i), stream: true });
        for await (const chunk of s) {
          const ch = chunk.choices && chunk.choices[0];
          if (ch && ch.delta && ch.delta.content) tokens++;
          if (tokens >= 1 && !counted) { counted = true; streaming++; }
          if (ch && ch.finish_reason) { note(`completed_${ch.finish_reason}`); return; }
        }
        note('stream_ended_without_finish');
      } catch (e) {
        note(classify(e), `stream ${i} after ${tokens} deltas: ${e.message}`);
      }
    })());
  }
  for (let i = 0; i < plain; ++i) {
    tasks.push((async () => {
      try {
        const r = await client.chat.completions.create(req(100 + i));
        note(`completed_${r.choices[0].finish_reason}`);
      } catch (e) {
        note(classify(e), `plain ${i}: ${e.message}`);
      }
    })());
  }
  const t0 = Date.now();
  while (streaming < streams && Date.now() - t0 < 120000) await new Promise((res) => setTimeout(res, 50));
  check(streaming === streams, `${streams} streams produce tokens before the fault`);
  fs.writeFileSync(process.env.READY_FILE, 'ready\n');
  const tFault = Date.now();
  let timer;
  const timeout = new Promise((res) => { timer = setTimeout(() => res('timeout'), deadlineS * 1000); });
  const all = await Promise.race([Promise.all(tasks).then(() => 'done'), timeout]);
  clearTimeout(timer);
  const endS = (Date.now() - tFault) / 1000;
  for (const m of messages.slice(0, 4)) console.log(`  ${m}`);
  console.log(`FAULT_FIGURES ${JSON.stringify({ streams, plain, outcomes, all_ended_s: all === 'done' ? endS : null })}`);
  check(all === 'done', `every request ended within ${deadlineS} s of the fault`);
  const completed = Object.keys(outcomes).filter((k) => k.startsWith('completed_') || k === 'stream_ended_without_finish');
  check(completed.length === 0, 'no request ended as a normal completion after the fault');
  check((outcomes.error_503 || 0) === streams + plain, 'every request in flight got a 503 error');
  process.exit(0);
}

main().catch((e) => { console.error(e.stack || String(e)); process.exit(1); });
