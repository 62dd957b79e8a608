// SPDX-License-Identifier: MIT
// Streaming chat with the official `openai` npm client against `v4rt serve`:
//   npm install openai@4                   (once, in this folder or a parent)
//   v4rt serve --config configs/default.yaml &
//   node examples/chat_stream.mjs "Write a haiku about GPUs."
// Environment: BASE_URL (default http://127.0.0.1:8080), API_KEY (the server's api_key, if any),
// MODEL (default: the one model the server lists on /v1/models), MAX_TOKENS (default 128).
// Prints the reasoning (thinking mode) and the answer as they stream, then the token usage; exits 1
// when the stream ends without a finish reason.
import OpenAI from 'openai';

const base = process.env.BASE_URL || 'http://127.0.0.1:8080';
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: process.env.API_KEY || 'none', timeout: 120000 });
// The server serves one model; the requests name it as /v1/models lists it.
const model = process.env.MODEL || (await client.models.list()).data[0].id;
const prompt = process.argv[2] || 'Explain in two sentences what a KV cache is.';

const stream = await client.chat.completions.create({
  model,
  messages: [{ role: 'user', content: prompt }],
  max_tokens: Number(process.env.MAX_TOKENS || 128),
  stream: true,
  stream_options: { include_usage: true },
});

let inReasoning = false;
let finish = null;
let usage = null;
let chunks = 0;
for await (const chunk of stream) {
  if (chunk.usage) usage = chunk.usage;
  const choice = chunk.choices && chunk.choices[0];
  if (!choice) continue;
  const delta = choice.delta || {};
  if (delta.reasoning_content) {
    if (!inReasoning) process.stdout.write('[thinking] ');
    inReasoning = true;
    process.stdout.write(delta.reasoning_content);
  }
  if (delta.content) {
    if (inReasoning) process.stdout.write('\n[answer] ');
    inReasoning = false;
    process.stdout.write(delta.content);
  }
  if (delta.reasoning_content || delta.content) ++chunks;
  if (choice.finish_reason) finish = choice.finish_reason;
}
process.stdout.write('\n');
console.log(`finish_reason: ${finish}; ${chunks} text chunks; usage: ${JSON.stringify(usage)}`);
if (!finish) process.exit(1);
