// SPDX-License-Identifier: MIT
// The runtime YAML (configs/*.yaml): which checkpoint to serve, numerics mode, sampling defaults,
// the parallel layout, the server section and the named debug switches. Parsed in one place into
// plain structs with in-struct defaults; unknown keys and mistyped values are rejected naming the
// file, the key path and the line. YAML::Node never leaves runtime_config.cpp.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "kernels/backend_factory.h"
#include "parallel/layout.h"

namespace v4rt::launch {

struct SamplingDefaults {
  double temperature = 1.0;  // generation_config.json of the release
  double top_p = 1.0;
  uint64_t seed = 0;
  int max_tokens = 512;
  // Where tokens are drawn: "auto" (on the device for GPU backends, on the host for the CPU one),
  // "device" (Backend::sample: only ids and logprobs leave the device) or "host" (model::Sampler,
  // the reference). Speculative decoding and forced output always draw on the host.
  std::string draw = "auto";
};

struct ServerConfig {
  std::string host = "127.0.0.1";
  int port = 8080;
  std::string api_key;        // empty: no authentication
  int max_queue = 64;         // requests waiting beyond the running batch
  int64_t kv_budget_mb = 0;   // 0: derive from free memory
  std::string model_name;     // id served by /v1/models; empty: the checkpoint directory's name
  int max_batch_tokens = 256; // tokens per step (prefill chunks + decode tokens)
  int max_running = 32;       // sequences in the running batch
  int64_t max_context = 0;    // prompt + completion tokens; 0: the model's max_position_embeddings
  double request_timeout_s = 600;  // per request, from arrival to the last token
  bool prefix_cache = true;   // resume requests from cached prefix points (the `prefix_cache` section tunes it)
  std::string effort_dialect = "original";  // reasoning_effort table: original | v0731
  int max_body_mb = 32;       // larger request bodies get 413
  int max_connections = 1024; // open connections in total; more get 503 at once
  int max_connections_per_client = 256;  // per client address; more get 429 at once
  double receive_timeout_s = 30;  // to receive one request's headers and body; past it 408
};

// The prefix cache's tree (docs/PREFIX_CACHE.md); on and off with server.prefix_cache.
struct PrefixCacheConfig {
  int64_t block_tokens = 256;    // entry block size: a multiple of every compress ratio of the model
  int64_t every_n = 4096;        // a resumable point every N prompt tokens (0: only prompt end and message boundaries)
  double budget_fraction = 0.5;  // most of the KV budget the tree may hold, in (0, 1]
};

// Diagnostics, all off by default; listed by `--help-debug` (debug_switches()).
struct DebugConfig {
  bool sync_each_op = false;   // synchronize after every device op to pin async faults
  bool check_finite = false;   // fail on the first NaN/inf activation, naming layer and op
  std::string dump_dir;        // write every op's outputs (.npy, by layer and op) here (empty: off)
  bool cuda_sync_alloc = false;          // CUDA: plain cudaMalloc/cudaFree, no stream-ordered pool
  bool cuda_attention_per_warp = false;  // CUDA: sparse attention on the per-warp kernel only
  int64_t cuda_expert_tc_min_rows = 1;  // CUDA: tensor-core expert GEMM from this many rows per expert (0: never)
  bool cuda_attention_tc = true;         // CUDA: prefill sparse attention on tensor cores
  bool cuda_indexer_tc = true;           // CUDA: prefill indexer scores on tensor cores
  bool cuda_indexer_fp8 = true;          // CUDA: ... of compact keys on FP8 wgmma (false: bf16, bit-exact)
  bool cuda_indexer_predecode = true;    // CUDA: ... with the launch's keys decoded once, not per block
  bool cuda_indexer_head_sum_mma = true;  // CUDA: FP8 indexer kernels sum the head terms on tensor cores
  bool cuda_bf16_activations = true;      // CUDA: official numerics keep bf16-rounded activations as bf16
  bool cuda_expert_wgmma = true;         // CUDA: prefill-sized expert GEMMs on FP8 wgmma
  bool cuda_expert_wgmma_ws = true;      // CUDA: ... on the warp-specialized FP8 wgmma kernel
  bool cuda_expert_ws_persistent = true;  // CUDA: ... that kernel persistent (one block per SM)
  int cuda_expert_ws_a_copy = 1;          // CUDA: ... its activation tiles by 0 cp.async, 1 TMA, 2 TMA multicast
  bool cuda_expert_ws_weight_ring = false;  // CUDA: ... its raw weights through a ring of their own
  bool cuda_attention_wgmma = true;      // CUDA: ... of 32+ tiles (512-dim heads, bf16 rows), ws on wgmma
  int64_t cuda_attention_wgmma_min_tiles = 32;  // CUDA: ... from this many 64-candidate tiles (0: every length)
  bool cuda_attention_wgmma_cluster = true;    // CUDA: ... in pairs of blocks sharing the compressed tiles
  bool cuda_attention_ws = true;         // CUDA: prefill sparse attention (512-dim heads, bf16 rows), warp-specialized
  bool cuda_attention_bf16_view = true;  // CUDA: ... reading bf16 views of its rows (converted once per launch)
  bool cuda_decode_tc = true;            // CUDA: decode attention / indexer of a batch on tensor cores
  bool cuda_gemv_mma = true;             // CUDA: decode FP8 projections on FP8 mma.sync (gemv_mma.cu)
  bool cuda_moe_route_small = false;     // CUDA: decode routing layout in one single-block kernel
  int cuda_fp4_gemv_rows = 8;            // CUDA: decode expert GEMV rows a pass, 8 or 0 (by the mean)
  int cuda_fp4_gemv_k_split = 0;         // CUDA: decode expert GEMV k split, 0 (the default), 4, 2 or 1
  int cuda_fp4_gemv_l2_prefetch = 256;   // CUDA: decode expert GEMV weight copies' L2 prefetch, 256, 128 or 0
  bool cuda_hc_fused_sumsq = true;       // CUDA: hc_pre's sum of squares in its finishing kernel
  bool cuda_graph_replay = false;        // CUDA: with cuda_graphs, cached step executables updated, not recaptured
  bool cuda_graph_segments = false;      // CUDA: with cuda_graph_replay, a step replayed layer by layer
  bool cuda_pdl = true;                  // CUDA: programmatic dependent launch of every kernel
  std::string vmodule;         // glog --vmodule, e.g. "forward=2,moe=1"
  std::string log_dir;         // per-rank log files (empty: stderr)
  // TEST HOOK for end-to-end tests only: lets a request carry `test_hook_forced_output`, a text
  // the server emits (token by token, through the model steps) instead of sampling.
  bool test_hook_forced_output = false;
};

struct RuntimeConfig {
  std::string source;          // the file it came from ("<string>" when parsed from text)
  std::string model;           // checkpoint directory
  // "reference" (fp32, matches golden/) or "official" (the reference's rounding points); validated
  // here, turned into model::Numerics by model::parse_numerics (model.h).
  std::string numerics = "reference";
  // Most prompt tokens of one sequence in one step (chunked prefill) in every command; 0: no cap
  // (serve and batch fill the step budget, server.max_batch_tokens; generate and logits take the
  // prompt in one chunk). `--prefill-chunk` overrides it. kDefaultPrefillChunk bounds the prefill's
  // scratch (the indexer scores of a chunk: chunk x compressed keys x 4 bytes, 8.6 GB for a Flash
  // chunk at 1M) by the chunk, as the planner's prefill_chunk_tokens assumes.
  static constexpr int kDefaultPrefillChunk = 8192;
  int prefill_chunk = kDefaultPrefillChunk;
  // CUDA backend: record each decode step and run it as one CUDA graph (kernels/backend.h,
  // Backend::begin_graph); false launches every op on its own. `--no-graphs` turns it off too.
  bool cuda_graphs = false;
  SamplingDefaults sampling;
  parallel::Layout parallel;
  ServerConfig server;
  PrefixCacheConfig prefix_cache;
  DebugConfig debug;
};

// Parses YAML text; `source` names the file in errors. Throws v4rt::Error naming the key path on an
// unknown key, a wrong type or an out-of-range value.
RuntimeConfig parse_runtime_config(const std::string& yaml_text, const std::string& source);
RuntimeConfig load_runtime_config(const std::string& path);
// The resolved config as YAML (rank 0 logs it; ranks compare its hash).
std::string runtime_config_yaml(const RuntimeConfig& config);
// (name, description) of every debug switch, for --help-debug.
std::vector<std::pair<std::string, std::string>> debug_switches();
// Whether `config` draws tokens on the device of `backend` (sampling.draw).
bool draws_on_device(const RuntimeConfig& config, const kernels::Backend& backend);
// The backend settings `config` asks for (its debug switches that act on ops) on GPU `device_index`.
kernels::BackendOptions backend_options(const RuntimeConfig& config, int device_index);

}  // namespace v4rt::launch
