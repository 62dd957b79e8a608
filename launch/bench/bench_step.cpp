// SPDX-License-Identifier: MIT
// `v4rt bench step`: the decode step of a model with the exact V4-Flash / V4-Pro dimensions and
// storage formats (FP8 e4m3 + 128x128 ue8m0 blocks, routed experts packed FP4 + per-32 scales), on
// N layers built from a seed. The weights go to a checkpoint in memory-backed storage (/dev/shm)
// written at memcpy speed (random codes, scales chosen so activations stay O(1)), because
// Model::load takes a Checkpoint; sequences get a fabricated state for a context of L tokens (the
// compressed-entry and indexer-key tables filled with random rows of the right count, not a real
// prefill). Prints the step time, a per-op table against the H200 roofline (CUDA events), and the
// KV capacity per GPU; --batch / --context take comma lists (every pair runs on the one loaded
// model) and --csv appends one row per run and op family (docs/PERFORMANCE.md, GPU section). The
// timed steps run as CUDA graphs when --config sets `cuda_graphs: true` (and no --no-graphs); the
// per-op profile runs every op on its own, between its own events. Each step draws its tokens on
// the device (greedy) and brings back only the ids, as serving does; --host-logits copies every
// row's logits to the host instead.
// `v4rt bench indexer`: the indexer scan over 256K compressed keys + top-k. `v4rt bench checkpoint`:
// the same synthetic checkpoint written and kept (optionally with the MTP layer).
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>
#include <vector>

#include "common/check.h"
#include "kernels/backend.h"
#include "kernels/backend_factory.h"
#include "launch/backend_option.h"
#include "launch/bench/bench.h"
#include "launch/bench/bench_backend.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/model.h"
#include "model/presets.h"
#include "model/safetensors.h"
#include "model/state.h"

namespace v4rt::launch {

namespace {

namespace fs = std::filesystem;

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// fn(begin, end) over [0, n) on every core.
template <typename F>
void parallel_for(uint64_t n, F&& fn) {
  const unsigned threads = std::max(1u, std::min(32u, std::thread::hardware_concurrency()));
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; ++t) {
    const uint64_t b = n * t / threads, e = n * (t + 1) / threads;
    pool.emplace_back([&fn, b, e] { fn(b, e); });
  }
  for (auto& th : pool) th.join();
}

// Uniform values of standard deviation `mul` around `add` (the scales of model/synthetic.cpp).
void fill_values(float* out, uint64_t n, uint64_t seed, float mul, float add) {
  parallel_for(n, [&](uint64_t b, uint64_t e) {
    for (uint64_t i = b; i < e; ++i) {
      const double u = double(mix64(seed + i * 0x9e3779b97f4a7c15ull) >> 11) * 0x1.0p-53;
      out[i] = add + mul * float((2.0 * u - 1.0) * 1.7320508);
    }
  });
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// ue8m0 code of 2^-ceil(log2(sqrt(cols))) / extra: keeps the dequantized rows near unit norm.
uint8_t scale_code(int64_t cols, int extra) {
  return uint8_t(127 - int(std::ceil(std::log2(std::sqrt(double(cols))))) - extra);
}

// One tensor's bytes, written in pieces of at most kPiece bytes.
void emit_tensor(const model::ModelConfig& cfg, const std::string& name, const model::ExpectedTensor& t,
                 const std::map<std::string, model::ExpectedTensor>& all, uint64_t seed,
                 model::safetensors::StreamWriter& out) {
  constexpr uint64_t kPiece = uint64_t(256) << 20;
  const uint64_t numel = model::safetensors::shape_numel(t.shape);
  const uint64_t tseed = mix64(std::hash<std::string>{}(name) ^ seed);
  std::vector<uint8_t> buf;
  const int64_t last = t.shape.empty() ? 1 : t.shape.back();
  if (t.dtype == DType::kF8E4M3 || t.dtype == DType::kI8) {  // codes: random bytes (e4m3: |x| <= 1.875, no NaN)
    const uint8_t mask = t.dtype == DType::kF8E4M3 ? 0xbf : 0xff;
    for (uint64_t done = 0; done < numel; done += kPiece) {
      const uint64_t n = std::min(kPiece, numel - done);
      buf.resize(n);
      parallel_for(n / 8 + 1, [&](uint64_t b, uint64_t e) {
        for (uint64_t i = b; i < e; ++i) {
          const uint64_t v = mix64(tseed + (done / 8 + i) * 0x9e3779b97f4a7c15ull);
          for (uint64_t j = 0; j < 8 && i * 8 + j < n; ++j) buf[i * 8 + j] = uint8_t(v >> (8 * j)) & mask;
        }
      });
      out.append(buf.data(), n);
    }
    return;
  }
  if (t.dtype == DType::kF8E8M0) {  // block scales of the FP8 / FP4 weight beside it
    const std::string weight = name.substr(0, name.size() - std::string(".scale").size()) + ".weight";
    const model::ExpectedTensor& w = all.at(weight);
    const bool fp4 = w.dtype == DType::kI8;
    const int64_t cols = fp4 ? 2 * w.shape[1] : w.shape[1];
    buf.assign(numel, scale_code(cols, fp4 ? 2 : 0));
    out.append(buf.data(), numel);
    return;
  }
  if (t.dtype == DType::kI64) {  // hash-layer tid2eid: distinct experts per token
    std::vector<int64_t> ids(numel);
    for (uint64_t r = 0; r < numel / uint64_t(last); ++r)
      for (int64_t k = 0; k < last; ++k) ids[r * uint64_t(last) + uint64_t(k)] = int64_t((r * 7 + uint64_t(k) * 37) % uint64_t(cfg.n_routed_experts));
    out.append(ids.data(), numel * 8);
    return;
  }
  CHECK(t.dtype == DType::kF32 || t.dtype == DType::kBF16) << name;
  const bool hc = name.find("hc_") != std::string::npos;
  float mul = 0.1f, add = 0.0f;
  if (ends_with(name, "norm.weight")) mul = 0.2f, add = 1.0f;
  else if (ends_with(name, "attn_sink") || name == "embed.weight") mul = 1.0f;
  else if (ends_with(name, "compressor.ape")) mul = 0.5f;
  else if (hc && ends_with(name, "_scale")) mul = 0.29f, add = 1.0f;
  else if (hc && ends_with(name, "_base")) mul = 0.5f;
  else if (hc && ends_with(name, "_fn")) mul = float(4.0 / std::sqrt(double(last)));
  else if (t.shape.size() >= 2) mul = float(1.0 / std::sqrt(double(last)));
  std::vector<float> v;
  const uint64_t piece = kPiece / 4;
  for (uint64_t done = 0; done < numel; done += piece) {
    const uint64_t n = std::min(piece, numel - done);
    v.resize(n);
    fill_values(v.data(), n, tseed + done, mul, add);
    if (t.dtype == DType::kF32) {
      out.append(v.data(), n * 4);
    } else {
      std::vector<uint16_t> h(n);
      parallel_for(n, [&](uint64_t b, uint64_t e) {
        for (uint64_t i = b; i < e; ++i) h[i] = f32_to_bf16(v[i]);
      });
      out.append(h.data(), n * 2);
    }
  }
}

// config.json + one model.safetensors holding every tensor `cfg` needs. Returns the tensor bytes.
uint64_t write_bench_checkpoint(const model::ModelConfig& cfg, const std::string& dir, uint64_t seed) {
  fs::create_directories(dir);
  const auto all = model::expected_tensors(cfg);
  std::vector<model::safetensors::TensorSpec> specs;
  uint64_t total = 0;
  for (const auto& [name, t] : all) {
    specs.push_back({name, t.dtype, t.shape});
    total += specs.back().bytes();
  }
  model::safetensors::StreamWriter writer((fs::path(dir) / "model.safetensors").string(), specs);
  for (const auto& [name, t] : all) emit_tensor(cfg, name, t, all, seed, writer);
  writer.finish();
  std::ofstream f(fs::path(dir) / "config.json");
  f << model::model_config_json(cfg);
  V4RT_REQUIRE(f.good(), dir << "/config.json: write failed");
  return total;
}

// Weight bytes of `cfg` split into routed experts and the rest (for the capacity line).
void weight_bytes(const model::ModelConfig& cfg, double* experts, double* rest) {
  *experts = *rest = 0;
  for (const auto& [name, t] : model::expected_tensors(cfg)) {
    const double b = double(model::safetensors::TensorSpec{name, t.dtype, t.shape}.bytes());
    (name.find(".ffn.experts.") != std::string::npos ? *experts : *rest) += b;
  }
}

// Fills a sequence's state as if `context` tokens had been processed (random rows; see the file
// comment). context is rounded down to a multiple of 128 so every compressor sits on a block edge.
void fabricate_state(const model::ModelConfig& cfg, kernels::Backend& be, model::SequenceState& seq, int64_t context,
                     const std::vector<float>& rnd) {
  auto fill = [&](model::RowTable& t, int64_t rows) {
    t.clear();
    if (rows == 0) return;
    const TensorView v = t.reserve(rows);
    CHECK_LE(uint64_t(rows * t.width()), rnd.size());
    be.copy_to_device(v.data, rnd.data(), size_t(rows * t.width()) * sizeof(float));
    t.commit(rows);
  };
  // Entries and keys: random F32 rows, packed (after rounding to the format) when compact.
  auto fill_entries = [&](model::CompressorState& c, int64_t rows) {
    model::RowTable f32(&be, c.layout.dim);
    fill(f32, rows);
    model::store_entries(be, c, f32.view());
  };
  for (int l = 0; l < cfg.num_hidden_layers; ++l) {
    model::LayerState& s = seq.layer(l);
    const int ratio = cfg.compress_ratio(l);
    fill(s.window_tail, std::min<int64_t>(context, cfg.sliding_window - 1));
    if (s.has_compressor) {
      const int64_t lead = ratio == 4 ? ratio : 0;  // CSA keeps the previous block (overlap)
      fill(s.main.kv, lead);
      fill(s.main.score, lead);
      s.main.start = context - lead;
      fill_entries(s.main, context / ratio);
      s.main.num_entries = context / ratio;
    }
    if (s.has_indexer) {
      fill(s.indexer.kv, 4);
      fill(s.indexer.score, 4);
      s.indexer.start = context - 4;
      fill_entries(s.indexer, context / 4);
      s.indexer.num_entries = context / 4;
    }
  }
  seq.advance(context - seq.position());
}

// The bench model: N layers alternating CSA / HCA (the release pattern after the first two),
// score-routed MoE; with `mtp`, the preset's MTP layer(s) after them.
model::ModelConfig bench_config(const std::string& preset, int layers, bool mtp) {
  const model::ModelConfig full = model::preset_config(preset, mtp);
  model::ModelConfig cfg = full;
  cfg.num_hidden_layers = layers;
  cfg.compress_ratios.clear();
  for (int l = 0; l < layers; ++l) cfg.compress_ratios.push_back(l % 2 == 0 ? 4 : 128);
  if (mtp) {
    cfg.compress_ratios.insert(cfg.compress_ratios.end(), full.compress_ratios.begin() + full.num_hidden_layers,
                               full.compress_ratios.end());
  } else {
    cfg.num_nextn_predict_layers = 0;
  }
  cfg.num_hash_layers = 0;
  model::validate(cfg, "bench " + preset + " config");
  return cfg;
}

struct CheckpointArgs {
  std::string preset = "flash";
  int layers = 2;
  bool mtp = false;
  std::string out;
  uint64_t seed = 1;
};

// `v4rt bench checkpoint`: the bench model's checkpoint written on every core (kept, for `bench mtp
// --model` and the like; init-model writes real-distribution weights on one core, minutes for Flash).
void run_checkpoint(const CheckpointArgs& a) {
  V4RT_REQUIRE(a.layers >= 1, "bench checkpoint: --layers must be >= 1");
  const model::ModelConfig cfg = bench_config(a.preset, a.layers, a.mtp);
  const double t0 = now_s();
  const uint64_t bytes = write_bench_checkpoint(cfg, a.out, a.seed);
  std::printf("bench checkpoint: %s, %d layers%s, %.2f GB -> %s in %.1f s\n", a.preset.c_str(), a.layers,
              cfg.num_nextn_predict_layers ? " + MTP" : "", double(bytes) / 1e9, a.out.c_str(), now_s() - t0);
}

struct StepArgs {
  std::string preset = "flash";
  bool synthetic = false;
  int layers = 2;
  std::vector<int> batch = {1};             // every (batch, context) pair runs on one loaded model
  std::vector<int64_t> context = {65536};
  int iters = 5;
  std::string csv;                          // rows appended per run and op family
  std::string backend = "cuda";
  int device = 0;
  bool graphs = true;                       // --no-graphs: false
  bool host_logits = false;                 // --host-logits: every row's logits to the host, no device draw
  std::string config;                       // runtime YAML: its debug switches pick kernel paths
  std::string dir;
  uint64_t seed = 1;
};

void print_capacity(const model::ModelConfig& full, double free_bytes) {
  double experts = 0, rest = 0;
  weight_bytes(full, &experts, &rest);
  const int64_t ctx = int64_t(1) << 20;
  // What the runtime allocates for one sequence (model::state_bytes, equal to a SequenceState's
  // allocation): compact entries (584 B) and FP4 indexer keys (68 B) in whole 64-row pool blocks,
  // F32 window tails and compressor buffers.
  const double all = double(model::state_bytes(full, ctx, model::KvStorage::kCompact));
  const KvRowLayout entry = model::entry_layout(full, model::KvStorage::kCompact);
  const KvRowLayout key = model::index_key_layout(full, model::KvStorage::kCompact);
  double per_seq = 0;  // the compressed entries and indexer keys
  for (int l = 0; l < full.num_hidden_layers; ++l) {
    const int r = full.compress_ratio(l);
    if (r != 0) per_seq += double(model::entry_table_bytes(ctx / r, entry));
    if (r == 4) per_seq += double(model::entry_table_bytes(ctx / 4, key));
  }
  const double constant = all - per_seq;  // window tails and compressor buffers
  const double per_seq_f32 = double(model::state_bytes(full, ctx, model::KvStorage::kF32)) - constant;
  const double gib = 1024.0 * 1024 * 1024;
  std::printf("\nKV capacity (1M-token sequences, compact entries 584 B + FP4 indexer keys 68 B in pool blocks):\n");
  std::printf("  per sequence: %.2f GiB compressed entries + %.1f MiB window/compressor state"
              " (F32 rows of the reference numerics: %.2f GiB)\n", per_seq / gib, constant / (1024.0 * 1024), per_seq_f32 / gib);
  std::printf("  weights: %.1f GiB routed experts + %.1f GiB the rest; device free before loading: %.1f GiB\n",
              experts / gib, rest / gib, free_bytes / gib);
  for (int ep : {1, 2, 4, 8}) {
    const double w = experts / ep + rest;
    const double left = free_bytes - w - 4.0 * gib;  // 4 GiB activations/workspace reserve
    const double fit = left > 0 ? std::floor(left / (per_seq + constant)) : 0;
    std::printf("  EP=%d (experts split over %d GPUs): weights %.1f GiB/GPU -> %s%.0f sequences of 1M tokens per GPU\n",
                ep, ep, w / gib, left > 0 ? "" : "does not fit: ", fit);
  }
}

void run_step(const StepArgs& a) {
  V4RT_REQUIRE(a.synthetic, "bench step: only --synthetic is implemented (weights from a seed)");
  V4RT_REQUIRE(a.layers >= 1 && a.iters >= 1, "bench step: --layers and --iters must be >= 1");
  for (int b : a.batch) V4RT_REQUIRE(b >= 1, "bench step: --batch values must be >= 1");
  for (int64_t c : a.context) V4RT_REQUIRE(c >= 128, "bench step: --context values must be >= 128");
  const model::ModelConfig full = model::preset_config(a.preset);
  const model::ModelConfig cfg = bench_config(a.preset, a.layers, /*mtp=*/false);
  std::printf("bench step: preset %s, %d layers (CSA/HCA alternating, score routing)\n", a.preset.c_str(), a.layers);
  const std::string dir = write_bench_model(cfg, a.dir, "v4rt-bench-" + a.preset + "-" + std::to_string(a.layers), a.seed);

  BenchBackend bench_backend(a.backend, a.device, a.config, a.graphs);
  kernels::Backend* be = &bench_backend.get();
  BenchModel bench_model = load_bench_model(dir, *be);
  auto& m = bench_model.model;
  FILE* csv = open_bench_csv(a.csv, "bench step",
                             "# v4rt bench step: one row per (run, op family) of one profiled decode step; family "
                             "\"step\": ms = median step time over --iters, calls = batch; graphs = steps of the run "
                             "(warm-up and timed) recorded as CUDA graphs\n"
                             "preset,layers,batch,context,step_ms,op_family,calls,ms,bytes,flops,roofline_ms,graphs\n");
  std::vector<std::pair<int64_t, int>> runs;  // (context, batch), contexts outermost
  for (const int64_t c : a.context)
    for (const int b : a.batch) runs.push_back({c / 128 * 128, b});
  for (const auto& run : runs) {
    const int64_t context = run.first;  // plain names: lambdas below capture them
    const int batch = run.second;
    std::printf("\n=== batch %d, context %lld\n", batch, static_cast<long long>(context));
    double t0 = now_s();
    std::vector<float> rnd(size_t(std::max<int64_t>(context / 4, cfg.sliding_window)) *
                           size_t(std::max(cfg.head_dim, cfg.index_head_dim)));
    fill_values(rnd.data(), rnd.size(), a.seed * 31 + 7, 1.0f, 0.0f);
    std::vector<std::unique_ptr<model::SequenceState>> seqs;
    for (int b = 0; b < batch; ++b) {
      seqs.push_back(m->new_sequence());
      fabricate_state(cfg, *be, *seqs.back(), context, rnd);
    }
    be->synchronize();
    std::printf("  FABRICATED state: %d sequence(s) at position %lld (random compressed entries: %lld per CSA layer,"
                " %lld per HCA layer; %lld indexer keys), no prefill was run; %.1f s\n", batch,
                static_cast<long long>(context), static_cast<long long>(context / 4), static_cast<long long>(context / 128),
                static_cast<long long>(context / 4), now_s() - t0);
    // The state as allocated (measured), against the formula admission and the planner charge.
    const double mib = 1024.0 * 1024;
    const model::KvPool* pool = m->kv_pool();
    std::printf("  KV state per sequence: %.2f MiB allocated (state_bytes: %.2f MiB); %s pool: %.2f MiB in blocks, "
                "%.2f MiB of slabs for the batch\n",
                double(seqs[0]->allocated_bytes()) / mib,
                double(model::state_bytes(cfg, context, seqs[0]->storage())) / mib,
                pool ? "compact KV" : "no", pool ? double(pool->used_bytes()) / mib : 0.0,
                pool ? double(pool->reserved_bytes()) / mib : 0.0);

    std::vector<int32_t> tokens(static_cast<size_t>(batch));
    for (int b = 0; b < batch; ++b) tokens[size_t(b)] = int32_t((1000 + 7919 * b) % cfg.vocab_size);
    // A serving step: each row's token drawn on the device (greedy), only the ids come back; with
    // --host-logits every row's logits come to the host instead.
    std::vector<kernels::SampleRow> draw(static_cast<size_t>(batch));
    std::vector<model::SampledToken> drawn(static_cast<size_t>(batch));
    auto step = [&] {
      std::vector<model::StepChunk> chunks;
      for (int b = 0; b < batch; ++b) {
        chunks.push_back({seqs[size_t(b)].get(), std::span<const int32_t>(&tokens[size_t(b)], 1), false, {}});
        if (a.host_logits) continue;
        draw[size_t(b)].position = seqs[size_t(b)]->position() + 1;
        chunks.back().sample = &draw[size_t(b)];
        chunks.back().sampled = &drawn[size_t(b)];
      }
      std::vector<std::vector<float>> logits;
      m->step(chunks, a.host_logits ? &logits : nullptr);
      be->synchronize();
    };
    if (batch > 1 && batch <= 8) {
      // The batched step against each sequence stepped alone, on clones of the states: the same
      // numbers up to the GEMMs' reduction order for a different row count.
      std::vector<std::unique_ptr<model::SequenceState>> ca, cb;
      std::vector<model::StepChunk> chunks;
      for (int b = 0; b < batch; ++b) {
        ca.push_back(seqs[size_t(b)]->clone());
        cb.push_back(seqs[size_t(b)]->clone());
        chunks.push_back({ca.back().get(), std::span<const int32_t>(&tokens[size_t(b)], 1), false, {}});
      }
      std::vector<std::vector<float>> lb;
      m->step(chunks, &lb);
      double max_err = 0, max_rms = 0;
      int same_argmax = 0;
      for (int b = 0; b < batch; ++b) {
        model::StepChunk c{cb[size_t(b)].get(), std::span<const int32_t>(&tokens[size_t(b)], 1), false, {}};
        std::vector<std::vector<float>> la;
        m->step(std::span<const model::StepChunk>(&c, 1), &la);
        const std::vector<float>& x = la[0];
        const std::vector<float>& y = lb[size_t(b)];
        double ss = 0, err = 0;
        for (size_t j = 0; j < x.size(); ++j) {
          ss += double(x[j]) * x[j];
          err = std::max(err, std::fabs(double(x[j]) - y[j]));
        }
        max_err = std::max(max_err, err);
        max_rms = std::max(max_rms, std::sqrt(ss / double(std::max<size_t>(x.size(), 1))));
        same_argmax += std::max_element(x.begin(), x.end()) - x.begin() == std::max_element(y.begin(), y.end()) - y.begin();
      }
      be->synchronize();
      std::printf("  check: batched step vs each sequence alone: max |diff| %.3g (logit rms %.3g), same argmax %d/%d\n",
                  max_err, max_rms, same_argmax, batch);
    }
    const kernels::GraphStats graphs_before = be->graph_stats();
    step();  // warm-up (cuBLASLt heuristics, pool growth, the first graph)
    std::vector<double> times;
    be->profile_range(true);  // the timed steps only, for `ncu --profile-from-start off`
    for (int i = 0; i < a.iters; ++i) {
      const double s = now_s();
      step();
      times.push_back(now_s() - s);
    }
    be->synchronize();
    be->profile_range(false);
    std::sort(times.begin(), times.end());
    const double med = times[times.size() / 2];
    std::printf("\n  decode step (batch %d, one batched Model::step over every sequence, %s): median %.3f ms (min %.3f,"
                " max %.3f over %d)\n", batch,
                a.host_logits ? "logits of all rows to the host" : "tokens drawn on the device, ids to the host",
                med * 1e3, times.front() * 1e3, times.back() * 1e3, a.iters);
    std::printf("  throughput: %.0f tokens/s on this GPU (%d layers); per sequence %.3f ms; per layer and sequence"
                " (incl. embedding/head share): %.4f ms\n", batch / med, a.layers, med * 1e3 / batch,
                med * 1e3 / batch / a.layers);
    // The step graphs of the warm-up and timed steps (the backend's counts since before the warm-up).
    const kernels::GraphStats g = be->graph_stats();
    const int64_t recorded = g.recorded - graphs_before.recorded;
    double graph_gpu_ms = 0;  // mean GPU time of the timed step graphs (0: none)
    if (be->graphs()) {
      std::printf("  graphs: %lld steps recorded (%lld updated in place, %lld replayed with %lld nodes set, %lld "
                  "instantiated), %lld eager\n",
                  static_cast<long long>(recorded), static_cast<long long>(g.updated - graphs_before.updated),
                  static_cast<long long>(g.replayed - graphs_before.replayed),
                  static_cast<long long>(g.nodes_set - graphs_before.nodes_set),
                  static_cast<long long>(g.instantiated - graphs_before.instantiated),
                  static_cast<long long>(g.eager - graphs_before.eager));
      const int64_t timed = g.timed - graphs_before.timed;
      if (timed > 0) {
        graph_gpu_ms = (g.graph_gpu_ms - graphs_before.graph_gpu_ms) / double(timed);
        std::printf("  GPU time of a step graph (launch to end: the step without host launch gaps): mean %.3f ms over"
                    " %lld\n", graph_gpu_ms, static_cast<long long>(timed));
      }
    } else {
      std::printf("  graphs: off\n");
    }
    // One CSV row per op family of the profiled step, and one "step" row (ms = median step time).
    auto csv_row = [&](const std::string& fam, double calls, double ms, double bytes, double flops, double roof) {
      if (!csv) return;
      std::fprintf(csv, "%s,%d,%d,%lld,%.4f,\"%s\",%.0f,%.4f,%.0f,%.0f,%.5f,%lld\n", a.preset.c_str(), a.layers,
                   batch, static_cast<long long>(context), med * 1e3, fam.c_str(), calls, ms, bytes, flops, roof,
                   static_cast<long long>(recorded));
    };
    csv_row("step", double(batch), med * 1e3, 0, 0, 0);

    if (bench_backend.can_profile()) {
      const OpTotals t = bench_backend.profile(step, "one step", cfg.hidden_size, cfg.vocab_size, csv_row);
      const double layer_ms = t.layer_ms() / batch / a.layers;
      const int full_layers = full.num_hidden_layers;
      std::printf("  op time per layer and sequence: %.3f ms (embedding/head/hc_head excluded: %.3f ms per sequence)\n",
                  layer_ms, t.head_ms / batch);
      if (graph_gpu_ms > 0)  // the batch-1 target's measure: the step's GPU time without the head, per layer
        std::printf("  GPU time per layer of a step graph, embedding/head/hc_head excluded: (%.3f - %.3f) / %d = %.3f ms\n",
                    graph_gpu_ms, t.head_ms, a.layers, (graph_gpu_ms - t.head_ms) / a.layers);
      std::printf("  ESTIMATE for all %d layers of %s on this one GPU (per-layer mean x %d + head; the full weights"
                  " do not fit one H200): %.2f ms per decode token per sequence\n", full_layers, a.preset.c_str(),
                  full_layers, layer_ms * full_layers + t.head_ms / batch);
      // Extrapolation of the whole step to every layer: op time and roofline per layer x layers + head;
      // the measured wall time scaled by the same op-time ratio (host gaps assumed proportional).
      const double op_full = t.layer_ms() / a.layers * full_layers + t.head_ms;
      const double roof_full = t.layer_roofline_ms() / a.layers * full_layers + t.head_roofline_ms;
      const double wall_full = t.ms > 0 ? med * 1e3 * op_full / t.ms : 0;
      std::printf("  EXTRAPOLATION to %d layers, batch %d: step %.2f ms wall (op time %.2f ms, roofline %.3f ms) ->"
                  " %.0f tokens/s (op time: %.0f, roofline: %.0f tokens/s) on one GPU\n", full_layers, batch, wall_full,
                  op_full, roof_full, wall_full > 0 ? batch * 1e3 / wall_full : 0.0, op_full > 0 ? batch * 1e3 / op_full : 0.0,
                  roof_full > 0 ? batch * 1e3 / roof_full : 0.0);
    }
  }
  if (csv) std::fclose(csv);
  print_capacity(full, bench_backend.free_bytes_at_start());
  std::error_code ec;
  fs::remove_all(dir, ec);
}

struct IndexerArgs {
  int64_t keys = 262144;
  int heads = 64;
  int dim = 128;
  int tokens = 1;
  int k = 512;
  int iters = 20;
  std::string backend = "cuda";
  int device = 0;
};

void run_indexer(const IndexerArgs& a) {
  auto be = make_selected_backend(a.backend, a.device);
  std::printf("bench indexer: %lld keys x %d dims, %d heads, %d query token(s), top-%d, backend %s\n",
              static_cast<long long>(a.keys), a.dim, a.heads, a.tokens, a.k, a.backend.c_str());
  std::vector<float> host(size_t(a.keys) * size_t(a.dim));
  fill_values(host.data(), host.size(), 99, 1.0f, 0.0f);
  for (DType kd : {DType::kF32, DType::kBF16}) {
    const size_t es = dtype_size(kd);
    Buffer keys = be->alloc(host.size() * es), q = be->alloc(size_t(a.tokens * a.heads * a.dim) * es);
    Buffer w = be->alloc(size_t(a.tokens * a.heads) * es), scores = be->alloc(size_t(a.tokens * a.keys) * 4);
    Buffer idx = be->alloc(size_t(a.tokens * a.k) * 4);
    auto upload = [&](const Buffer& dst, const float* src, size_t n) {
      if (kd == DType::kF32) {
        be->copy_to_device(dst.data(), src, n * 4);
      } else {
        std::vector<uint16_t> h(n);
        for (size_t i = 0; i < n; ++i) h[i] = f32_to_bf16(src[i]);
        be->copy_to_device(dst.data(), h.data(), n * 2);
      }
    };
    upload(keys, host.data(), host.size());
    upload(q, host.data() + 12345, size_t(a.tokens * a.heads * a.dim));
    upload(w, host.data() + 777, size_t(a.tokens * a.heads));
    kernels::IndexerScoresParams sp;
    sp.q = TensorView(q.data(), kd, {a.tokens, a.heads, a.dim}, be->device());
    sp.keys = TensorView(keys.data(), kd, {a.keys, a.dim}, be->device());
    sp.w = TensorView(w.data(), kd, {a.tokens, a.heads}, be->device());
    sp.scores = TensorView(scores.data(), DType::kF32, {a.tokens, a.keys}, be->device());
    sp.pos_begin = a.keys * 4;  // every key visible
    sp.weight_scale = 0.01f;
    kernels::TopkParams tp;
    tp.scores = sp.scores;
    tp.out_idx = TensorView(idx.data(), DType::kI32, {a.tokens, a.k}, be->device());
    tp.k = a.k;
    auto time_ms = [&](auto&& f) {
      f();
      be->synchronize();
      const double s = now_s();
      for (int i = 0; i < a.iters; ++i) f();
      be->synchronize();
      return (now_s() - s) / a.iters * 1e3;
    };
    const double ms_scores = time_ms([&] { be->indexer_scores(sp); });
    const double ms_topk = time_ms([&] { be->topk(tp); });
    const double key_bytes = double(a.keys) * a.dim * double(es);
    const double flops = 2.0 * a.tokens * a.heads * double(a.keys) * a.dim;
    std::printf("  keys %s: indexer_scores %.3f ms = %.1f GB/s of keys (%.1f TFLOP/s; roofline %.3f ms at 4.3 TB/s);"
                " top-%d %.3f ms (%.1f GB/s of scores)\n", kd == DType::kF32 ? "F32 " : "BF16", ms_scores,
                key_bytes / ms_scores / 1e6, flops / ms_scores / 1e9, key_bytes / kH200HbmBytesPerSec * 1e3, a.k, ms_topk,
                double(a.tokens * a.keys) * 4 / ms_topk / 1e6);
  }
}

}  // namespace

model::ModelConfig bench_model_config(const std::string& preset, int layers) {
  return bench_config(preset, layers, /*mtp=*/false);
}

std::string write_bench_model(const model::ModelConfig& cfg, const std::string& dir, const std::string& name,
                              uint64_t seed) {
  std::string out = dir;
  if (out.empty()) {
    double experts = 0, rest = 0;
    weight_bytes(cfg, &experts, &rest);
    std::error_code ec;
    const bool shm = fs::exists("/dev/shm") && double(fs::space("/dev/shm", ec).available) > (experts + rest) * 1.1;
    out = (shm ? std::string("/dev/shm") : fs::temp_directory_path().string()) + "/" + name;
  }
  const double t0 = now_s();
  const uint64_t bytes = write_bench_checkpoint(cfg, out, seed);
  std::printf("  synthetic checkpoint: %.2f GB in %s, written in %.1f s\n", double(bytes) / 1e9, out.c_str(), now_s() - t0);
  return out;
}

BenchModel load_bench_model(const std::string& dir, kernels::Backend& be) {
  const double t0 = now_s();
  BenchModel b;
  b.ckpt = model::Checkpoint::open(dir);
  model::ModelOptions options;
  options.numerics = model::Numerics::kOfficial;
  b.model = model::Model::load(*b.ckpt, options, be);
  be.synchronize();
  std::printf("  model loaded in %.1f s (official numerics)\n", now_s() - t0);
  return b;
}

FILE* open_bench_csv(const std::string& path, const std::string& what, const char* header) {
  if (path.empty()) return nullptr;
  const bool fresh = !fs::exists(path);
  FILE* csv = std::fopen(path.c_str(), "a");
  V4RT_REQUIRE(csv != nullptr, what << ": cannot open --csv file " << path);
  if (fresh) std::fputs(header, csv);
  return csv;
}

void register_bench_step(CLI::App& bench) {
  static StepArgs step;
  auto* s = bench.add_subcommand("step", "Decode step of a Flash/Pro-sized model from a seed, against the roofline");
  s->add_option("--preset", step.preset, "flash | pro (tiny: a smoke test)")->check(CLI::IsMember({"flash", "pro", "tiny"}))->capture_default_str();
  s->add_flag("--synthetic", step.synthetic, "Weights from a seed (required: no real checkpoint path yet)");
  s->add_option("--layers", step.layers, "Layers to build (alternating CSA / HCA)")->capture_default_str();
  s->add_option("--batch", step.batch, "Sequences stepped per decode step (a comma list runs each)")
      ->delimiter(',')
      ->capture_default_str();
  s->add_option("--context", step.context, "Context length of the fabricated state (multiple of 128; a comma list runs each)")
      ->delimiter(',')
      ->capture_default_str();
  s->add_option("--csv", step.csv, "Append one row per run and op family to this CSV file");
  s->add_option("--iters", step.iters, "Timed steps")->capture_default_str();
  s->add_option("--dir", step.dir, "Where the temporary checkpoint goes (default /dev/shm/v4rt-bench-*)");
  s->add_option("--seed", step.seed, "Weight seed")->capture_default_str();
  add_backend_option(s, &step.backend, &step.device);
  add_no_graphs_flag(s, &step.graphs);
  s->add_flag("--host-logits", step.host_logits,
              "Bring every row's logits to the host each step instead of drawing the tokens on the device "
              "(the serving path: only ids come back)");
  s->add_option("--config", step.config, "Runtime YAML whose debug switches pick kernel paths (e.g. debug: {cuda_attention_tc: false})")
      ->check(CLI::ExistingFile);
  s->callback([] { run_step(step); });

  static CheckpointArgs ck;
  auto* c = bench.add_subcommand("checkpoint", "Write the bench model's synthetic checkpoint (every core) and keep it");
  c->add_option("--preset", ck.preset, "flash | pro | tiny")->check(CLI::IsMember({"flash", "pro", "tiny"}))->capture_default_str();
  c->add_option("--layers", ck.layers, "Layers to build (alternating CSA / HCA)")->capture_default_str();
  c->add_flag("--mtp", ck.mtp, "Add the preset's MTP layer");
  c->add_option("--out", ck.out, "Output directory")->required();
  c->add_option("--seed", ck.seed, "Weight seed")->capture_default_str();
  c->callback([] { run_checkpoint(ck); });

  static IndexerArgs idx;
  auto* i = bench.add_subcommand("indexer", "Lightning-indexer scan over compressed keys + top-k");
  i->add_option("--keys", idx.keys, "Compressed keys (256K = 1M tokens / 4)")->capture_default_str();
  i->add_option("--heads", idx.heads, "Indexer heads")->capture_default_str();
  i->add_option("--tokens", idx.tokens, "Query tokens")->capture_default_str();
  i->add_option("--k", idx.k, "Top-k")->capture_default_str();
  i->add_option("--iters", idx.iters, "Timed repetitions")->capture_default_str();
  add_backend_option(i, &idx.backend, &idx.device);
  i->callback([] { run_indexer(idx); });
}

}  // namespace v4rt::launch
