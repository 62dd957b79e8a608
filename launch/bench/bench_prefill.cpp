// SPDX-License-Identifier: MIT
// `v4rt bench prefill`: a real prefill of random token ids through the synthetic bench model of
// bench_step.cpp (the preset's exact dimensions and storage formats on N layers, alternating CSA /
// HCA, official numerics), for each --context length, in chunks of --chunk tokens (0: the whole
// prompt in one step). Prints the prefill time and tokens/s, a per-op table of one profiled
// prefill against the H200 roofline (CUDA builds on --backend cuda: CUDA events per op, ideal
// bytes / 4.3 TB/s and FLOPs / 1,580 (FP8) or 790 (bf16) TFLOP/s), and the projection to the
// preset's full depth (43 layers for Flash, 61 for Pro): per-layer op time x layers + the head.
// Runs on the CPU backend as well (tiny sizes: the smoke test of CI).
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/check.h"
#include "kernels/backend.h"
#include "launch/backend_option.h"
#include "launch/bench/bench.h"
#include "launch/bench/bench_backend.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/model.h"
#include "model/presets.h"

namespace v4rt::launch {

namespace {

namespace fs = std::filesystem;

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

struct PrefillArgs {
  std::string preset = "flash";
  int layers = 2;
  std::vector<int64_t> context = {8192};
  int64_t chunk = 0;        // tokens per prefill step; 0 = the whole prompt in one step
  bool op_table = true;     // a second, profiled prefill per context (CUDA backend)
  std::string csv;
  std::string backend = "cuda";
  int device = 0;
  bool graphs = true;       // --no-graphs: false
  std::string config;       // runtime YAML: its debug switches pick kernel paths
  std::string dir;
  uint64_t seed = 1;
};

// Token ids of a prompt: a fixed LCG over the vocabulary (random text for the router).
std::vector<int32_t> prompt_ids(int64_t n, int64_t vocab, uint64_t seed) {
  std::vector<int32_t> ids(static_cast<size_t>(n));
  uint64_t s = seed * 6364136223846793005ull + 1442695040888963407ull;
  for (auto& id : ids) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    id = int32_t((s >> 33) % uint64_t(vocab));
  }
  return ids;
}

// Prefills `ids` into a fresh sequence in chunks of `chunk` tokens (the last chunk's last-token
// logits to the host, as a real prompt needs them for the first sampled token). Returns seconds.
double prefill(model::Model& m, kernels::Backend& be, const std::vector<int32_t>& ids, int64_t chunk) {
  auto seq = m.new_sequence();
  const int64_t n = int64_t(ids.size());
  const int64_t step = chunk > 0 ? chunk : n;
  be.synchronize();
  const double t0 = now_s();
  std::vector<std::vector<float>> logits;
  for (int64_t b = 0; b < n; b += step) {
    const int64_t e = std::min(n, b + step);
    const model::StepChunk c{seq.get(), std::span<const int32_t>(ids.data() + b, size_t(e - b)), false, {}};
    m.step(std::span<const model::StepChunk>(&c, 1), e == n ? &logits : nullptr);
  }
  be.synchronize();
  const double t = now_s() - t0;
  V4RT_REQUIRE(logits.size() == 1 && !logits[0].empty(), "bench prefill: no logits after the prompt");
  return t;
}

void run_prefill(const PrefillArgs& a) {
  V4RT_REQUIRE(a.layers >= 1, "bench prefill: --layers must be >= 1");
  V4RT_REQUIRE(a.chunk >= 0, "bench prefill: --chunk must be >= 0 (0: the whole prompt in one step)");
  for (int64_t c : a.context) V4RT_REQUIRE(c >= 1, "bench prefill: --context values must be >= 1");
  const model::ModelConfig full = model::preset_config(a.preset);
  const model::ModelConfig cfg = bench_model_config(a.preset, a.layers);
  std::printf("bench prefill: preset %s, %d layers (CSA/HCA alternating, score routing), chunk %s, backend %s\n",
              a.preset.c_str(), a.layers, a.chunk > 0 ? std::to_string(a.chunk).c_str() : "whole prompt",
              a.backend.c_str());
  const std::string dir =
      write_bench_model(cfg, a.dir, "v4rt-bench-prefill-" + a.preset + "-" + std::to_string(a.layers), a.seed);

  BenchBackend bench_backend(a.backend, a.device, a.config, a.graphs);
  kernels::Backend* be = &bench_backend.get();
  BenchModel bench_model = load_bench_model(dir, *be);
  auto& m = bench_model.model;
  FILE* csv = open_bench_csv(a.csv, "bench prefill",
                             "# v4rt bench prefill: one row per (context, op family) of one profiled prefill; family "
                             "\"prefill\": ms = wall time of the timed prefill\n"
                             "preset,layers,context,chunk,prefill_ms,op_family,calls,ms,bytes,flops,roofline_ms\n");
  const int full_layers = full.num_hidden_layers;
  {  // warm-up: cuBLASLt heuristics, allocator pools
    const int64_t warm = std::min<int64_t>(a.chunk > 0 ? a.chunk : 1024, a.context.front());
    const double t = prefill(*m, *be, prompt_ids(warm, cfg.vocab_size, a.seed + 99), a.chunk);
    std::printf("  warm-up prefill of %lld tokens: %.3f s\n", static_cast<long long>(warm), t);
  }
  for (const int64_t context : a.context) {
    std::printf("\n=== context %lld\n", static_cast<long long>(context));
    const std::vector<int32_t> ids = prompt_ids(context, cfg.vocab_size, a.seed + uint64_t(context));
    const double wall = prefill(*m, *be, ids, a.chunk);
    const double tps = double(context) / wall;
    std::printf("  prefill: %.3f s, %.0f tokens/s on this device (%d layers)\n", wall, tps, a.layers);
    auto csv_row = [&](const std::string& fam, double calls, double ms, double b, double f, double roof) {
      if (!csv) return;
      std::fprintf(csv, "%s,%d,%lld,%lld,%.3f,\"%s\",%.0f,%.4f,%.0f,%.0f,%.5f\n", a.preset.c_str(), a.layers,
                   static_cast<long long>(context), static_cast<long long>(a.chunk), wall * 1e3, fam.c_str(), calls, ms,
                   b, f, roof);
    };
    csv_row("prefill", 1, wall * 1e3, 0, 0, 0);
    if (bench_backend.can_profile() && a.op_table) {
      const OpTotals t = bench_backend.profile([&] { prefill(*m, *be, ids, a.chunk); }, "one prefill", cfg.hidden_size,
                                               cfg.vocab_size, csv_row);
      // Projection: op time per layer x the preset's layers + the head; the wall time scaled by the
      // same op-time ratio (host gaps assumed proportional).
      const double op_full = t.layer_ms() / a.layers * full_layers + t.head_ms;
      const double roof_full = t.layer_roofline_ms() / a.layers * full_layers + t.head_roofline_ms;
      const double wall_full = t.ms > 0 ? wall * 1e3 * op_full / t.ms : 0;
      std::printf("  PROJECTION to %d layers of %s on one GPU (per-layer op time x %d + head): prefill of %lld tokens"
                  " %.2f s wall (op time %.2f s, roofline %.2f s) -> %.0f tokens/s (roofline %.0f tokens/s)\n",
                  full_layers, a.preset.c_str(), full_layers, static_cast<long long>(context), wall_full / 1e3,
                  op_full / 1e3, roof_full / 1e3, wall_full > 0 ? double(context) * 1e3 / wall_full : 0.0,
                  roof_full > 0 ? double(context) * 1e3 / roof_full : 0.0);
    } else {  // no per-op times: the wall time scaled by layers (head included in the scale)
      const double wall_full = wall * full_layers / a.layers;
      std::printf("  PROJECTION to %d layers of %s (wall time x %d / %d, no per-op profile on this backend): %.2f s,"
                  " %.0f tokens/s\n", full_layers, a.preset.c_str(), full_layers, a.layers, wall_full,
                  double(context) / wall_full);
    }
  }
  if (csv) std::fclose(csv);
  m.reset();
  std::error_code ec;
  fs::remove_all(dir, ec);
}

}  // namespace

void register_bench_prefill(CLI::App& bench) {
  static PrefillArgs args;
  auto* p = bench.add_subcommand("prefill", "Prefill of random token ids through a Flash/Pro-sized model from a seed,"
                                            " tokens/s and a per-op table against the roofline");
  p->add_option("--preset", args.preset, "flash | pro (tiny: a smoke test)")
      ->check(CLI::IsMember({"flash", "pro", "tiny"}))
      ->capture_default_str();
  p->add_option("--layers", args.layers, "Layers to build (alternating CSA / HCA)")->capture_default_str();
  p->add_option("--context", args.context, "Prompt lengths in tokens (a comma list runs each on the one loaded model)")
      ->delimiter(',')
      ->capture_default_str();
  p->add_option("--chunk", args.chunk, "Tokens per prefill step (0: the whole prompt in one step)")
      ->capture_default_str();
  p->add_flag("!--no-op-table", args.op_table, "Skip the profiled second prefill and its per-op table");
  p->add_option("--csv", args.csv, "Append one row per context and op family to this CSV file");
  p->add_option("--dir", args.dir, "Where the temporary checkpoint goes (default /dev/shm/v4rt-bench-prefill-*)");
  p->add_option("--seed", args.seed, "Weight and prompt seed")->capture_default_str();
  add_backend_option(p, &args.backend, &args.device);
  add_no_graphs_flag(p, &args.graphs);
  p->add_option("--config", args.config, "Runtime YAML whose debug switches pick kernel paths (e.g. debug: {cuda_attention_tc: false})")
      ->check(CLI::ExistingFile);
  p->callback([] { run_prefill(args); });
}

}  // namespace v4rt::launch
