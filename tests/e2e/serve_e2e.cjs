// SPDX-License-Identifier: MIT
// End-to-end checks of `v4rt serve` through the official `openai` npm client (run by
// run_serve_e2e.sh; BASE_URL and API_KEY come from the environment). Exits non-zero on the first
// failed check. The tiny model has random weights, so text checks compare the server with itself
// (streamed vs non-streamed, concurrent vs sequential, one rank vs several) or use the
// forced-output test hook. Optional environment:
//   EXPECT_RANKS   ranks /health must report (default 1)
//   LOAD_CLIENTS, LOAD_REQUESTS   size of the load part (default 64 clients, 128 requests)
//   SEEDED_OUT     write the seeded results (text and tokens) to this JSON file
//   SEEDED_REF     compare the seeded results with this file (written by another run)
//   ONLY_SEEDED=1  run the seeded requests only
//   RESULTS        write the load figures to this JSON file
'use strict';
const OpenAI = require('openai');
const fs = require('fs');
const { check, waitHealthy, collect, pct } = require('./serve_util.cjs');

const base = process.env.BASE_URL;
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: process.env.API_KEY, maxRetries: 0, timeout: 300000 });

const weatherTool = {
  type: 'function',
  function: { name: 'get_weather', description: 'Current weather of a city',
              parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } },
};
const toolCallText = 'The user wants the weather; call the tool.</think>Let me check.\n\n' +
  '<｜DSML｜tool_calls>\n<｜DSML｜invoke name="get_weather">\n' +
  '<｜DSML｜parameter name="city" string="true">Lyon</｜DSML｜parameter>\n' +
  '</｜DSML｜invoke>\n</｜DSML｜tool_calls>';

// Seeded sampling (temperature, top_p, seed) with logprobs, each request non-streamed and streamed:
// the tokens must be identical between the two, and between runs on different numbers of ranks.
async function seededRequests() {
  const prompts = ['Write a line.', 'Name three colours.', 'Count to five.'];
  const results = [];
  for (let i = 0; i < prompts.length; ++i) {
    const req = { model: 'tiny', messages: [{ role: 'user', content: prompts[i] }], max_tokens: 12, seed: 1000 + i,
                  temperature: 0.9, top_p: 0.95, logprobs: true };
    const ns = await client.chat.completions.create(req);
    const st = await collect(await client.chat.completions.create({ ...req, stream: true }));
    const c = ns.choices[0];
    const nsTokens = c.logprobs ? c.logprobs.content.map((e) => e.token) : [];
    check(nsTokens.length === ns.usage.completion_tokens || (c.finish_reason === 'stop' && nsTokens.length + 1 >= ns.usage.completion_tokens),
          `seeded request ${i}: one logprob entry per generated token (${nsTokens.length})`);
    check(JSON.stringify(st.tokens) === JSON.stringify(nsTokens) && st.content === (c.message.content || '') &&
          st.reasoning === (c.message.reasoning_content || '') && st.finish === c.finish_reason,
          `seeded request ${i}: streamed tokens equal non-streamed tokens`);
    results.push({ prompt: prompts[i], seed: req.seed, tokens: nsTokens, content: c.message.content || '',
                   reasoning: c.message.reasoning_content || '', finish: c.finish_reason });
  }
  if (process.env.SEEDED_OUT) fs.writeFileSync(process.env.SEEDED_OUT, JSON.stringify(results, null, 2));
  if (process.env.SEEDED_REF) {
    const ref = JSON.parse(fs.readFileSync(process.env.SEEDED_REF, 'utf8'));
    for (let i = 0; i < results.length; ++i) {
      check(JSON.stringify(results[i]) === JSON.stringify(ref[i]),
            `seeded request ${i}: same tokens as the reference run (${process.env.SEEDED_REF})`);
    }
  }
}

async function main() {
  const health = await waitHealthy(base);
  const ranks = Number(process.env.EXPECT_RANKS || 1);
  check(health.status === 'ok' && health.ranks === ranks, `/health ready over ${ranks} rank(s)`);
  await seededRequests();
  if (process.env.ONLY_SEEDED === '1') return;
  const models = await client.models.list();
  check(models.data.length === 1 && models.data[0].id === 'tiny', 'models.list serves tiny');

  // Plain chat, thinking mode (default): reasoning_content present.
  const plain = await client.chat.completions.create({
    model: 'tiny', messages: [{ role: 'user', content: 'Hello there!' }], max_tokens: 10, seed: 7, temperature: 0.8 });
  const pm = plain.choices[0].message;
  check(pm.role === 'assistant' && plain.object === 'chat.completion', 'plain chat returns an assistant message');
  check(typeof pm.reasoning_content === 'string' && pm.reasoning_content.length > 0, 'reasoning_content present in thinking mode');
  check(plain.usage.completion_tokens >= 1 && plain.usage.prompt_tokens > 0, 'usage reported');

  // Chat mode: no reasoning.
  const chat = await client.chat.completions.create({
    model: 'tiny', messages: [{ role: 'user', content: 'Hello there!' }], max_tokens: 6, seed: 7,
    thinking: { type: 'disabled' } });
  check(chat.choices[0].message.reasoning_content === undefined && typeof chat.choices[0].message.content === 'string',
        'thinking disabled: content only');

  // Streamed vs non-streamed, same seed.
  const req = { model: 'tiny', messages: [{ role: 'user', content: 'Write a line.' }], max_tokens: 12, seed: 99,
                temperature: 0.9, top_p: 0.95 };
  const ns = await client.chat.completions.create(req);
  const st = await collect(await client.chat.completions.create({ ...req, stream: true,
                                                                   stream_options: { include_usage: true } }));
  check(st.roleSeen, 'stream starts with the assistant role');
  check(st.reasoning === (ns.choices[0].message.reasoning_content || '') &&
        st.content === (ns.choices[0].message.content || ''), 'streamed text equals non-streamed text');
  check(st.finish === ns.choices[0].finish_reason, 'same finish_reason');
  check(st.usage && st.usage.completion_tokens === ns.usage.completion_tokens, 'same usage');

  // Tool-call round trip (forced completion through the test hook).
  const messages = [{ role: 'user', content: 'What is the weather in Lyon?' }];
  const t1 = await client.chat.completions.create({
    model: 'tiny', messages, tools: [weatherTool], max_tokens: 200, test_hook_forced_output: toolCallText });
  const m1 = t1.choices[0].message;
  check(t1.choices[0].finish_reason === 'tool_calls', 'finish_reason tool_calls');
  check(m1.tool_calls && m1.tool_calls.length === 1 && m1.tool_calls[0].function.name === 'get_weather',
        'tool call parsed into tool_calls');
  check(JSON.parse(m1.tool_calls[0].function.arguments).city === 'Lyon', 'tool call arguments are JSON');
  check(m1.content === 'Let me check.' && m1.reasoning_content === 'The user wants the weather; call the tool.',
        'content and reasoning around the call');
  // Same request streamed: tool-call deltas with id and argument fragments.
  const s1 = await collect(await client.chat.completions.create({
    model: 'tiny', messages, tools: [weatherTool], max_tokens: 200, test_hook_forced_output: toolCallText, stream: true }));
  check(s1.calls[0] && s1.calls[0].id && s1.calls[0].id.startsWith('call_') && s1.calls[0].name === 'get_weather' &&
        s1.calls[0].arguments === m1.tool_calls[0].function.arguments && s1.finish === 'tool_calls',
        'streamed tool call equals the non-streamed one');
  messages.push({ role: 'assistant', content: m1.content, reasoning_content: m1.reasoning_content, tool_calls: m1.tool_calls });
  messages.push({ role: 'tool', tool_call_id: m1.tool_calls[0].id, content: '{"temperature_c": 21}' });
  const t2 = await collect(await client.chat.completions.create({
    model: 'tiny', messages, tools: [weatherTool], max_tokens: 200, stream: true,
    stream_options: { include_usage: true },
    test_hook_forced_output: 'It is 21 C.</think>It is 21 degrees in Lyon.' }));
  check(t2.content === 'It is 21 degrees in Lyon.' && t2.reasoning === 'It is 21 C.' && t2.finish === 'stop',
        'answer after the tool result streamed');
  const cached = t2.usage.prompt_tokens_details ? t2.usage.prompt_tokens_details.cached_tokens : 0;
  console.log(`tool round trip: second turn ${t2.usage.prompt_tokens} prompt tokens, ${cached} reused from the first turn`);
  check(cached > 0, 'second agent turn reuses the first turn\'s state');

  // Load test: 64 concurrent streaming clients, 128 requests, greedy; every stream must equal the
  // sequential non-streamed reference for its prompt (no lost or duplicated tokens).
  const prompts = ['Alpha', 'Bravo', 'Charlie', 'Delta'].map((w) => `Tell me about ${w}.`);
  const loadReq = (p) => ({ model: 'tiny', messages: [{ role: 'user', content: p }], max_tokens: 12, temperature: 0,
                            thinking: { type: 'disabled' } });
  const refs = [];
  for (const p of prompts) refs.push(await client.chat.completions.create(loadReq(p)));
  const clients = Number(process.env.LOAD_CLIENTS || 64), total = Number(process.env.LOAD_REQUESTS || 128);
  let next = 0, mismatches = 0, tokens = 0;
  const ttft = [], itl = [];
  const t0 = Date.now();
  async function worker() {
    while (next < total) {
      const i = next++;
      const ref = refs[i % prompts.length];
      const r = await collect(await client.chat.completions.create({ ...loadReq(prompts[i % prompts.length]), stream: true,
                                                                      stream_options: { include_usage: true } }));
      if (r.content !== (ref.choices[0].message.content || '') || r.usage.completion_tokens !== ref.usage.completion_tokens ||
          r.finish !== ref.choices[0].finish_reason) mismatches++;
      tokens += r.usage.completion_tokens;
      if (r.firstDeltaMs !== null) ttft.push(r.firstDeltaMs);
      for (let k = 1; k < r.deltaTimes.length; ++k) itl.push(r.deltaTimes[k] - r.deltaTimes[k - 1]);
    }
  }
  await Promise.all(Array.from({ length: clients }, worker));
  const wall = (Date.now() - t0) / 1000;
  const results = { clients, requests: total, wall_s: wall, requests_per_s: total / wall, completion_tokens: tokens,
                    tokens_per_s: tokens / wall, ttft_ms_p50: pct(ttft, 0.5), ttft_ms_p95: pct(ttft, 0.95),
                    itl_ms_p50: pct(itl, 0.5), itl_ms_p95: pct(itl, 0.95), mismatches };
  console.log(JSON.stringify(results));
  if (process.env.RESULTS) fs.writeFileSync(process.env.RESULTS, JSON.stringify(results, null, 2));
  check(mismatches === 0, `load test: ${total} streams over ${clients} clients equal their references`);

  const metrics = await (await fetch(`${base}/metrics`, { headers: { Authorization: `Bearer ${process.env.API_KEY}` } })).text();
  check(/v4rt_batch_sequences_bucket/.test(metrics) && /v4rt_queue_depth 0/.test(metrics), 'metrics exported');
  const maxBatch = metrics.split('\n').filter((l) => l.startsWith('v4rt_batch_sequences_bucket{le="16"}'));
  console.log(`metrics: ${maxBatch}`);
}

main().then(() => { console.log('e2e: all checks passed'); }, (e) => { console.error(e.stack || String(e)); process.exit(1); });
