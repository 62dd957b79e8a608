// SPDX-License-Identifier: MIT
// `v4rt generate`: prefill a prompt (text through the tokenizer, or token ids from a file), then
// sample up to --max-tokens tokens (greedy by default; temperature / top-p, seeded). Prints the
// generated ids on stdout (and the decoded text when a tokenizer is available), throughput on
// stderr. Stops early at the end-of-sequence token.
// Under `mpirun -np N ... --config <layout>.yaml` the same command runs sharded: rank 0 reads the
// prompt, samples and prints; every rank runs the steps rank 0 broadcasts (launch/driver.h). With
// dp > 1 every replica runs the same prompt and seed.
// `--mtp N` drafts N tokens per step with the checkpoint's MTP block and verifies them in one
// main-model chunk (model/speculative.h): the same greedy output, the same sampling distribution;
// acceptance rate and tokens per verify step on stderr. Every layout: the drafts and verify chunks
// travel in the step plans (Driver::speculate).
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>

#include "common/check.h"
#include "launch/backend_option.h"
#include "launch/commands.h"
#include "launch/driver.h"
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
};

void print_text(const std::vector<int32_t>& out, model::text::Tokenizer* tok) {
  if (!tok) return;
  std::vector<int32_t> printable;
  for (int32_t id : out)
    if (id < tok->vocab_size()) printable.push_back(id);
  std::printf("%s\n", tok->decode(printable).c_str());
}

// Speculative decoding with the MTP block, on the leader; every rank runs the drafts and the
// verify chunks through the Driver (model::SpeculativeSequence), so any layout works.
void generate_speculative(const GenerateArgs& args, ModelRun& run, const std::vector<int32_t>& ids,
                          model::text::Tokenizer* tok) {
  model::Model& m = run.model();
  Driver& driver = run.driver();
  V4RT_REQUIRE(args.mtp <= model::max_draft_depth(m.config()),
               "--mtp " << args.mtp << " exceeds the window: at most " << model::max_draft_depth(m.config()));
  model::SpeculativeSampler sampler({args.temperature, args.top_p, args.seed});
  const int64_t eos = m.config().eos_token_id;
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<int32_t> out;
  auto emit = [&](int32_t t) {
    std::printf("%s%d", out.empty() ? "" : " ", t);
    std::fflush(stdout);
    out.push_back(t);
  };
  std::vector<std::vector<float>> logits;
  if (args.max_tokens > 0) {
    // Prompt chunks of at most kPromptChunk tokens bound the streams kept for the MTP block.
    constexpr size_t kPromptChunk = 256;
    for (size_t b = 0; b < ids.size(); b += kPromptChunk) {
      const size_t e = std::min(ids.size(), b + kPromptChunk);
      ForwardPlan plan;
      ForwardChunk c;
      c.tokens.assign(ids.begin() + ptrdiff_t(b), ids.begin() + ptrdiff_t(e));
      c.hidden = true;
      plan.chunks.push_back(std::move(c));
      driver.step(plan, e == ids.size() ? &logits : nullptr);
    }
    emit(sampler.sample(logits[0]));
  }
  const auto t1 = std::chrono::steady_clock::now();
  SpeculativeTurn turn;
  turn.sampler = &sampler;
  while (int(out.size()) < args.max_tokens && out.back() != eos) {
    turn.next = out.back();
    driver.speculate(args.mtp, std::span<SpeculativeTurn>(&turn, 1), ForwardPlan(), nullptr);
    for (int32_t t : turn.emitted()) {
      if (int(out.size()) == args.max_tokens || out.back() == eos) break;
      emit(t);
    }
  }
  std::printf("\n");
  std::fflush(stdout);
  const auto t2 = std::chrono::steady_clock::now();
  print_text(out, tok);
  const double prefill_s = std::chrono::duration<double>(t1 - t0).count();
  const double decode_s = std::chrono::duration<double>(t2 - t1).count();
  const model::SpeculativeStats& st = driver.speculative_stats();
  std::fprintf(stderr, "prefill: %zu tokens in %.3f s (%.1f tokens/s); decode: %zu tokens in %.3f s (%.1f tokens/s)\n",
               ids.size(), prefill_s, double(ids.size()) / prefill_s, out.size(), decode_s,
               out.size() > 1 ? double(out.size() - 1) / decode_s : 0.0);
  std::fprintf(stderr, "mtp: depth %d, %lld verify steps, acceptance rate %.3f (%lld of %lld drafts), %.2f tokens per"
               " verify step; draft %.3f s, verify %.3f s\n", args.mtp, static_cast<long long>(st.steps),
               st.acceptance_rate(), static_cast<long long>(st.accepted), static_cast<long long>(st.drafted),
               st.tokens_per_step(), st.draft_s, st.verify_s);
}

void run_generate(const GenerateArgs& args) {
  V4RT_REQUIRE(args.prompt.empty() != args.ids_file.empty(), "give exactly one of --prompt or --ids");
  V4RT_REQUIRE(args.max_tokens >= 0, "--max-tokens must be >= 0");
  V4RT_REQUIRE(args.mtp >= 0 && args.mtp <= 8, "--mtp must be in [0, 8]");
  RunOptions ro = args.run;
  ro.mtp = args.mtp > 0;
  ModelRun run(ro);
  if (!run.leader()) {
    run.driver().follow();
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
  if (args.mtp > 0) {
    generate_speculative(args, run, ids, tok.get());
    return;
  }
  model::Sampler sampler({args.temperature, args.top_p, args.seed});

  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::vector<float>> logits;
  ForwardPlan plan;
  plan.chunks.push_back({0, false, ids});
  run.driver().step(plan, &logits);
  const auto t1 = std::chrono::steady_clock::now();
  std::vector<int32_t> out;
  for (int i = 0; i < args.max_tokens; ++i) {
    const int32_t next = sampler.sample(logits[0]);
    out.push_back(next);
    std::printf("%s%d", i ? " " : "", next);
    std::fflush(stdout);
    if (next == m.config().eos_token_id || i + 1 == args.max_tokens) break;
    plan.chunks[0].tokens.assign(1, next);
    run.driver().step(plan, &logits);
  }
  std::printf("\n");
  std::fflush(stdout);
  const auto t2 = std::chrono::steady_clock::now();
  print_text(out, tok.get());
  const double prefill_s = std::chrono::duration<double>(t1 - t0).count();
  const double decode_s = std::chrono::duration<double>(t2 - t1).count();
  std::fprintf(stderr, "prefill: %zu tokens in %.3f s (%.1f tokens/s); decode: %zu tokens in %.3f s (%.1f tokens/s)\n",
               ids.size(), prefill_s, double(ids.size()) / prefill_s, out.size(), decode_s,
               out.empty() ? 0.0 : double(out.size()) / decode_s);
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
  cmd->callback([args] { run_generate(*args); });
}

}  // namespace v4rt::launch
