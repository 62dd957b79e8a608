// SPDX-License-Identifier: MIT
// Runtime YAML -> RuntimeConfig (see runtime_config.h). Each section is read through a Section
// that knows its allowed keys, so an unknown or misspelled key is an error naming file, key path
// and line, never silently ignored.
#include "launch/runtime_config.h"

#include <yaml-cpp/yaml.h>

#include <cmath>
#include <fstream>
#include <set>
#include <sstream>

#include "common/check.h"
#include "model/text/utf8.h"

namespace v4rt::launch {

namespace text = model::text;

namespace {

class Section {
 public:
  Section(const YAML::Node& node, std::string source, std::string path, std::set<std::string> allowed)
      : node_(node), source_(std::move(source)), path_(std::move(path)) {
    if (!node_ || node_.IsNull()) return;  // an empty section keeps every default
    V4RT_REQUIRE(node_.IsMap(), where_node(node_, path_) << " must be a mapping");
    std::set<std::string> seen;  // yaml-cpp keeps duplicate keys; the first would win silently
    for (auto it = node_.begin(); it != node_.end(); ++it) {
      V4RT_REQUIRE(it->first.IsScalar(), where_node(it->first, path_.empty() ? "<top level>" : path_)
                                             << " has a key that is not a plain string");
      const std::string key = it->first.as<std::string>();
      V4RT_REQUIRE(seen.insert(key).second, where_node(it->first, full(key)) << " appears twice");
      V4RT_REQUIRE(allowed.count(key), where_node(it->first, full(key)) << " is not a known key (known: " << join(allowed)
                                                                        << ")");
    }
  }

  template <typename T>
  void get(const std::string& key, T* out) const {
    if (!node_ || !node_.IsMap() || !node_[key]) return;
    const YAML::Node v = node_[key];
    V4RT_REQUIRE(v.IsScalar(), where_node(v, full(key)) << " must be a " << type_name<T>());
    try {
      *out = v.as<T>();
    } catch (const YAML::Exception&) {
      V4RT_FAIL(where_node(v, full(key)) << " must be a " << type_name<T>() << ", got '" << v.Scalar() << "'");
    }
    if constexpr (std::is_same_v<T, std::string>) check_text(v, key, *out);
  }
  // String values (paths, names, hosts) are one line of valid UTF-8: a control character or a
  // broken byte sequence cannot be a real path or name, and would not survive the resolved YAML
  // every rank hashes (a CR reads back as a line break).
  void check_text(const YAML::Node& v, const std::string& key, const std::string& s) const {
    for (size_t i = 0; i < s.size();) {
      uint32_t cp = 0;
      const size_t n = text::utf8_decode(s, i, &cp);
      V4RT_REQUIRE(n != 0, where_node(v, full(key)) << " is not valid UTF-8 (byte " << i << ")");
      V4RT_REQUIRE(cp >= 0x20 && cp != 0x7F && !(cp >= 0x80 && cp < 0xA0),
                   where_node(v, full(key)) << " holds a control character (U+" << std::hex << cp << " at byte "
                                            << std::dec << i << ")");
      i += n;
    }
  }
  YAML::Node child(const std::string& key) const {
    if (!node_ || !node_.IsMap()) return YAML::Node();
    return node_[key];
  }
  std::string full(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }
  std::string where(const std::string& key) const {
    if (node_ && node_.IsMap() && node_[key]) return where_node(node_[key], full(key));
    return source_ + ": key '" + full(key) + "'";
  }

 private:
  std::string where_node(const YAML::Node& n, const std::string& key) const {
    std::ostringstream os;
    os << source_;
    if (n.Mark().line >= 0) os << ':' << n.Mark().line + 1;
    os << ": key '" << key << "'";
    return os.str();
  }
  static std::string join(const std::set<std::string>& s) {
    std::string out;
    for (const std::string& k : s) out += (out.empty() ? "" : ", ") + k;
    return out;
  }
  template <typename T>
  static const char* type_name() {
    if constexpr (std::is_same_v<T, bool>) return "boolean";
    if constexpr (std::is_integral_v<T>) return "integer";
    if constexpr (std::is_floating_point_v<T>) return "number";
    return "string";
  }

  YAML::Node node_;
  std::string source_;
  std::string path_;
};

}  // namespace

RuntimeConfig parse_runtime_config(const std::string& yaml_text, const std::string& source) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    V4RT_FAIL(source << ": not valid YAML (" << e.what() << ")");
  }
  RuntimeConfig c;
  c.source = source;
  if (!root || root.IsNull()) return c;
  const Section top(root, source, "", {"model", "numerics", "prefill_chunk", "cuda_graphs", "sampling", "parallel", "server",
                                            "prefix_cache", "debug"});
  top.get("model", &c.model);
  top.get("numerics", &c.numerics);
  top.get("prefill_chunk", &c.prefill_chunk);
  V4RT_REQUIRE(c.prefill_chunk >= 0, top.where("prefill_chunk") << " must be >= 0, got " << c.prefill_chunk);
  top.get("cuda_graphs", &c.cuda_graphs);
  V4RT_REQUIRE(c.numerics == "reference" || c.numerics == "official",
               top.where("numerics") << " must be 'reference' or 'official', got '" << c.numerics << "'");

  const Section s(top.child("sampling"), source, "sampling", {"temperature", "top_p", "seed", "max_tokens", "draw"});
  s.get("temperature", &c.sampling.temperature);
  s.get("top_p", &c.sampling.top_p);
  s.get("seed", &c.sampling.seed);
  s.get("max_tokens", &c.sampling.max_tokens);
  s.get("draw", &c.sampling.draw);
  V4RT_REQUIRE(c.sampling.draw == "auto" || c.sampling.draw == "device" || c.sampling.draw == "host",
               s.where("draw") << " must be 'auto', 'device' or 'host', got '" << c.sampling.draw << "'");
  // The same ranges as a request's own sampling fields (OpenAI's); NaN fails every comparison.
  V4RT_REQUIRE(c.sampling.temperature >= 0.0 && c.sampling.temperature <= 2.0,
               s.where("temperature") << " must be in [0, 2], got " << c.sampling.temperature);
  V4RT_REQUIRE(c.sampling.top_p > 0.0 && c.sampling.top_p <= 1.0,
               s.where("top_p") << " must be in (0, 1], got " << c.sampling.top_p);
  V4RT_REQUIRE(c.sampling.max_tokens > 0, s.where("max_tokens") << " must be > 0");

  const Section p(top.child("parallel"), source, "parallel", {"tp", "sp", "ep", "dp", "sp_block"});
  p.get("tp", &c.parallel.tp);
  p.get("sp", &c.parallel.sp);
  p.get("ep", &c.parallel.ep);
  p.get("dp", &c.parallel.dp);
  p.get("sp_block", &c.parallel.sp_block);
  for (const auto& [key, v] : {std::pair<const char*, int>{"tp", c.parallel.tp}, {"sp", c.parallel.sp},
                               {"ep", c.parallel.ep}, {"dp", c.parallel.dp}, {"sp_block", c.parallel.sp_block}})
    V4RT_REQUIRE(v >= 1, p.where(key) << " must be >= 1, got " << v);
  // Sizes whose product overflows int would wrap world() into a small positive number.
  const int64_t ranks = int64_t(c.parallel.tp) * c.parallel.sp * c.parallel.dp;
  V4RT_REQUIRE(ranks <= (int64_t(1) << 20),
               top.where("parallel") << ": dp*sp*tp = " << ranks << " ranks is implausibly large");
  c.parallel.source = source;  // layout errors (parallel::validate) name the file

  const Section sv(top.child("server"), source, "server",
                   {"host", "port", "api_key", "max_queue", "kv_budget_mb", "model_name", "max_batch_tokens",
                    "max_running", "max_context", "request_timeout_s", "prefix_cache", "effort_dialect", "max_body_mb",
                    "max_connections", "max_connections_per_client", "receive_timeout_s"});
  sv.get("host", &c.server.host);
  sv.get("port", &c.server.port);
  sv.get("api_key", &c.server.api_key);
  sv.get("max_queue", &c.server.max_queue);
  sv.get("kv_budget_mb", &c.server.kv_budget_mb);
  sv.get("model_name", &c.server.model_name);
  sv.get("max_batch_tokens", &c.server.max_batch_tokens);
  sv.get("max_running", &c.server.max_running);
  sv.get("max_context", &c.server.max_context);
  sv.get("request_timeout_s", &c.server.request_timeout_s);
  sv.get("prefix_cache", &c.server.prefix_cache);
  sv.get("effort_dialect", &c.server.effort_dialect);
  sv.get("max_body_mb", &c.server.max_body_mb);
  sv.get("max_connections", &c.server.max_connections);
  sv.get("max_connections_per_client", &c.server.max_connections_per_client);
  sv.get("receive_timeout_s", &c.server.receive_timeout_s);
  V4RT_REQUIRE(c.server.port >= 0 && c.server.port <= 65535, sv.where("port") << " must be in [0, 65535]");
  V4RT_REQUIRE(c.server.max_queue >= 0, sv.where("max_queue") << " must be >= 0");
  V4RT_REQUIRE(c.server.kv_budget_mb >= 0, sv.where("kv_budget_mb") << " must be >= 0");
  V4RT_REQUIRE(c.server.max_batch_tokens >= 1, sv.where("max_batch_tokens") << " must be >= 1");
  V4RT_REQUIRE(c.server.max_running >= 1, sv.where("max_running") << " must be >= 1");
  V4RT_REQUIRE(c.server.max_context >= 0, sv.where("max_context") << " must be >= 0");
  V4RT_REQUIRE(c.server.request_timeout_s > 0 && std::isfinite(c.server.request_timeout_s),
               sv.where("request_timeout_s") << " must be a finite number > 0, got " << c.server.request_timeout_s);
  V4RT_REQUIRE(c.server.effort_dialect == "original" || c.server.effort_dialect == "v0731",
               sv.where("effort_dialect") << " must be 'original' or 'v0731', got '" << c.server.effort_dialect << "'");
  V4RT_REQUIRE(c.server.max_body_mb >= 1, sv.where("max_body_mb") << " must be >= 1");
  V4RT_REQUIRE(c.server.max_body_mb <= 4096, sv.where("max_body_mb") << " must be <= 4096");
  V4RT_REQUIRE(c.server.max_connections >= 1, sv.where("max_connections") << " must be >= 1");
  V4RT_REQUIRE(c.server.max_connections_per_client >= 1, sv.where("max_connections_per_client") << " must be >= 1");
  V4RT_REQUIRE(c.server.receive_timeout_s > 0 && std::isfinite(c.server.receive_timeout_s),
               sv.where("receive_timeout_s") << " must be a finite number > 0, got " << c.server.receive_timeout_s);

  const Section pc(top.child("prefix_cache"), source, "prefix_cache", {"block_tokens", "every_n", "budget_fraction"});
  pc.get("block_tokens", &c.prefix_cache.block_tokens);
  pc.get("every_n", &c.prefix_cache.every_n);
  pc.get("budget_fraction", &c.prefix_cache.budget_fraction);
  // Multiples of the model's compress ratios are checked when the model is known (validate_block_tokens).
  V4RT_REQUIRE(c.prefix_cache.block_tokens >= 1 && c.prefix_cache.block_tokens <= (int64_t(1) << 20),
               pc.where("block_tokens") << " must be in [1, 2^20], got " << c.prefix_cache.block_tokens);
  V4RT_REQUIRE(c.prefix_cache.every_n >= 0, pc.where("every_n") << " must be >= 0, got " << c.prefix_cache.every_n);
  V4RT_REQUIRE(c.prefix_cache.budget_fraction > 0 && c.prefix_cache.budget_fraction <= 1,
               pc.where("budget_fraction") << " must be in (0, 1], got " << c.prefix_cache.budget_fraction);

  std::set<std::string> debug_keys;
  for (const auto& [name, help] : debug_switches()) debug_keys.insert(name);
  const Section d(top.child("debug"), source, "debug", debug_keys);
  d.get("sync_each_op", &c.debug.sync_each_op);
  d.get("check_finite", &c.debug.check_finite);
  d.get("dump_dir", &c.debug.dump_dir);
  d.get("cuda_sync_alloc", &c.debug.cuda_sync_alloc);
  d.get("cuda_attention_per_warp", &c.debug.cuda_attention_per_warp);
  d.get("cuda_expert_tc_min_rows", &c.debug.cuda_expert_tc_min_rows);
  d.get("cuda_attention_tc", &c.debug.cuda_attention_tc);
  d.get("cuda_indexer_tc", &c.debug.cuda_indexer_tc);
  d.get("cuda_indexer_fp8", &c.debug.cuda_indexer_fp8);
  d.get("cuda_indexer_predecode", &c.debug.cuda_indexer_predecode);
  d.get("cuda_indexer_head_sum_mma", &c.debug.cuda_indexer_head_sum_mma);
  d.get("cuda_bf16_activations", &c.debug.cuda_bf16_activations);
  d.get("cuda_expert_wgmma", &c.debug.cuda_expert_wgmma);
  d.get("cuda_expert_wgmma_ws", &c.debug.cuda_expert_wgmma_ws);
  d.get("cuda_expert_ws_persistent", &c.debug.cuda_expert_ws_persistent);
  d.get("cuda_expert_ws_a_copy", &c.debug.cuda_expert_ws_a_copy);
  d.get("cuda_expert_ws_weight_ring", &c.debug.cuda_expert_ws_weight_ring);
  d.get("cuda_attention_wgmma", &c.debug.cuda_attention_wgmma);
  d.get("cuda_attention_wgmma_min_tiles", &c.debug.cuda_attention_wgmma_min_tiles);
  d.get("cuda_attention_wgmma_cluster", &c.debug.cuda_attention_wgmma_cluster);
  d.get("cuda_attention_ws", &c.debug.cuda_attention_ws);
  d.get("cuda_attention_bf16_view", &c.debug.cuda_attention_bf16_view);
  d.get("cuda_gemv_mma", &c.debug.cuda_gemv_mma);
  d.get("cuda_moe_route_small", &c.debug.cuda_moe_route_small);
  d.get("cuda_fp4_gemv_rows", &c.debug.cuda_fp4_gemv_rows);
  d.get("cuda_fp4_gemv_k_split", &c.debug.cuda_fp4_gemv_k_split);
  d.get("cuda_fp4_gemv_l2_prefetch", &c.debug.cuda_fp4_gemv_l2_prefetch);
  d.get("cuda_hc_fused_sumsq", &c.debug.cuda_hc_fused_sumsq);
  d.get("cuda_graph_replay", &c.debug.cuda_graph_replay);
  d.get("cuda_pdl", &c.debug.cuda_pdl);
  d.get("cuda_graph_segments", &c.debug.cuda_graph_segments);
  d.get("cuda_decode_tc", &c.debug.cuda_decode_tc);
  V4RT_REQUIRE(c.debug.cuda_fp4_gemv_rows == 0 || c.debug.cuda_fp4_gemv_rows == 8,
               d.where("cuda_fp4_gemv_rows") << " must be 0 (by the mean rows) or 8, got " << c.debug.cuda_fp4_gemv_rows);
  V4RT_REQUIRE(c.debug.cuda_fp4_gemv_k_split == 0 || c.debug.cuda_fp4_gemv_k_split == 4 ||
                   c.debug.cuda_fp4_gemv_k_split == 2 || c.debug.cuda_fp4_gemv_k_split == 1,
               d.where("cuda_fp4_gemv_k_split") << " must be 0 (the default), 4, 2 or 1, got "
                                                << c.debug.cuda_fp4_gemv_k_split);
  V4RT_REQUIRE(c.debug.cuda_fp4_gemv_l2_prefetch == 0 || c.debug.cuda_fp4_gemv_l2_prefetch == 128 ||
                   c.debug.cuda_fp4_gemv_l2_prefetch == 256,
               d.where("cuda_fp4_gemv_l2_prefetch") << " must be 256 (the default), 128 or 0 (no hint), got "
                                                    << c.debug.cuda_fp4_gemv_l2_prefetch);
  V4RT_REQUIRE(c.debug.cuda_expert_ws_a_copy >= 0 && c.debug.cuda_expert_ws_a_copy <= 2,
               d.where("cuda_expert_ws_a_copy") << " must be 0 (cp.async), 1 (TMA, the default) or 2 (TMA multicast "
                                                   "in clusters of two), got "
                                                << c.debug.cuda_expert_ws_a_copy);
  V4RT_REQUIRE(c.debug.cuda_expert_tc_min_rows >= 0 && c.debug.cuda_expert_tc_min_rows <= (int64_t(1) << 30),
               d.where("cuda_expert_tc_min_rows") << " must be in [0, 2^30], got " << c.debug.cuda_expert_tc_min_rows);
  V4RT_REQUIRE(c.debug.cuda_attention_wgmma_min_tiles >= 0 && c.debug.cuda_attention_wgmma_min_tiles <= (int64_t(1) << 30),
               d.where("cuda_attention_wgmma_min_tiles") << " must be in [0, 2^30], got "
                                                         << c.debug.cuda_attention_wgmma_min_tiles);
  d.get("vmodule", &c.debug.vmodule);
  d.get("log_dir", &c.debug.log_dir);
  d.get("test_hook_forced_output", &c.debug.test_hook_forced_output);
  return c;
}

RuntimeConfig load_runtime_config(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  V4RT_REQUIRE(in, path << ": cannot open runtime config");
  std::ostringstream ss;
  ss << in.rdbuf();
  return parse_runtime_config(ss.str(), path);
}

std::vector<std::pair<std::string, std::string>> debug_switches() {
  return {
      {"sync_each_op", "synchronize the device after every op, so an async fault names the op that caused it"},
      {"check_finite", "stop at the first NaN/inf activation, naming the layer and op"},
      {"dump_dir",
       "write every op's outputs as .npy files named by number, layer and op (index.tsv lists them) into this "
       "directory"},
      {"cuda_sync_alloc", "CUDA: plain cudaMalloc/cudaFree instead of the stream-ordered pool"},
      {"cuda_attention_per_warp", "CUDA: sparse attention on the per-warp kernel only, never the multi-query one"},
      {"cuda_expert_tc_min_rows",
       "CUDA: rows per expert from which FP4 expert GEMMs take the tensor-core W4A8 kernel (default 1: always; 0: never)"},
      {"cuda_attention_tc", "CUDA: prefill sparse attention on bf16 tensor cores (default true; false: CUDA cores)"},
      {"cuda_indexer_tc", "CUDA: prefill lightning-indexer scores on bf16 tensor cores (default true; false: CUDA cores)"},
      {"cuda_indexer_fp8", "CUDA: prefill indexer scores of compact FP4 keys on FP8 wgmma (default true; false: the "
                           "bf16 kernel, bit-identical to the reference's scores)"},
      {"cuda_indexer_predecode", "CUDA: the FP8 prefill indexer reads its launch's keys decoded to e4m3 once, "
                                 "instead of each block decoding every key tile it reads (default true)"},
      {"cuda_indexer_head_sum_mma", "CUDA: the FP8 indexer kernels sum each score's head terms with mma.sync against "
                                    "a column of ones instead of fp32 adds per thread (default true)"},
      {"cuda_bf16_activations", "CUDA: under the official numerics the activations their writers round to bf16 (the "
                                "queries, the attention and wo_a outputs, the shared expert's, the indexer scores) are "
                                "stored as bf16 (default true; false: F32)"},
      {"cuda_expert_wgmma", "CUDA: prefill-sized routed-expert GEMMs (a mean of 96+ rows per expert) on FP8 wgmma "
                            "instead of the mma.sync W4A8 tile kernel (default true)"},
      {"cuda_expert_wgmma_ws", "CUDA: the same GEMMs on the warp-specialized FP8 wgmma kernel (producer warpgroup "
                               "copies and decodes the weights), taken before cuda_expert_wgmma's (default true)"},
      {"cuda_expert_ws_persistent", "CUDA: that kernel persistent, one block per SM walking the tiles so the next "
                                    "tile's copies run under this one's MMAs and stores (default true; false: one "
                                    "block per tile)"},
      {"cuda_expert_ws_a_copy", "CUDA: how that kernel's activation tiles reach shared memory: 0 by the producer "
                                "warps' cp.async, 1 by one tensor-map copy (TMA) a step (default), 2 by TMA in "
                                "clusters of two blocks on adjacent channel tiles, each block's half multicast "
                                "into both (the same bits)"},
      {"cuda_expert_ws_weight_ring", "CUDA: that kernel's raw weights through a ring of their own, each producer "
                                     "warp's copies seven steps ahead of its decode; the activations by TMA (a "
                                     "cuda_expert_ws_a_copy of 0 runs as 1; default false; the same bits)"},
      {"cuda_attention_wgmma", "CUDA: prefill sparse attention of 512-dim heads whose rows are all bf16 (the bf16 "
                               "views) and whose candidate lists reach 32 tiles on the warp-specialized bf16 wgmma "
                               "kernel, taken before cuda_attention_ws's (default true; needs cuda_attention_tc)"},
      {"cuda_attention_wgmma_min_tiles", "CUDA: the candidate-list length in 64-candidate tiles from which "
                                         "cuda_attention_wgmma takes a launch (default 32; 0: every length)"},
      {"cuda_attention_wgmma_cluster", "CUDA: that kernel in clusters of two adjacent tokens' blocks, which copy "
                                       "the compressed tiles both walk (the HCA layer's entries) from L2 once, "
                                       "multicast to both (default true: 12% less 1M prefill attention time on an "
                                       "H100)"},
      {"cuda_attention_ws", "CUDA: prefill sparse attention of 512-dim heads whose rows are all bf16 (the bf16 "
                            "views) on the warp-specialized kernel (a producer warpgroup copies the next tile under "
                            "the MMAs; default true; needs cuda_attention_tc)"},
      {"cuda_attention_bf16_view", "CUDA: prefill sparse attention on tensor cores first converts its F32 window rows "
                                   "and compact FP8 entries into bf16 views (exact, once per launch) and copies its "
                                   "tiles from them by cp.async (default true; same outputs)"},
      {"cuda_decode_tc", "CUDA: decode-sized sparse attention on the bf16 tensor-core kernel split over the candidates, "
                         "and decode batches' indexer scores of compact FP4 keys on FP8 wgmma (default true; needs "
                         "cuda_attention_tc / cuda_indexer_fp8)"},
      {"cuda_gemv_mma", "CUDA: decode-sized FP8 projections (up to 8 tokens) with their products on FP8 mma.sync "
                        "instead of the CUDA cores (default true)"},
      {"cuda_moe_route_small", "CUDA: the MoE routing layout of up to 1,024 (token, expert) entries in one single-block "
                               "kernel instead of three launches (default false: no faster in the H100 decode step)"},
      {"cuda_fp4_gemv_rows", "CUDA: the decode expert GEMV's rows a pass: 8 keeps passes of 8 rows and the GEMV up to "
                             "a mean of 4 rows an expert (6 for gate/up); 0 picks by the mean rows (16 above a mean "
                             "of 4, and the GEMV up to a mean of 8; slower on an H100) (default 8)"},
      {"cuda_fp4_gemv_k_split", "CUDA: the decode expert GEMV's k split: how many ranges of k a block's 4 warps "
                                "take (4, 2 or 1; the rest split the channels); 0 the largest that gives each warp 8 steps of "
                                "128 inputs (default 0)"},
      {"cuda_fp4_gemv_l2_prefetch", "CUDA: the decode expert GEMV's weight copies ask the L2 to fetch the aligned "
                                    "256 or 128 bytes around each 64-byte piece; 0 no hint (default 256)"},
      {"cuda_hc_fused_sumsq", "CUDA: hc_pre from 32 tokens takes the sum of squares of x in its finishing kernel "
                              "instead of a separate pass over x (default true: 20% less hc_pre time in the H100 8K prefill)"},
      {"cuda_graph_replay", "CUDA, with cuda_graphs: a decode step is logged instead of captured and runs a cached "
                            "graph of the same launches with only the changed kernel parameters set; captured only "
                            "when no cached graph matches (default false: on an H100 slower than launching op by op, "
                            "docs/CUDA.md)"},
      {"cuda_graph_segments", "CUDA, with cuda_graphs and cuda_graph_replay: a decode step is replayed layer by "
                              "layer, each layer's graph launched as soon as it is logged, so the host logs the next "
                              "layer while the GPU runs this one (default false: on an H100 no faster than op-by-op "
                              "launches)"},
      {"cuda_pdl", "CUDA: every kernel launched with programmatic stream serialization, so its launch and block "
                   "set-up overlap the end of the kernel before it; each kernel waits for that one's results "
                   "before its first load (default true)"},
      {"vmodule", "glog verbose levels per file, e.g. 'forward=2,moe=1'"},
      {"log_dir", "per-rank log files in this directory instead of stderr only"},
      {"test_hook_forced_output",
       "TEST HOOK (end-to-end tests only): `v4rt serve` accepts a request field test_hook_forced_output whose text is "
       "emitted instead of sampled tokens"},
  };
}

bool draws_on_device(const RuntimeConfig& config, const kernels::Backend& backend) {
  if (config.sampling.draw == "auto") return backend.device() != Device::kHost;
  return config.sampling.draw == "device";
}

kernels::BackendOptions backend_options(const RuntimeConfig& config, int device_index) {
  kernels::BackendOptions o;
  o.device_index = device_index;
  o.debug.sync_each_op = config.debug.sync_each_op;
  o.debug.check_finite = config.debug.check_finite;
  o.debug.dump_dir = config.debug.dump_dir;
  o.cuda_sync_alloc = config.debug.cuda_sync_alloc;
  o.cuda_attention_per_warp = config.debug.cuda_attention_per_warp;
  o.cuda_expert_tc_min_rows = config.debug.cuda_expert_tc_min_rows;
  o.cuda_attention_tc = config.debug.cuda_attention_tc;
  o.cuda_indexer_tc = config.debug.cuda_indexer_tc;
  o.cuda_indexer_fp8 = config.debug.cuda_indexer_fp8;
  o.cuda_indexer_predecode = config.debug.cuda_indexer_predecode;
  o.cuda_indexer_head_sum_mma = config.debug.cuda_indexer_head_sum_mma;
  o.cuda_bf16_activations = config.debug.cuda_bf16_activations;
  o.cuda_expert_wgmma = config.debug.cuda_expert_wgmma;
  o.cuda_expert_wgmma_ws = config.debug.cuda_expert_wgmma_ws;
  o.cuda_expert_ws_persistent = config.debug.cuda_expert_ws_persistent;
  o.cuda_expert_ws_a_copy = config.debug.cuda_expert_ws_a_copy;
  o.cuda_expert_ws_weight_ring = config.debug.cuda_expert_ws_weight_ring;
  o.cuda_attention_wgmma = config.debug.cuda_attention_wgmma;
  o.cuda_attention_wgmma_min_tiles = config.debug.cuda_attention_wgmma_min_tiles;
  o.cuda_attention_wgmma_cluster = config.debug.cuda_attention_wgmma_cluster;
  o.cuda_attention_ws = config.debug.cuda_attention_ws;
  o.cuda_attention_bf16_view = config.debug.cuda_attention_bf16_view;
  o.cuda_gemv_mma = config.debug.cuda_gemv_mma;
  o.cuda_moe_route_small = config.debug.cuda_moe_route_small;
  o.cuda_fp4_gemv_rows = config.debug.cuda_fp4_gemv_rows;
  o.cuda_fp4_gemv_k_split = config.debug.cuda_fp4_gemv_k_split;
  o.cuda_fp4_gemv_l2_prefetch = config.debug.cuda_fp4_gemv_l2_prefetch;
  o.cuda_hc_fused_sumsq = config.debug.cuda_hc_fused_sumsq;
  o.cuda_decode_tc = config.debug.cuda_decode_tc;
  o.cuda_graphs = config.cuda_graphs;
  o.cuda_graph_replay = config.debug.cuda_graph_replay;
  o.cuda_pdl = config.debug.cuda_pdl;
  o.cuda_graph_segments = config.debug.cuda_graph_segments;
  return o;
}

std::string runtime_config_yaml(const RuntimeConfig& c) {
  YAML::Emitter out;
  out << YAML::BeginMap;
  out << YAML::Key << "model" << YAML::Value << c.model;
  out << YAML::Key << "numerics" << YAML::Value << c.numerics;
  out << YAML::Key << "prefill_chunk" << YAML::Value << c.prefill_chunk;
  out << YAML::Key << "cuda_graphs" << YAML::Value << c.cuda_graphs;
  out << YAML::Key << "sampling" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "temperature" << YAML::Value << c.sampling.temperature;
  out << YAML::Key << "top_p" << YAML::Value << c.sampling.top_p;
  out << YAML::Key << "seed" << YAML::Value << c.sampling.seed;
  out << YAML::Key << "max_tokens" << YAML::Value << c.sampling.max_tokens;
  out << YAML::Key << "draw" << YAML::Value << c.sampling.draw;
  out << YAML::EndMap;
  out << YAML::Key << "parallel" << YAML::Value << YAML::Flow << YAML::BeginMap;
  out << YAML::Key << "tp" << YAML::Value << c.parallel.tp << YAML::Key << "sp" << YAML::Value << c.parallel.sp;
  out << YAML::Key << "ep" << YAML::Value << c.parallel.ep << YAML::Key << "dp" << YAML::Value << c.parallel.dp;
  out << YAML::Key << "sp_block" << YAML::Value << c.parallel.sp_block;
  out << YAML::EndMap;
  out << YAML::Key << "server" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "host" << YAML::Value << c.server.host;
  out << YAML::Key << "port" << YAML::Value << c.server.port;
  out << YAML::Key << "api_key" << YAML::Value << (c.server.api_key.empty() ? "" : "<set>");
  out << YAML::Key << "max_queue" << YAML::Value << c.server.max_queue;
  out << YAML::Key << "kv_budget_mb" << YAML::Value << c.server.kv_budget_mb;
  out << YAML::Key << "model_name" << YAML::Value << c.server.model_name;
  out << YAML::Key << "max_batch_tokens" << YAML::Value << c.server.max_batch_tokens;
  out << YAML::Key << "max_running" << YAML::Value << c.server.max_running;
  out << YAML::Key << "max_context" << YAML::Value << c.server.max_context;
  out << YAML::Key << "request_timeout_s" << YAML::Value << c.server.request_timeout_s;
  out << YAML::Key << "prefix_cache" << YAML::Value << c.server.prefix_cache;
  out << YAML::Key << "effort_dialect" << YAML::Value << c.server.effort_dialect;
  out << YAML::Key << "max_body_mb" << YAML::Value << c.server.max_body_mb;
  out << YAML::Key << "max_connections" << YAML::Value << c.server.max_connections;
  out << YAML::Key << "max_connections_per_client" << YAML::Value << c.server.max_connections_per_client;
  out << YAML::Key << "receive_timeout_s" << YAML::Value << c.server.receive_timeout_s;
  out << YAML::EndMap;
  out << YAML::Key << "prefix_cache" << YAML::Value << YAML::Flow << YAML::BeginMap;
  out << YAML::Key << "block_tokens" << YAML::Value << c.prefix_cache.block_tokens;
  out << YAML::Key << "every_n" << YAML::Value << c.prefix_cache.every_n;
  out << YAML::Key << "budget_fraction" << YAML::Value << c.prefix_cache.budget_fraction;
  out << YAML::EndMap;
  out << YAML::Key << "debug" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "sync_each_op" << YAML::Value << c.debug.sync_each_op;
  out << YAML::Key << "check_finite" << YAML::Value << c.debug.check_finite;
  out << YAML::Key << "dump_dir" << YAML::Value << c.debug.dump_dir;
  out << YAML::Key << "cuda_sync_alloc" << YAML::Value << c.debug.cuda_sync_alloc;
  out << YAML::Key << "cuda_attention_per_warp" << YAML::Value << c.debug.cuda_attention_per_warp;
  out << YAML::Key << "cuda_expert_tc_min_rows" << YAML::Value << c.debug.cuda_expert_tc_min_rows;
  out << YAML::Key << "cuda_attention_tc" << YAML::Value << c.debug.cuda_attention_tc;
  out << YAML::Key << "cuda_indexer_tc" << YAML::Value << c.debug.cuda_indexer_tc;
  out << YAML::Key << "cuda_indexer_fp8" << YAML::Value << c.debug.cuda_indexer_fp8;
  out << YAML::Key << "cuda_indexer_predecode" << YAML::Value << c.debug.cuda_indexer_predecode;
  out << YAML::Key << "cuda_indexer_head_sum_mma" << YAML::Value << c.debug.cuda_indexer_head_sum_mma;
  out << YAML::Key << "cuda_bf16_activations" << YAML::Value << c.debug.cuda_bf16_activations;
  out << YAML::Key << "cuda_expert_wgmma" << YAML::Value << c.debug.cuda_expert_wgmma;
  out << YAML::Key << "cuda_expert_wgmma_ws" << YAML::Value << c.debug.cuda_expert_wgmma_ws;
  out << YAML::Key << "cuda_expert_ws_persistent" << YAML::Value << c.debug.cuda_expert_ws_persistent;
  out << YAML::Key << "cuda_expert_ws_a_copy" << YAML::Value << c.debug.cuda_expert_ws_a_copy;
  out << YAML::Key << "cuda_expert_ws_weight_ring" << YAML::Value << c.debug.cuda_expert_ws_weight_ring;
  out << YAML::Key << "cuda_attention_wgmma" << YAML::Value << c.debug.cuda_attention_wgmma;
  out << YAML::Key << "cuda_attention_wgmma_min_tiles" << YAML::Value << c.debug.cuda_attention_wgmma_min_tiles;
  out << YAML::Key << "cuda_attention_wgmma_cluster" << YAML::Value << c.debug.cuda_attention_wgmma_cluster;
  out << YAML::Key << "cuda_attention_ws" << YAML::Value << c.debug.cuda_attention_ws;
  out << YAML::Key << "cuda_attention_bf16_view" << YAML::Value << c.debug.cuda_attention_bf16_view;
  out << YAML::Key << "cuda_gemv_mma" << YAML::Value << c.debug.cuda_gemv_mma;
  out << YAML::Key << "cuda_moe_route_small" << YAML::Value << c.debug.cuda_moe_route_small;
  out << YAML::Key << "cuda_fp4_gemv_rows" << YAML::Value << c.debug.cuda_fp4_gemv_rows;
  out << YAML::Key << "cuda_fp4_gemv_k_split" << YAML::Value << c.debug.cuda_fp4_gemv_k_split;
  out << YAML::Key << "cuda_fp4_gemv_l2_prefetch" << YAML::Value << c.debug.cuda_fp4_gemv_l2_prefetch;
  out << YAML::Key << "cuda_hc_fused_sumsq" << YAML::Value << c.debug.cuda_hc_fused_sumsq;
  out << YAML::Key << "cuda_graph_replay" << YAML::Value << c.debug.cuda_graph_replay;
  out << YAML::Key << "cuda_pdl" << YAML::Value << c.debug.cuda_pdl;
  out << YAML::Key << "cuda_graph_segments" << YAML::Value << c.debug.cuda_graph_segments;
  out << YAML::Key << "cuda_decode_tc" << YAML::Value << c.debug.cuda_decode_tc;
  out << YAML::Key << "vmodule" << YAML::Value << c.debug.vmodule;
  out << YAML::Key << "log_dir" << YAML::Value << c.debug.log_dir;
  out << YAML::Key << "test_hook_forced_output" << YAML::Value << c.debug.test_hook_forced_output;
  out << YAML::EndMap;
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

}  // namespace v4rt::launch
