// SPDX-License-Identifier: MIT
// `v4rt generate`: prefill a prompt (text through the tokenizer, or token ids from a file), then
// sample up to --max-tokens tokens (greedy by default; temperature / top-p, seeded). Prints the
// generated ids on stdout (and the decoded text when a tokenizer is available), throughput on
// stderr. Stops early at the end-of-sequence token. The prompt is one request to the runtime
// Engine (the scheduler serve and batch use), prefilled in one chunk or in chunks of
// --prefill-chunk tokens.
// Under `mpirun -np N ... --config <layout>.yaml` the same command runs sharded: rank 0 reads the
// prompt, samples and prints; every rank runs the steps rank 0 broadcasts (runtime/leader.h). With
// dp > 1 every replica runs the same prompt and seed.
// `--mtp N` drafts N tokens per step with the checkpoint's MTP block and verifies them in one
// main-model chunk (model/speculative.h): the same greedy output, the same sampling distribution;
// acceptance rate and tokens per verify step on stderr. The scheduler plans the drafts and verify
// chunks, so every layout works.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <string>
#include <chrono>
#include <cstdio>
#include <memory>

#include "common/check.h"
#include "launch/backend_option.h"
#include "launch/commands.h"
#include "launch/model_run.h"
#include "launch/runtime_config.h"
#include "runtime/engine.h"
#include "model/mtp.h"
#include "model/sampler.h"
#include "model/speculative.h"
#include "model/text/tokenizer.h"
#include "model/token_ids.h"

namespace v4rt::launch {

namespace {

struct GenerateArgs {
  RunOptions run;
  std::string prompt;
  std::string ids_file;
  std::string tokenizer;
  int max_tokens = 32;
  double temperature = 0.0;
  double top_p = 1.0;
  uint64_t seed = 0;
  int mtp = 0;  // draft depth; 0: no drafting
  int prefill_chunk = -1;  // -1: the config's prefill_chunk
};

void print_text(const std::vector<int32_t>& out, model::text::Tokenizer* tok) {
  if (!tok) return;
  std::vector<int32_t> printable;
  for (int32_t id : out)
    if (id < tok->vocab_size()) printable.push_back(id);
  std::printf("%s\n", tok->decode(printable).c_str());
}

// The prompt as one request to the runtime Engine (runtime/engine.h); the tokens are printed as
// the engine streams them. `--mtp N` makes the scheduler decode speculatively.
void run_generate(const GenerateArgs& args) {
  V4RT_REQUIRE(args.prompt.empty() != args.ids_file.empty(), "give exactly one of --prompt or --ids");
  V4RT_REQUIRE(args.max_tokens >= 0, "--max-tokens must be >= 0");
  V4RT_REQUIRE(args.mtp >= 0 && args.mtp <= 8, "--mtp must be in [0, 8]");
  const int prefill_chunk = resolve_prefill_chunk(args.prefill_chunk, args.run.config);
  RunOptions ro = args.run;
  ro.mtp = args.mtp > 0;
  ModelRun run(ro);
  if (!run.leader()) {
    run.follow();
    return;
  }
  std::unique_ptr<model::text::Tokenizer> tok;
  std::vector<int32_t> ids;
  if (!args.prompt.empty()) {
    tok = std::make_unique<model::text::Tokenizer>(model::text::find_tokenizer_path(args.tokenizer, args.run.model_dir));
    ids = tok->encode(args.prompt);
  } else {
    ids = model::read_token_ids(args.ids_file);
    if (!args.tokenizer.empty()) tok = std::make_unique<model::text::Tokenizer>(args.tokenizer);
  }
  V4RT_REQUIRE(!ids.empty(), "empty prompt");
  model::Model& m = run.model();
  for (int32_t id : ids) {
    V4RT_REQUIRE(id >= 0 && id < m.config().vocab_size,
                 "prompt token id " << id << " outside the vocabulary of " << m.config().vocab_size);
  }
  V4RT_REQUIRE(args.mtp <= model::max_draft_depth(m.config()),
               "--mtp " << args.mtp << " exceeds the window: at most " << model::max_draft_depth(m.config()));
  const int32_t eos = int32_t(m.config().eos_token_id);

  runtime::SchedulerOptions so;
  so.max_batch_tokens = std::max<int>(prefill_chunk > 0 ? prefill_chunk : int(ids.size()), args.mtp + 1);
  so.max_running = 1;
  so.max_queue = 1;
  so.kv_budget_bytes = int64_t(1) << 62;  // one request: no admission limit
  so.prefix_cache.enabled = false;
  so.eos_token_id = eos;
  so.mtp_depth = args.mtp;
  so.prefill_chunk = prefill_chunk;
  so.device_sampling =
      draws_on_device(args.run.config.empty() ? RuntimeConfig{} : load_runtime_config(args.run.config), m.backend());
  runtime::Metrics metrics;
  runtime::Engine engine(run.lead(), so, &metrics);
  auto req = std::make_shared<runtime::Request>();
  req->prompt = ids;
  req->sampling.temperature = args.temperature;
  req->sampling.top_p = args.top_p;
  req->sampling.seed = args.seed;
  req->sampling.max_tokens = args.max_tokens;

  const auto t0 = std::chrono::steady_clock::now();
  auto t1 = t0;
  std::vector<int32_t> out;
  auto emit = [&](int32_t t) {
    if (out.empty()) t1 = std::chrono::steady_clock::now();
    std::printf("%s%d", out.empty() ? "" : " ", t);
    std::fflush(stdout);
    out.push_back(t);
  };
  if (args.max_tokens > 0) {
    engine.start();
    const runtime::SubmitResult submitted = engine.submit(req);
    V4RT_REQUIRE(submitted.status == 200, "generate: " << submitted.message);
    for (;;) {
      std::vector<runtime::TokenEvent> events;
      std::string message;
      const runtime::FinishReason reason = req->stream->wait(&events, std::chrono::milliseconds(100), &message);
      for (const runtime::TokenEvent& e : events) emit(e.token);
      if (reason == runtime::FinishReason::kNone) continue;
      if (reason == runtime::FinishReason::kEos) emit(eos);  // the end-of-sequence token is printed too
      V4RT_REQUIRE(reason == runtime::FinishReason::kEos || reason == runtime::FinishReason::kLength,
                   "generate: " << runtime::finish_reason_name(reason) << ": " << message);
      break;
    }
    engine.stop();
  }
  std::printf("\n");
  std::fflush(stdout);
  const auto t2 = std::chrono::steady_clock::now();
  print_text(out, tok.get());
  const double prefill_s = std::chrono::duration<double>(t1 - t0).count();
  const double decode_s = std::chrono::duration<double>(t2 - t1).count();
  std::fprintf(stderr, "prefill: %zu tokens in %.3f s (%.1f tokens/s); decode: %zu tokens in %.3f s (%.1f tokens/s)\n",
               ids.size(), prefill_s, double(ids.size()) / prefill_s, out.size(), decode_s,
               out.size() > 1 ? double(out.size() - 1) / decode_s : 0.0);
  if (args.mtp > 0) {
    const model::SpeculativeStats st = engine.speculative_stats();
    std::fprintf(stderr, "mtp: depth %d, %lld verify steps, acceptance rate %.3f (%lld of %lld drafts), %.2f tokens per"
                 " verify step; draft %.3f s, verify %.3f s\n", args.mtp, static_cast<long long>(st.steps),
                 st.acceptance_rate(), static_cast<long long>(st.accepted), static_cast<long long>(st.drafted),
                 st.tokens_per_step(), st.draft_s, st.verify_s);
  }
}

}  // namespace

void register_generate(CLI::App& app) {
  auto args = std::make_shared<GenerateArgs>();
  CLI::App* cmd = app.add_subcommand("generate", "Generate tokens from a prompt");
  cmd->add_option("--model", args->run.model_dir, "Checkpoint directory (config.json + safetensors)")->required();
  cmd->add_option("--prompt", args->prompt, "Prompt text (encoded with the tokenizer, no special tokens)");
  cmd->add_option("--ids", args->ids_file, "Prompt token ids: text list of integers or safetensors input_ids");
  cmd->add_option("--tokenizer", args->tokenizer, "tokenizer.json (default: model dir, $V4RT_TOKENIZER, data/tokenizer)");
  cmd->add_option("--max-tokens", args->max_tokens, "Tokens to generate (default 32)");
  cmd->add_option("--temperature", args->temperature, "Sampling temperature; 0 = greedy (default)");
  cmd->add_option("--top-p", args->top_p, "Nucleus sampling mass in (0, 1] (default 1)");
  cmd->add_option("--seed", args->seed, "Sampler seed (default 0)");
  cmd->add_option("--mtp", args->mtp,
                  "Speculative decoding: draft N tokens per step with the checkpoint's MTP block (default 0: off)");
  cmd->add_option("--numerics", args->run.numerics, "reference | official")->check(CLI::IsMember({"reference", "official"}));
  cmd->add_option("--config", args->run.config,
                  "Runtime YAML whose `parallel:` section is the layout (run under mpirun -np dp*sp*tp)");
  add_backend_option(cmd, &args->run.backend, &args->run.device);
  add_no_graphs_flag(cmd, &args->run.graphs);
  add_prefill_chunk_option(cmd, &args->prefill_chunk);
  cmd->callback([args] { run_generate(*args); });
}

}  // namespace v4rt::launch
