// SPDX-License-Identifier: MIT
// `v4rt inspect`: opens a checkpoint the way the runtime does (headers validated, tensor set
// checked against config.json) and prints the config summary, tensor counts and bytes by dtype,
// the kind of every layer and the validation result. `--memory` then reads every tensor as the
// loader would (dequantizing one at a time) and reports the peak RSS (VmHWM).
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <string>

#include "common/check.h"
#include "launch/commands.h"
#include "model/checkpoint.h"

namespace v4rt::launch {
namespace {

struct InspectOptions {
  std::string model;
  bool memory = false;
};

// A "Vm*:" line of /proc/self/status in KiB, or -1 where unavailable.
int64_t proc_status_kib(const std::string& key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.compare(0, key.size() + 1, key + ":") == 0) return std::stoll(line.substr(key.size() + 1));
  }
  return -1;
}

double mib(uint64_t bytes) { return double(bytes) / double(1 << 20); }

std::string layer_line(const model::ModelConfig& c, int layer, bool mtp) {
  const int ratio = c.compress_ratio(layer);
  std::string kind = ratio == 0 ? "window" : ratio == 4 ? "CSA (ratio 4) + indexer" : "HCA (ratio 128)";
  const bool hash = !mtp && c.is_hash_layer(layer);
  return kind + ", " + (hash ? "hash-routed MoE" : "score-routed MoE");
}

void run_inspect(const InspectOptions& o) {
  auto ck = model::Checkpoint::open(o.model);  // throws on any header or tensor-set problem
  const model::ModelConfig& c = ck->config();
  std::printf("model: %s\n", o.model.c_str());
  std::printf("config: %s, vocab %lld, hidden %lld, %d layers%s\n", c.architecture.c_str(),
              static_cast<long long>(c.vocab_size), static_cast<long long>(c.hidden_size), c.num_hidden_layers,
              c.num_nextn_predict_layers ? (" + " + std::to_string(c.num_nextn_predict_layers) + " MTP").c_str() : "");
  std::printf("  attention: %d heads x %d (rope %d), q_lora %d, o_groups %d x o_lora %d, window %d\n",
              c.num_attention_heads, c.head_dim, c.qk_rope_head_dim, c.q_lora_rank, c.o_groups, c.o_lora_rank,
              c.sliding_window);
  std::printf("  indexer: %d heads x %d, top-%d\n", c.index_n_heads, c.index_head_dim, c.index_topk);
  std::printf("  moe: %d experts top-%d + %d shared, inter %d, %d hash layers, scale %.2f, experts %s\n",
              c.n_routed_experts, c.num_experts_per_tok, c.n_shared_experts, c.moe_intermediate_size,
              c.num_hash_layers, c.routed_scaling_factor, c.quant.expert_dtype.c_str());
  std::printf("layers:\n");
  for (int l = 0; l < c.num_hidden_layers; ++l) std::printf("  layers.%d: %s\n", l, layer_line(c, l, false).c_str());
  for (int m = 0; m < c.num_nextn_predict_layers; ++m)
    std::printf("  mtp.%d: %s\n", m, layer_line(c, c.num_hidden_layers + m, true).c_str());

  std::map<std::string, std::pair<uint64_t, uint64_t>> by_dtype;  // name -> (count, bytes)
  uint64_t total = 0;
  for (const auto& [name, t] : ck->tensors()) {
    auto& e = by_dtype[std::string(dtype_name(t.dtype))];
    ++e.first;
    e.second += t.bytes;
    total += t.bytes;
  }
  std::printf("tensors: %zu, %llu bytes (%.1f MiB)\n", ck->tensors().size(), static_cast<unsigned long long>(total),
              mib(total));
  for (const auto& [dt, e] : by_dtype)
    std::printf("  %-8s %7llu tensors %14llu bytes\n", dt.c_str(), static_cast<unsigned long long>(e.first),
                static_cast<unsigned long long>(e.second));
  std::printf("validation: ok (headers valid; tensor set matches config.json)\n");

  if (!o.memory) return;
  const int64_t rss_open = proc_status_kib("VmRSS");
  const auto t0 = std::chrono::steady_clock::now();
  uint64_t largest = 0;
  for (const auto& [name, t] : ck->tensors()) {
    if (t.dtype == DType::kF8E8M0) continue;  // consumed with its weight
    if (t.dtype == DType::kI64) {
      ck->read_i64(name);
      continue;
    }
    const std::vector<float> v = ck->read_f32(name);
    largest = std::max<uint64_t>(largest, v.size() * sizeof(float));
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("memory: read %.1f MiB of stored tensors in %.3f s (dequantized one at a time; largest fp32 %.1f MiB)\n",
              mib(ck->bytes_read()), secs, mib(largest));
  std::printf("  RSS after open: %.1f MiB; peak RSS (VmHWM): %.1f MiB\n", double(rss_open) / 1024.0,
              double(proc_status_kib("VmHWM")) / 1024.0);
}

}  // namespace

void register_inspect(CLI::App& app) {
  auto o = std::make_shared<InspectOptions>();
  CLI::App* cmd = app.add_subcommand("inspect", "Validate a checkpoint and summarize its config and tensors");
  cmd->add_option("--model", o->model, "Checkpoint directory (config.json + index + shards)")->required();
  cmd->add_flag("--memory", o->memory, "Read every tensor as the loader does and report peak RSS");
  cmd->callback([o] { run_inspect(*o); });
}

}  // namespace v4rt::launch
