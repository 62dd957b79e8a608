// SPDX-License-Identifier: MIT
// Bounded loopback load test of `v4rt serve` (run by run_serve_load.sh): CLIENTS concurrent
// streaming clients (official `openai` npm client) issue greedy chat requests with logprobs for
// DURATION_S seconds (all connecting at once, or spread over RAMP_MS); requests started before the
// deadline run to their end. Every stream is
// compared with the sequential non-streamed reference of its prompt, token by token (the streamed
// logprobs name each token once), so a lost or duplicated token or response is a mismatch. The
// server's resident memory (SERVER_PID) is sampled every second. Prints one LOAD_FIGURES line and
// exits non-zero on any error, mismatch, or memory growth past RSS_LIMIT_MB over the start.
'use strict';
const OpenAI = require('openai');
const fs = require('fs');
const { check, waitHealthy, collect, pct, rssMiB } = require('./serve_util.cjs');

const base = process.env.BASE_URL;
const clients = Number(process.env.CLIENTS || 200);
const durationS = Number(process.env.DURATION_S || 60);
const maxTokens = Number(process.env.MAX_TOKENS || 8);
const serverPid = Number(process.env.SERVER_PID || 0);
const rampMs = Number(process.env.RAMP_MS || 0);
const rssLimitMiB = Number(process.env.RSS_LIMIT_MB || 3072);
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: process.env.API_KEY, maxRetries: 0, timeout: 600000 });

const words = ['Alpha', 'Bravo', 'Charlie', 'Delta', 'Echo', 'Foxtrot', 'Golf', 'Hotel'];
const prompts = words.map((w) => `Tell me about ${w}.`);
const request = (p) => ({ model: 'tiny', messages: [{ role: 'user', content: p }], max_tokens: maxTokens,
                          temperature: 0, logprobs: true, thinking: { type: 'disabled' } });

async function main() {
  await waitHealthy(base);
  const refs = [];
  for (const p of prompts) {
    const r = await client.chat.completions.create(request(p));
    const c = r.choices[0];
    refs.push({ content: c.message.content || '', tokens: c.logprobs.content.map((e) => e.token), finish: c.finish_reason });
  }
  const rss = [];
  const sample = () => { const v = serverPid ? rssMiB(serverPid) : null; if (v !== null) rss.push(v); return v; };
  const rssStart = sample();
  const sampler = setInterval(sample, 1000);

  let started = 0, completed = 0, tokens = 0, mismatches = 0;
  const errors = {};
  const ttft = [];
  const t0 = Date.now(), deadline = t0 + durationS * 1000;
  async function worker(w) {
    if (rampMs > 0) await new Promise((res) => setTimeout(res, (w * rampMs) / clients));
    for (let k = 0; k === 0 || Date.now() < deadline; ++k) {  // every client sends at least one request
      const i = (w + k) % prompts.length;
      ++started;
      try {
        const r = await collect(await client.chat.completions.create({ ...request(prompts[i]), stream: true,
                                                                        stream_options: { include_usage: true } }));
        const ref = refs[i];
        if (r.content !== ref.content || JSON.stringify(r.tokens) !== JSON.stringify(ref.tokens) ||
            r.finish !== ref.finish || !r.usage || r.usage.completion_tokens !== ref.tokens.length) {
          if (mismatches++ < 3) console.log(`mismatch: prompt ${i}: ${JSON.stringify(r.tokens)} vs ${JSON.stringify(ref.tokens)}`);
        }
        ++completed;
        tokens += r.tokens.length;
        if (r.firstDeltaMs !== null) ttft.push(r.firstDeltaMs);
      } catch (e) {
        const kind = e.status ? `status_${e.status}` : (e.code ? `code_${e.code}` : e.constructor.name);
        if (!errors[kind]) {
          console.log(`error after ${((Date.now() - t0) / 1000).toFixed(1)} s: ${kind}: ${e.message}` +
                      (e.cause ? ` (${e.cause.code || ''} ${e.cause.message})` : ''));
        }
        errors[kind] = (errors[kind] || 0) + 1;
      }
    }
  }
  await Promise.all(Array.from({ length: clients }, (_, w) => worker(w)));
  const wall = (Date.now() - t0) / 1000;
  await new Promise((res) => setTimeout(res, 2000));  // the server settles (prefix cache kept)
  clearInterval(sampler);
  const rssEnd = sample();
  const numErrors = Object.values(errors).reduce((a, b) => a + b, 0);
  const fig = { clients, duration_s: durationS, wall_s: wall, requests_started: started, requests_completed: completed,
                completion_tokens: tokens, errors: numErrors, error_kinds: errors, mismatches,
                requests_per_s: +(completed / wall).toFixed(2), tokens_per_s: +(tokens / wall).toFixed(1),
                ttft_ms_p50: pct(ttft, 0.5), ttft_ms_p99: pct(ttft, 0.99),
                rss_mb_start: rssStart && +rssStart.toFixed(1), rss_mb_peak: rss.length ? +Math.max(...rss).toFixed(1) : null,
                rss_mb_end: rssEnd && +rssEnd.toFixed(1), rss_samples: rss.length };
  console.log(`LOAD_FIGURES ${JSON.stringify(fig)}`);
  if (process.env.RESULTS) fs.writeFileSync(process.env.RESULTS, JSON.stringify(fig, null, 2));
  check(completed === started && numErrors === 0, `load: all ${started} requests completed without error`);
  check(mismatches === 0, 'load: every stream equals its reference token by token (nothing lost or duplicated)');
  if (serverPid) {
    check(rss.length > 0 && fig.rss_mb_peak - fig.rss_mb_start <= rssLimitMiB,
          `load: server memory bounded (peak ${fig.rss_mb_peak} MiB, start ${fig.rss_mb_start} MiB, limit +${rssLimitMiB} MiB)`);
  }
}

main().catch((e) => { console.error(e.stack || String(e)); process.exit(1); });
