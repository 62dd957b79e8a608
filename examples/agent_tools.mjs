// SPDX-License-Identifier: MIT
// A tool-calling agent loop over `v4rt serve` with the official `openai` npm client: the model may
// call `get_weather`; the loop runs the tool, sends the result back as a `tool` message and asks
// again, until the model answers without a call (at most MAX_TURNS requests).
//   npm install openai@4
//   node examples/agent_tools.mjs "Should I take an umbrella in Lyon today?"
// Environment: BASE_URL (default http://127.0.0.1:8080), API_KEY, MODEL (default: the one the server
// lists on /v1/models), MAX_TURNS (default 4).
//
// SCRIPTED=1 is for CI against the embedded tiny model, whose weights are random so it never calls
// a tool by itself: each turn then carries the reply the model must produce (the server's
// `test_hook_forced_output` request field, accepted only when the server runs with
// `debug.test_hook_forced_output: true`): a call of get_weather on the first turn, an answer on the
// second. Everything else (the request, the parsed tool call, the tool message, the second turn
// that reuses the first turn's state) is the real path.
import OpenAI from 'openai';

const base = process.env.BASE_URL || 'http://127.0.0.1:8080';
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: process.env.API_KEY || 'none', timeout: 120000 });
// The server serves one model; the requests name it as /v1/models lists it.
const model = process.env.MODEL || (await client.models.list()).data[0].id;
const maxTurns = Number(process.env.MAX_TURNS || 4);
const scripted = process.env.SCRIPTED === '1';

const tools = [{
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'Current weather of a city',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
  },
}];

// The tools this agent can run, by name.
const implementations = {
  get_weather: ({ city }) => ({ city, temperature_c: 14, rain_mm_next_6h: 3.5 }),
};

const scriptedReplies = [
  'The user asks about rain in Lyon; I should check the weather.</think>Let me check the weather.\n\n' +
    '<｜DSML｜tool_calls>\n<｜DSML｜invoke name="get_weather">\n' +
    '<｜DSML｜parameter name="city" string="true">Lyon</｜DSML｜parameter>\n' +
    '</｜DSML｜invoke>\n</｜DSML｜tool_calls>',
  '3.5 mm of rain are expected.</think>Yes: 3.5 mm of rain are expected in Lyon in the next hours.',
];

const messages = [{ role: 'user', content: process.argv[2] || 'Should I take an umbrella in Lyon today?' }];
let toolResults = 0;
for (let turn = 0; turn < maxTurns; ++turn) {
  const request = { model, messages, tools, max_tokens: 256 };
  if (scripted) request.test_hook_forced_output = scriptedReplies[Math.min(turn, scriptedReplies.length - 1)];
  const response = await client.chat.completions.create(request);
  const choice = response.choices[0];
  const msg = choice.message;
  const cached = response.usage.prompt_tokens_details ? response.usage.prompt_tokens_details.cached_tokens : 0;
  console.log(`turn ${turn + 1}: finish_reason ${choice.finish_reason}, ${response.usage.prompt_tokens} prompt tokens ` +
              `(${cached} reused), ${response.usage.completion_tokens} completion tokens`);
  if (msg.reasoning_content) console.log(`  thinking: ${msg.reasoning_content}`);
  if (msg.content) console.log(`  says: ${msg.content}`);
  // The assistant turn goes back into the conversation as it came (reasoning and calls included).
  messages.push({ role: 'assistant', content: msg.content, reasoning_content: msg.reasoning_content,
                  tool_calls: msg.tool_calls });
  if (!msg.tool_calls || msg.tool_calls.length === 0) {
    console.log(`answer after ${turn + 1} turn(s) and ${toolResults} tool result(s): ${msg.content}`);
    process.exit(scripted && toolResults !== 1 ? 1 : 0);
  }
  for (const call of msg.tool_calls) {
    const run = implementations[call.function.name];
    const result = run ? run(JSON.parse(call.function.arguments)) : { error: `unknown tool ${call.function.name}` };
    console.log(`  calls ${call.function.name}(${call.function.arguments}) -> ${JSON.stringify(result)}`);
    messages.push({ role: 'tool', tool_call_id: call.id, content: JSON.stringify(result) });
    ++toolResults;
  }
}
console.log(`no answer within ${maxTurns} turns`);
process.exit(1);
