// SPDX-License-Identifier: MIT
// `v4rt serve --mtp N` with the official `openai` npm client. Greedy chat completions (streamed and
// non-streamed, with logprobs) are recorded from a server without drafting (REF_OUT) or checked
// token for token against such a record (REF_IN); sampled requests must complete; with
// EXPECT_DEPTH the /metrics counters of speculative decoding must show the verify steps:
// drafts = depth x steps, accepted <= drafts, emitted = accepted + steps.
// Environment: BASE_URL, API_KEY, EXPECT_RANKS, REF_OUT | REF_IN, EXPECT_DEPTH.
'use strict';
const OpenAI = require('openai');
const fs = require('fs');
const { check, waitHealthy, collect } = require('./serve_util.cjs');

const base = process.env.BASE_URL;
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: process.env.API_KEY, maxRetries: 0, timeout: 300000 });

async function metrics() {
  const r = await fetch(`${base}/metrics`, { headers: { Authorization: `Bearer ${process.env.API_KEY}` } });
  const out = {};
  for (const line of (await r.text()).split('\n')) {
    const m = /^(v4rt_spec_[a-z_]+) ([0-9.e+-]+)$/.exec(line);
    if (m) out[m[1]] = Number(m[2]);
  }
  return out;
}

async function main() {
  const health = await waitHealthy(base);
  const ranks = Number(process.env.EXPECT_RANKS || 1);
  check(health.status === 'ok' && health.ranks === ranks, `/health ready over ${ranks} rank(s)`);
  const prompts = ['Write a line.', 'Name three colours.', 'Count to five.', 'Tell me about Delta.'];
  const greedy = await Promise.all(prompts.map(async (p, i) => {
    const req = { model: 'tiny', messages: [{ role: 'user', content: p }], max_tokens: 16 + 4 * i, temperature: 0,
                  logprobs: true };
    const ns = await client.chat.completions.create(req);
    const st = await collect(await client.chat.completions.create({ ...req, stream: true }));
    const tokens = ns.choices[0].logprobs.content.map((t) => t.token);
    check(JSON.stringify(st.tokens) === JSON.stringify(tokens), `greedy '${p}': streamed tokens equal non-streamed`);
    return { tokens, finish: ns.choices[0].finish_reason };
  }));
  if (process.env.REF_OUT) fs.writeFileSync(process.env.REF_OUT, JSON.stringify(greedy));
  if (process.env.REF_IN) {
    const ref = JSON.parse(fs.readFileSync(process.env.REF_IN, 'utf8'));
    for (let i = 0; i < prompts.length; ++i) {
      check(JSON.stringify(greedy[i]) === JSON.stringify(ref[i]),
            `greedy '${prompts[i]}': ${greedy[i].tokens.length} tokens equal the server without drafting`);
    }
  }
  const sampled = await Promise.all([1, 2, 3].map((s) => client.chat.completions.create({
    model: 'tiny', messages: [{ role: 'user', content: 'Write a line.' }], max_tokens: 12, temperature: 0.9,
    top_p: 0.95, seed: s })));
  check(sampled.every((r) => r.usage.completion_tokens >= 1), 'sampled requests complete');
  const depth = Number(process.env.EXPECT_DEPTH || 0);
  if (depth > 0) {
    const m = await metrics();
    const steps = m.v4rt_spec_verify_steps_total, drafted = m.v4rt_spec_draft_tokens_total;
    const accepted = m.v4rt_spec_accepted_tokens_total, emitted = m.v4rt_spec_emitted_tokens_total;
    console.log(`/metrics: ${steps} verify steps, ${drafted} drafts, ${accepted} accepted (rate ` +
                `${m.v4rt_spec_acceptance_rate}), ${m.v4rt_spec_tokens_per_step} tokens per step, ` +
                `draft ${m.v4rt_spec_draft_seconds_total} s, verify ${m.v4rt_spec_verify_seconds_total} s`);
    check(steps > 0 && drafted === depth * steps, `/metrics: ${depth} drafts per verify step`);
    check(accepted <= drafted && emitted === accepted + steps, '/metrics: accepted and emitted tokens consistent');
    check(m.v4rt_spec_draft_seconds_total > 0 && m.v4rt_spec_verify_seconds_total > 0, '/metrics: draft and verify times');
  }
}

main().catch((e) => { console.error(e); process.exit(1); });
