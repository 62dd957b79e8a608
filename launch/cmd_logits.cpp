// SPDX-License-Identifier: MIT
// `v4rt logits`: runs a token sequence through the model and writes the logits after every token
// (row i = logits after token i) to a safetensors file (F32 tensor `logits` [len(ids), vocab]).
// The prompt part [0, decode-from) is fed in chunks of --prefill-chunk tokens (alias --chunk;
// default: the config's prefill_chunk, 8192 unless set; 0: one chunk), the rest one token at a
// time, exercising the prefill -> decode state hand-over. Each step is a StepPlan run through the
// runtime Leader.
// Under `mpirun -np N ... --config <layout>.yaml` the same command runs sharded: rank 0 reads the
// ids, drives the steps (runtime/leader.h) and writes the file; with dp > 1 every replica computes
// the same sequence.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <span>

#include "common/check.h"
#include "launch/backend_option.h"
#include "launch/commands.h"
#include "launch/model_run.h"
#include "runtime/leader.h"
#include "model/safetensors.h"
#include "model/token_ids.h"

namespace v4rt::launch {

namespace {

struct LogitsArgs {
  RunOptions run;
  std::string ids_file;
  int prefill_chunk = -1;    // -1: the config's prefill_chunk; 0: whole prompt in one chunk
  int64_t decode_from = -1;  // -1 = no decode steps
  std::string out;
};

void run_logits(const LogitsArgs& args) {
  const int64_t chunk = resolve_prefill_chunk(args.prefill_chunk, args.run.config);
  ModelRun run(args.run);
  if (!run.leader()) {
    run.follow();
    return;
  }
  const std::vector<int32_t> ids = model::read_token_ids(args.ids_file);
  V4RT_REQUIRE(!ids.empty(), args.ids_file << ": no token ids");
  const int64_t len = int64_t(ids.size());
  const int64_t decode_from = args.decode_from < 0 ? len : std::min<int64_t>(args.decode_from, len);
  const int64_t vocab = run.model().config().vocab_size;
  for (int32_t id : ids) V4RT_REQUIRE(id >= 0 && id < vocab, args.ids_file << ": token id " << id << " outside the vocabulary of " << vocab);

  std::vector<float> all(size_t(len * vocab));
  const auto t0 = std::chrono::steady_clock::now();
  constexpr runtime::SeqId kSeq = 1;
  runtime::Leader& leader = run.lead();
  int64_t pos = 0;
  std::vector<std::vector<float>> logits;
  for (uint64_t step = 1; pos < len; ++step) {
    const int64_t n = pos < decode_from ? (chunk > 0 ? std::min(chunk, decode_from - pos) : decode_from - pos) : 1;
    runtime::StepPlan plan;
    plan.step_idx = step;
    plan.add_chunk(kSeq, pos, std::span<const int32_t>(ids).subspan(size_t(pos), size_t(n)), runtime::kLogitsAll);
    if (pos + n == len) plan.releases.push_back(kSeq);
    leader.run(plan, &logits);
    std::memcpy(all.data() + pos * vocab, logits[0].data(), logits[0].size() * sizeof(float));
    pos += n;
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::fprintf(stderr, "logits: %lld tokens in %.2f s (%.1f tokens/s)\n", static_cast<long long>(len), secs,
               double(len) / secs);

  model::safetensors::WriteTensor t;
  t.name = "logits";
  t.dtype = DType::kF32;
  t.shape = {len, vocab};
  t.bytes.resize(all.size() * sizeof(float));
  std::memcpy(t.bytes.data(), all.data(), t.bytes.size());
  model::safetensors::write_file(args.out, {t});
}

}  // namespace

void register_logits(CLI::App& app) {
  auto args = std::make_shared<LogitsArgs>();
  CLI::App* cmd = app.add_subcommand("logits", "Logits after every token of a sequence, to a safetensors file");
  cmd->add_option("--model", args->run.model_dir, "Checkpoint directory (config.json + safetensors)")->required();
  cmd->add_option("--ids", args->ids_file, "Token ids: text list of integers or safetensors with input_ids")->required();
  cmd->add_option("--prefill-chunk,--chunk", args->prefill_chunk,
                  "Prefill chunk size (overrides the config's `prefill_chunk:`; 0 = the whole prompt at once)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--decode-from", args->decode_from, "Feed tokens from this index one at a time (decode)");
  cmd->add_option("--numerics", args->run.numerics, "reference (fp32) | official (DeepSeek rounding points)")
      ->check(CLI::IsMember({"reference", "official"}));
  cmd->add_option("--config", args->run.config,
                  "Runtime YAML whose `parallel:` section is the layout (run under mpirun -np dp*sp*tp)");
  add_backend_option(cmd, &args->run.backend, &args->run.device);
  add_no_graphs_flag(cmd, &args->run.graphs);
  cmd->add_option("--out", args->out, "Output safetensors file (F32 `logits` [len, vocab])")->required();
  cmd->callback([args] { run_logits(*args); });
}

}  // namespace v4rt::launch
