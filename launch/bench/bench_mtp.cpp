// SPDX-License-Identifier: MIT
// `v4rt bench mtp`: speculative decoding with the MTP block against plain decoding on the same
// model and prompt. For each draft depth it prints the acceptance rate, tokens per verify step, the
// plain decode step time, the draft time and verify time per step, the drafting overhead (draft
// time per step over the plain step time) and the end-to-end decode speed-up. The model is a
// checkpoint with an MTP block (--model DIR), or a synthetic one written from a preset into a temp
// dir (tiny by default; flash / pro sliced to --layers, which takes a while to write). Synthetic
// weights: the MTP block is untrained, so the acceptance rate is near zero on a large vocabulary.
#include <CLI/CLI.hpp>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <sstream>
#include <vector>

#include "common/check.h"
#include "launch/backend_option.h"
#include "model/checkpoint.h"
#include "model/model.h"
#include "model/mtp.h"
#include "model/presets.h"
#include "model/sampler.h"
#include "model/speculative.h"
#include "model/synthetic.h"

namespace v4rt::launch {

void register_bench_mtp(CLI::App& bench);

namespace {

namespace fs = std::filesystem;

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

struct MtpArgs {
  std::string model_dir;
  std::string preset = "tiny";
  int layers = 0;              // flash/pro slices; 0: the preset's layers (tiny)
  std::string dir;
  std::string depths = "1,2,3";
  int prompt_len = 32;
  int tokens = 64;
  double temperature = 0.0;
  uint64_t seed = 1;
  std::string numerics = "reference";
  std::string backend = "cpu";
  int device = 0;
  bool graphs = true;  // --no-graphs: false
};

std::vector<int> parse_depths(const std::string& text) {
  std::vector<int> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    int d = 0;
    try {
      d = std::stoi(item);
    } catch (const std::exception&) {
      V4RT_FAIL("--depths: '" << item << "' is not an integer");
    }
    V4RT_REQUIRE(d >= 1 && d <= 8, "--depths: " << d << " outside [1, 8]");
    out.push_back(d);
  }
  V4RT_REQUIRE(!out.empty(), "--depths is empty");
  return out;
}

void run_mtp(const MtpArgs& a) {
  V4RT_REQUIRE(a.prompt_len >= 1 && a.tokens >= 2, "bench mtp: --prompt-len >= 1 and --tokens >= 2");
  const std::vector<int> depths = parse_depths(a.depths);
  std::string dir = a.model_dir;
  bool remove_dir = false;
  if (dir.empty()) {
    model::ModelConfig cfg = model::preset_config(a.preset, /*mtp=*/true);
    if (a.layers > 0) cfg = model::slice_layers(cfg, a.layers);
    dir = a.dir.empty() ? (fs::temp_directory_path() / ("v4rt-bench-mtp-" + a.preset + "-" + std::to_string(getpid()))).string()
                        : a.dir;
    const double t0 = now_s();
    model::SyntheticOptions so;
    so.seed = a.seed;
    const uint64_t bytes = model::write_synthetic_checkpoint(cfg, dir, so);
    std::printf("synthetic checkpoint: preset %s, %d layers + MTP, %.1f MB in %s (%.1f s)\n", a.preset.c_str(),
                cfg.num_hidden_layers, double(bytes) / 1e6, dir.c_str(), now_s() - t0);
    remove_dir = a.dir.empty();
  }
  kernels::BackendOptions backend_options;
  backend_options.device_index = a.device;
  backend_options.cuda_graphs = backend_options.cuda_graphs && a.graphs;
  auto backend = make_selected_backend(a.backend, backend_options);
  auto ckpt = model::Checkpoint::open(dir);
  model::ModelOptions options;
  options.numerics = model::parse_numerics(a.numerics);
  auto m = model::Model::load(*ckpt, options, *backend);
  auto mtp = model::Mtp::load(*ckpt, *m);
  const model::ModelConfig& cfg = m->config();
  std::printf("bench mtp: %s, backend %s, numerics %s, D %lld, %d layers, vocab %lld; prompt %d tokens, %d generated"
              " tokens, temperature %.2f\n", dir.c_str(), a.backend.c_str(), a.numerics.c_str(),
              static_cast<long long>(cfg.hidden_size), cfg.num_hidden_layers, static_cast<long long>(cfg.vocab_size),
              a.prompt_len, a.tokens, a.temperature);
  std::vector<int32_t> prompt;
  uint64_t z = a.seed * 0x9e3779b97f4a7c15ull + 7;
  for (int i = 0; i < a.prompt_len; ++i) {
    z = z * 6364136223846793005ull + 1442695040888963407ull;
    prompt.push_back(int32_t(2 + (z >> 33) % uint64_t(cfg.vocab_size - 2)));
  }

  // Plain decoding: one token per step.
  auto plain = [&] {
    model::Sampler sampler({a.temperature, 1.0, a.seed});
    auto seq = m->new_sequence();
    model::StepChunk c;
    c.sequence = seq.get();
    c.tokens = prompt;
    std::vector<std::vector<float>> logits;
    m->step(std::span<const model::StepChunk>(&c, 1), &logits);
    int32_t t = sampler.sample(logits[0]);
    const double t0 = now_s();
    for (int i = 1; i < a.tokens; ++i) {
      c.tokens = std::span<const int32_t>(&t, 1);
      m->step(std::span<const model::StepChunk>(&c, 1), &logits);
      t = sampler.sample(logits[0]);
    }
    backend->synchronize();
    return (now_s() - t0) / double(a.tokens - 1);
  };
  plain();  // warm-up
  const double step_s = plain();
  std::printf("plain decode: %.3f ms per step (1 token per step)\n\n", step_s * 1e3);
  std::printf("%5s %10s %11s %12s %12s %12s %10s %12s %9s\n", "depth", "accept", "tokens/step", "draft ms/st",
              "verify ms/st", "ms/token", "overhead", "tokens/s", "speed-up");
  for (int depth : depths) {
    model::SpeculativeOptions so;
    so.depth = depth;
    so.sampler = {a.temperature, 1.0, a.seed};
    model::SpeculativeDecoder dec(*m, *mtp, so);
    dec.generate(prompt, std::min(a.tokens, 4));  // warm-up
    model::SpeculativeDecoder run(*m, *mtp, so);
    run.start(prompt);
    std::vector<int32_t> out;
    const double t0 = now_s();
    while (int64_t(out.size()) < a.tokens - 1) run.step(&out);
    backend->synchronize();
    const double total = now_s() - t0;
    const model::SpeculativeStats& st = run.stats();
    const double per_token = total / double(st.emitted);
    const double draft_ms = st.draft_s / double(st.steps) * 1e3, verify_ms = st.verify_s / double(st.steps) * 1e3;
    std::printf("%5d %10.3f %11.3f %12.3f %12.3f %12.3f %9.1f%% %12.1f %8.2fx\n", depth, st.acceptance_rate(),
                st.tokens_per_step(), draft_ms, verify_ms, per_token * 1e3, 100.0 * draft_ms / (step_s * 1e3),
                1.0 / per_token, step_s / per_token);
  }
  std::printf("\naccept: accepted / drafted tokens; overhead: draft time per step / plain step time; verify: one main"
              " chunk of depth+1 tokens (all logits) + rollback; speed-up: plain ms per token / speculative ms per token\n");
  if (remove_dir) {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
}

}  // namespace

void register_bench_mtp(CLI::App& bench) {
  static MtpArgs args;
  auto* s = bench.add_subcommand("mtp", "Speculative decoding with the MTP block vs plain decoding");
  s->add_option("--model", args.model_dir, "Checkpoint with an MTP block (default: a synthetic one from --preset)");
  s->add_option("--preset", args.preset, "tiny | flash | pro: synthetic checkpoint with an MTP block")
      ->check(CLI::IsMember({"tiny", "flash", "pro"}))->capture_default_str();
  s->add_option("--layers", args.layers, "Main layers of the synthetic flash/pro slice (0: all of the preset)");
  s->add_option("--dir", args.dir, "Where the synthetic checkpoint goes (kept; default: a temp dir, removed)");
  s->add_option("--depths", args.depths, "Draft depths to measure, comma-separated")->capture_default_str();
  s->add_option("--prompt-len", args.prompt_len, "Prompt tokens (from the seed)")->capture_default_str();
  s->add_option("--tokens", args.tokens, "Tokens generated per run")->capture_default_str();
  s->add_option("--temperature", args.temperature, "0: greedy")->capture_default_str();
  s->add_option("--seed", args.seed, "Weight, prompt and sampler seed")->capture_default_str();
  s->add_option("--numerics", args.numerics, "reference | official")
      ->check(CLI::IsMember({"reference", "official"}))->capture_default_str();
  add_backend_option(s, &args.backend, &args.device);
  add_no_graphs_flag(s, &args.graphs);
  s->callback([] { run_mtp(args); });
}

}  // namespace v4rt::launch
