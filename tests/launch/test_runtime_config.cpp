// SPDX-License-Identifier: MIT
// Runtime YAML: the shipped configs parse to the layouts their names promise; unknown keys, wrong
// types and out-of-range values are rejected naming file, key path and line.
#include <gtest/gtest.h>

#include "launch/model_run.h"
#include "launch/runtime_config.h"
#include "tests/model/test_util.h"

namespace v4rt::launch {
namespace {

using model::testing::expect_error_naming;

const std::string kConfigs = V4RT_SOURCE_DIR "/configs";

TEST(RuntimeConfig, DefaultParses) {
  const RuntimeConfig c = load_runtime_config(kConfigs + "/default.yaml");
  EXPECT_EQ(c.model, "data/models/tiny");
  EXPECT_EQ(c.numerics, "reference");
  EXPECT_DOUBLE_EQ(c.sampling.temperature, 1.0);
  EXPECT_DOUBLE_EQ(c.sampling.top_p, 1.0);
  EXPECT_EQ(c.sampling.max_tokens, 512);
  EXPECT_EQ(c.parallel.world(), 1);
  EXPECT_EQ(c.server.port, 8080);
  EXPECT_FALSE(c.debug.sync_each_op);
  // The emitted YAML parses back to the same thing.
  const RuntimeConfig back = parse_runtime_config(runtime_config_yaml(c), "emitted");
  EXPECT_EQ(runtime_config_yaml(back), runtime_config_yaml(c));
}

TEST(RuntimeConfig, LayoutExamples) {
  struct Case {
    const char* file;
    int tp, sp, ep, dp;
  };
  for (const Case& k : {Case{"tp2", 2, 1, 1, 1}, Case{"sp2", 1, 2, 1, 1}, Case{"ep2", 1, 1, 2, 2},
                        Case{"tp2_sp2", 2, 2, 1, 1}, Case{"sp4", 1, 4, 1, 1}, Case{"ep4_tp2", 2, 1, 4, 2},
                        Case{"dp2_tp2", 2, 1, 1, 2}}) {
    const RuntimeConfig c = load_runtime_config(kConfigs + "/" + k.file + ".yaml");
    EXPECT_EQ(c.parallel.tp, k.tp) << k.file;
    EXPECT_EQ(c.parallel.sp, k.sp) << k.file;
    EXPECT_EQ(c.parallel.ep, k.ep) << k.file;
    EXPECT_EQ(c.parallel.dp, k.dp) << k.file;
    EXPECT_EQ(c.model, "data/models/tiny") << k.file;
  }
}

TEST(RuntimeConfig, GoodTextParses) {
  const RuntimeConfig c = parse_runtime_config(
      "model: /m\nnumerics: official\nsampling: {temperature: 0.6, top_p: 0.95, seed: 42, max_tokens: 64}\n"
      "parallel: {tp: 4, sp: 2}\nserver: {port: 9000, api_key: k}\ndebug: {check_finite: true, vmodule: 'a=1'}\n",
      "t.yaml");
  EXPECT_EQ(c.model, "/m");
  EXPECT_EQ(c.numerics, "official");
  EXPECT_DOUBLE_EQ(c.sampling.temperature, 0.6);
  EXPECT_EQ(c.sampling.seed, 42u);
  EXPECT_EQ(c.parallel.tp, 4);
  EXPECT_EQ(c.parallel.sp, 2);
  EXPECT_EQ(c.parallel.ep, 1);  // default kept
  EXPECT_EQ(c.parallel.world(), 8);
  EXPECT_EQ(c.server.port, 9000);
  EXPECT_EQ(c.server.api_key, "k");
  EXPECT_TRUE(c.debug.check_finite);
  EXPECT_EQ(c.debug.vmodule, "a=1");
  EXPECT_EQ(parse_runtime_config("", "empty.yaml").parallel.world(), 1);
}

// sampling.draw picks the sampler: auto follows the backend's device; a wrong value names the key.
TEST(RuntimeConfig, SamplingDrawChoosesTheSampler) {
  const auto cpu = kernels::make_cpu_backend();
  EXPECT_EQ(parse_runtime_config("", "d.yaml").sampling.draw, "auto");
  EXPECT_FALSE(draws_on_device(parse_runtime_config("", "d.yaml"), *cpu));  // the CPU draws on the host
  const RuntimeConfig on = parse_runtime_config("sampling: {draw: device}\n", "d.yaml");
  EXPECT_TRUE(draws_on_device(on, *cpu));
  EXPECT_EQ(parse_runtime_config(runtime_config_yaml(on), "emitted").sampling.draw, "device");
  EXPECT_FALSE(draws_on_device(parse_runtime_config("sampling: {draw: host}\n", "d.yaml"), *cpu));
  expect_error_naming([] { parse_runtime_config("sampling:\n  draw: gpu\n", "d.yaml"); },
                      {"d.yaml:2", "'sampling.draw'", "'gpu'"});
}

TEST(RuntimeConfig, UnknownKeyRejected) {
  expect_error_naming([] { parse_runtime_config("model: x\nparallel:\n  tp: 2\n  tpp: 2\n", "a.yaml"); },
                      {"a.yaml:4", "'parallel.tpp'", "not a known key"});
  expect_error_naming([] { parse_runtime_config("modle: x\n", "b.yaml"); }, {"b.yaml", "'modle'"});
  expect_error_naming([] { parse_runtime_config("debug: {trace_all: true}\n", "c.yaml"); }, {"'debug.trace_all'"});
}

// A string value with a control character or broken UTF-8 is no path or name, and would not read
// back the same from the resolved YAML (fuzz regression runtime_config/cr_invalid_utf8_model).
TEST(RuntimeConfig, ControlCharactersAndBrokenUtf8Rejected) {
  expect_error_naming([] { parse_runtime_config("model: \"a\\rb\"\n", "cr.yaml"); },
                      {"cr.yaml:1", "'model'", "control character"});
  expect_error_naming([] { parse_runtime_config("server: {model_name: \"x\\ty\"}\n", "tab.yaml"); },
                      {"'server.model_name'", "control character"});
  expect_error_naming([] { parse_runtime_config("model: n\x8d\n", "utf8.yaml"); }, {"'model'", "not valid UTF-8"});
  expect_error_naming([] { parse_runtime_config("debug: {dump_dir: \"d\\x85\"}\n", "c1.yaml"); },
                      {"'debug.dump_dir'", "control character"});
  // Ordinary non-ASCII text stays accepted, and round-trips.
  const RuntimeConfig c = parse_runtime_config("model: /models/déjà-vu\n", "ok.yaml");
  EXPECT_EQ(c.model, "/models/déjà-vu");
  EXPECT_EQ(runtime_config_yaml(parse_runtime_config(runtime_config_yaml(c), "again")), runtime_config_yaml(c));
}

TEST(RuntimeConfig, WrongTypeRejected) {
  expect_error_naming([] { parse_runtime_config("parallel: {tp: two}\n", "a.yaml"); },
                      {"a.yaml", "'parallel.tp'", "integer", "two"});
  expect_error_naming([] { parse_runtime_config("sampling: {temperature: hot}\n", "a.yaml"); },
                      {"'sampling.temperature'", "number"});
  expect_error_naming([] { parse_runtime_config("debug: {sync_each_op: 3}\n", "a.yaml"); },
                      {"'debug.sync_each_op'", "boolean"});
  expect_error_naming([] { parse_runtime_config("parallel: [1, 2]\n", "a.yaml"); }, {"'parallel'", "mapping"});
  expect_error_naming([] { parse_runtime_config("model: [a, b]\n", "a.yaml"); }, {"'model'", "string"});
}

TEST(RuntimeConfig, BadValuesRejected) {
  expect_error_naming([] { parse_runtime_config("numerics: fast\n", "a.yaml"); }, {"'numerics'", "fast"});
  expect_error_naming([] { parse_runtime_config("parallel: {sp: 0}\n", "a.yaml"); }, {"'parallel.sp'", ">= 1"});
  expect_error_naming([] { parse_runtime_config("sampling: {top_p: 1.5}\n", "a.yaml"); }, {"'sampling.top_p'"});
  expect_error_naming([] { parse_runtime_config("server: {port: 70000}\n", "a.yaml"); }, {"'server.port'"});
  expect_error_naming([] { parse_runtime_config("model: [unclosed\n", "a.yaml"); }, {"a.yaml", "YAML"});
  expect_error_naming([] { load_runtime_config("/nonexistent/v4rt.yaml"); }, {"/nonexistent/v4rt.yaml"});
}

// parallel.sp_block (the SP ownership granule) is a key of the parallel section, emitted back in
// the resolved YAML; the layout remembers the file it came from (named in layout errors).
TEST(RuntimeConfig, SpBlockParsed) {
  const RuntimeConfig c = parse_runtime_config("parallel: {tp: 2, sp: 2, sp_block: 4}\n", "sp.yaml");
  EXPECT_EQ(c.parallel.sp_block, 4);
  EXPECT_EQ(c.parallel.sp, 2);
  EXPECT_EQ(c.parallel.source, "sp.yaml");
  EXPECT_EQ(parse_runtime_config("parallel: {sp: 2}\n", "d.yaml").parallel.sp_block, 64);  // default kept
  const std::string yaml = runtime_config_yaml(c);
  EXPECT_NE(yaml.find("sp_block: 4"), std::string::npos) << yaml;
  EXPECT_EQ(parse_runtime_config(yaml, "back.yaml").parallel.sp_block, 4);
  expect_error_naming([] { parse_runtime_config("parallel: {sp_block: 0}\n", "a.yaml"); },
                      {"a.yaml:1", "'parallel.sp_block'", ">= 1"});
  expect_error_naming([] { parse_runtime_config("parallel: {sp_block: many}\n", "a.yaml"); },
                      {"'parallel.sp_block'", "integer", "many"});
  expect_error_naming([] { parse_runtime_config("parallel: {sp_block: 4.5}\n", "a.yaml"); },
                      {"'parallel.sp_block'", "integer"});
}

// Sampling values no request could use: infinities, NaN, negative or out-of-range numbers. Each is
// rejected naming the file, line and key (YAML spells infinity .inf and NaN .nan).
TEST(RuntimeConfig, InvalidSamplingValuesRejected) {
  for (const char* t : {".inf", "-.inf", ".nan", ".NaN", "-0.5", "2.5", "1e400"}) {
    const std::string text = std::string("sampling:\n  temperature: ") + t + "\n";
    expect_error_naming([&] { parse_runtime_config(text, "s.yaml"); }, {"s.yaml:2", "'sampling.temperature'"});
  }
  for (const char* p : {".inf", ".nan", "0", "-0.1", "1.0001"}) {
    const std::string text = std::string("sampling: {top_p: ") + p + "}\n";
    expect_error_naming([&] { parse_runtime_config(text, "s.yaml"); }, {"s.yaml:1", "'sampling.top_p'"});
  }
  expect_error_naming([] { parse_runtime_config("sampling: {max_tokens: 0}\n", "s.yaml"); },
                      {"'sampling.max_tokens'", "> 0"});
  expect_error_naming([] { parse_runtime_config("sampling: {max_tokens: .inf}\n", "s.yaml"); },
                      {"'sampling.max_tokens'", "integer"});
  expect_error_naming([] { parse_runtime_config("server: {request_timeout_s: .inf}\n", "s.yaml"); },
                      {"'server.request_timeout_s'", "finite"});
  expect_error_naming([] { parse_runtime_config("server: {request_timeout_s: .nan}\n", "s.yaml"); },
                      {"'server.request_timeout_s'"});
  // The edges of the ranges are accepted.
  const RuntimeConfig c = parse_runtime_config("sampling: {temperature: 0, top_p: 1}\n", "s.yaml");
  EXPECT_DOUBLE_EQ(c.sampling.temperature, 0.0);
  EXPECT_DOUBLE_EQ(parse_runtime_config("sampling: {temperature: 2}\n", "s.yaml").sampling.temperature, 2.0);
}

// Wrong types in every section: a list or mapping where a scalar belongs, a string for a number, a
// number for a boolean, a scalar where a section belongs.
TEST(RuntimeConfig, WrongTypesInEverySection) {
  struct Case {
    const char* yaml;
    const char* key;
  };
  for (const Case& k : {Case{"numerics: {a: 1}\n", "'numerics'"}, Case{"sampling: {seed: [1]}\n", "'sampling.seed'"},
                        Case{"sampling: {top_p: high}\n", "'sampling.top_p'"},
                        Case{"parallel: {ep: {x: 1}}\n", "'parallel.ep'"}, Case{"parallel: 4\n", "'parallel'"},
                        Case{"server: {port: http}\n", "'server.port'"},
                        Case{"server: {prefix_cache: maybe}\n", "'server.prefix_cache'"},
                        Case{"server: {max_body_mb: 1.5}\n", "'server.max_body_mb'"},
                        Case{"server: [a]\n", "'server'"}, Case{"debug: {dump_dir: [a, b]}\n", "'debug.dump_dir'"},
                        Case{"debug: yes\n", "'debug'"}}) {
    expect_error_naming([&] { parse_runtime_config(k.yaml, "w.yaml"); }, {"w.yaml", k.key});
  }
}

// Unknown keys in every section, including a near-miss of a real key; the message lists the known
// keys so the fix is obvious.
TEST(RuntimeConfig, UnknownKeysInEverySection) {
  expect_error_naming([] { parse_runtime_config("sampling: {temprature: 1}\n", "u.yaml"); },
                      {"u.yaml:1", "'sampling.temprature'", "not a known key", "temperature"});
  expect_error_naming([] { parse_runtime_config("server:\n  port: 1\n  api-key: x\n", "u.yaml"); },
                      {"u.yaml:3", "'server.api-key'", "api_key"});
  expect_error_naming([] { parse_runtime_config("parallel: {TP: 2}\n", "u.yaml"); }, {"'parallel.TP'", "tp"});
  expect_error_naming([] { parse_runtime_config("version: 2\n", "u.yaml"); }, {"'version'", "not a known key"});
}

// The prefix_cache section: defaults, values, and out-of-range values naming the key. The block
// size against the model's compress ratios is checked when the scheduler starts (it knows the model).
TEST(RuntimeConfig, PrefixCacheSection) {
  const RuntimeConfig d = parse_runtime_config("", "p.yaml");
  EXPECT_TRUE(d.server.prefix_cache);
  EXPECT_EQ(d.prefix_cache.block_tokens, 256);
  EXPECT_EQ(d.prefix_cache.every_n, 4096);
  EXPECT_DOUBLE_EQ(d.prefix_cache.budget_fraction, 0.5);
  const RuntimeConfig c =
      parse_runtime_config("prefix_cache: {block_tokens: 512, every_n: 0, budget_fraction: 0.25}\n", "p.yaml");
  EXPECT_EQ(c.prefix_cache.block_tokens, 512);
  EXPECT_EQ(c.prefix_cache.every_n, 0);
  EXPECT_DOUBLE_EQ(c.prefix_cache.budget_fraction, 0.25);
  expect_error_naming([] { parse_runtime_config("prefix_cache: {block_tokens: 0}\n", "p.yaml"); },
                      {"p.yaml", "'prefix_cache.block_tokens'"});
  expect_error_naming([] { parse_runtime_config("prefix_cache: {every_n: -1}\n", "p.yaml"); },
                      {"p.yaml", "'prefix_cache.every_n'"});
  expect_error_naming([] { parse_runtime_config("prefix_cache: {budget_fraction: 1.5}\n", "p.yaml"); },
                      {"p.yaml", "'prefix_cache.budget_fraction'"});
  expect_error_naming([] { parse_runtime_config("prefix_cache: {block: 256}\n", "p.yaml"); },
                      {"'prefix_cache.block'", "block_tokens"});
}

// cuda_graphs: off by default, on when the YAML says so, carried to the backend options and the
// resolved YAML; a value that is no boolean names file, key and line.
TEST(RuntimeConfig, CudaGraphsKey) {
  const RuntimeConfig d = parse_runtime_config("", "g.yaml");
  EXPECT_FALSE(d.cuda_graphs);
  EXPECT_FALSE(backend_options(d, 0).cuda_graphs);
  const RuntimeConfig on = parse_runtime_config("model: m\ncuda_graphs: true\n", "g.yaml");
  EXPECT_TRUE(on.cuda_graphs);
  EXPECT_TRUE(backend_options(on, 0).cuda_graphs);
  EXPECT_TRUE(parse_runtime_config(runtime_config_yaml(on), "emitted").cuda_graphs);
  EXPECT_FALSE(parse_runtime_config(runtime_config_yaml(d), "emitted").cuda_graphs);
  expect_error_naming([] { parse_runtime_config("model: m\ncuda_graphs: sometimes\n", "g.yaml"); },
                      {"g.yaml:2", "'cuda_graphs'", "boolean", "sometimes"});
  expect_error_naming([] { parse_runtime_config("cuda_graph: false\n", "g.yaml"); },
                      {"g.yaml:1", "'cuda_graph'", "not a known key"});
}

// debug.cuda_fp4_gemv_rows (8 by default) / cuda_fp4_gemv_k_split (0 by default) /
// cuda_fp4_gemv_l2_prefetch (256 by default): other values
// carried to the backend options and the resolved YAML; a value out of their sets names the key and
// what it accepts.
TEST(RuntimeConfig, Fp4GemvRowsKey) {
  const RuntimeConfig d = parse_runtime_config("", "r.yaml");
  EXPECT_EQ(d.debug.cuda_fp4_gemv_rows, 8);
  EXPECT_EQ(backend_options(d, 0).cuda_fp4_gemv_rows, 8);
  const RuntimeConfig mean = parse_runtime_config("debug: {cuda_fp4_gemv_rows: 0}\n", "r.yaml");
  EXPECT_EQ(backend_options(mean, 0).cuda_fp4_gemv_rows, 0);
  EXPECT_EQ(parse_runtime_config(runtime_config_yaml(mean), "emitted").debug.cuda_fp4_gemv_rows, 0);
  expect_error_naming([] { parse_runtime_config("debug: {cuda_fp4_gemv_rows: 16}\n", "r.yaml"); },
                      {"r.yaml", "cuda_fp4_gemv_rows", "0 (by the mean rows) or 8", "16"});
  const RuntimeConfig two = parse_runtime_config("debug: {cuda_fp4_gemv_k_split: 2}\n", "r.yaml");
  EXPECT_EQ(backend_options(two, 0).cuda_fp4_gemv_k_split, 2);
  EXPECT_EQ(parse_runtime_config(runtime_config_yaml(two), "emitted").debug.cuda_fp4_gemv_k_split, 2);
  expect_error_naming([] { parse_runtime_config("debug: {cuda_fp4_gemv_k_split: 3}\n", "r.yaml"); },
                      {"r.yaml", "cuda_fp4_gemv_k_split", "4, 2 or 1", "3"});
  EXPECT_EQ(backend_options(d, 0).cuda_fp4_gemv_l2_prefetch, 256);
  const RuntimeConfig none = parse_runtime_config("debug: {cuda_fp4_gemv_l2_prefetch: 0}\n", "r.yaml");
  EXPECT_EQ(backend_options(none, 0).cuda_fp4_gemv_l2_prefetch, 0);
  EXPECT_EQ(parse_runtime_config(runtime_config_yaml(none), "emitted").debug.cuda_fp4_gemv_l2_prefetch, 0);
  expect_error_naming([] { parse_runtime_config("debug: {cuda_fp4_gemv_l2_prefetch: 64}\n", "r.yaml"); },
                      {"r.yaml", "cuda_fp4_gemv_l2_prefetch", "128 or 0", "64"});
}

// debug.cuda_attention_wgmma_cluster (true by default): carried to the backend options and the
// resolved YAML, a non-boolean refused naming the key.
TEST(RuntimeConfig, AttentionClusterKey) {
  EXPECT_TRUE(parse_runtime_config("", "r.yaml").debug.cuda_attention_wgmma_cluster);
  EXPECT_TRUE(backend_options(RuntimeConfig{}, 0).cuda_attention_wgmma_cluster);
  const RuntimeConfig off = parse_runtime_config("debug: {cuda_attention_wgmma_cluster: false}\n", "r.yaml");
  EXPECT_FALSE(backend_options(off, 0).cuda_attention_wgmma_cluster);
  EXPECT_FALSE(parse_runtime_config(runtime_config_yaml(off), "emitted").debug.cuda_attention_wgmma_cluster);
  expect_error_naming([] { parse_runtime_config("debug: {cuda_attention_wgmma_cluster: 2}\n", "r.yaml"); },
                      {"r.yaml", "cuda_attention_wgmma_cluster"});
}

// debug.cuda_graph_replay (false by default): carried to the backend options and the resolved YAML.
TEST(RuntimeConfig, GraphReplayKey) {
  const RuntimeConfig d = parse_runtime_config("", "r.yaml");
  EXPECT_FALSE(d.debug.cuda_graph_replay);
  EXPECT_FALSE(backend_options(d, 0).cuda_graph_replay);
  const RuntimeConfig on = parse_runtime_config("cuda_graphs: true\ndebug: {cuda_graph_replay: true}\n", "r.yaml");
  EXPECT_TRUE(backend_options(on, 0).cuda_graph_replay);
  EXPECT_TRUE(backend_options(on, 0).cuda_graphs);
  EXPECT_TRUE(parse_runtime_config(runtime_config_yaml(on), "emitted").debug.cuda_graph_replay);
  EXPECT_FALSE(backend_options(on, 0).cuda_graph_segments);
  const RuntimeConfig seg = parse_runtime_config(
      "cuda_graphs: true\ndebug: {cuda_graph_replay: true, cuda_graph_segments: true}\n", "r.yaml");
  EXPECT_TRUE(backend_options(seg, 0).cuda_graph_segments);
  EXPECT_TRUE(parse_runtime_config(runtime_config_yaml(seg), "emitted").debug.cuda_graph_segments);
  expect_error_naming([] { parse_runtime_config("debug: {cuda_graph_replay: 2}\n", "r.yaml"); },
                      {"r.yaml", "cuda_graph_replay"});
}

// debug.cuda_expert_ws_a_copy (1 by default): 0 and 2 carried to the backend options and the
// resolved YAML; a value out of 0-2 names the key and what it accepts. cuda_expert_ws_weight_ring
// (off by default) carried likewise.
TEST(RuntimeConfig, ExpertWsACopyKey) {
  const RuntimeConfig d = parse_runtime_config("", "r.yaml");
  EXPECT_EQ(backend_options(d, 0).cuda_expert_ws_a_copy, 1);
  for (const int mode : {0, 2}) {
    const RuntimeConfig c =
        parse_runtime_config("debug: {cuda_expert_ws_a_copy: " + std::to_string(mode) + "}\n", "r.yaml");
    EXPECT_EQ(backend_options(c, 0).cuda_expert_ws_a_copy, mode);
    EXPECT_EQ(parse_runtime_config(runtime_config_yaml(c), "emitted").debug.cuda_expert_ws_a_copy, mode);
  }
  expect_error_naming([] { parse_runtime_config("debug: {cuda_expert_ws_a_copy: 3}\n", "r.yaml"); },
                      {"r.yaml", "cuda_expert_ws_a_copy", "1 (TMA, the default) or 2", "3"});
  EXPECT_FALSE(backend_options(d, 0).cuda_expert_ws_weight_ring);
  const RuntimeConfig ring = parse_runtime_config("debug: {cuda_expert_ws_weight_ring: true}\n", "r.yaml");
  EXPECT_TRUE(backend_options(ring, 0).cuda_expert_ws_weight_ring);
  EXPECT_TRUE(parse_runtime_config(runtime_config_yaml(ring), "emitted").debug.cuda_expert_ws_weight_ring);
}

// Switches of the CUDA backend that are on by default: carried to the backend options and the
// resolved YAML when turned off, a non-boolean refused naming the key.
struct OnByDefault {
  const char* key;
  bool DebugConfig::*debug;
  bool kernels::BackendOptions::*backend;
};
TEST(RuntimeConfig, CudaSwitchesOnByDefault) {
  for (const OnByDefault& k : {OnByDefault{"cuda_pdl", &DebugConfig::cuda_pdl, &kernels::BackendOptions::cuda_pdl},
                               OnByDefault{"cuda_indexer_predecode", &DebugConfig::cuda_indexer_predecode,
                                           &kernels::BackendOptions::cuda_indexer_predecode},
                               OnByDefault{"cuda_indexer_head_sum_mma", &DebugConfig::cuda_indexer_head_sum_mma,
                                           &kernels::BackendOptions::cuda_indexer_head_sum_mma},
                               OnByDefault{"cuda_bf16_activations", &DebugConfig::cuda_bf16_activations,
                                           &kernels::BackendOptions::cuda_bf16_activations},
                               OnByDefault{"cuda_expert_ws_persistent", &DebugConfig::cuda_expert_ws_persistent,
                                           &kernels::BackendOptions::cuda_expert_ws_persistent}}) {
    SCOPED_TRACE(k.key);
    const RuntimeConfig d = parse_runtime_config("", "r.yaml");
    EXPECT_TRUE(d.debug.*k.debug);
    EXPECT_TRUE(backend_options(d, 0).*k.backend);
    const RuntimeConfig off = parse_runtime_config(std::string("debug: {") + k.key + ": false}\n", "r.yaml");
    EXPECT_FALSE(backend_options(off, 0).*k.backend);
    EXPECT_FALSE(parse_runtime_config(runtime_config_yaml(off), "emitted").debug.*k.debug);
    expect_error_naming([&] { parse_runtime_config(std::string("debug: {") + k.key + ": 2}\n", "r.yaml"); },
                        {"r.yaml", k.key});
  }
}

// Sizes whose product would overflow the rank count are refused before anything multiplies them.
TEST(RuntimeConfig, ImplausibleWorldRejected) {
  expect_error_naming([] { parse_runtime_config("parallel: {tp: 65536, sp: 65536}\n", "big.yaml"); },
                      {"big.yaml", "'parallel'", "implausibly large"});
}

// Chunked prefill by default (kDefaultPrefillChunk), so a prompt of any length runs with the scratch
// of one chunk; 0 (no cap) and other sizes parse, negatives are refused naming the key.
TEST(RuntimeConfig, PrefillChunkDefault) {
  EXPECT_EQ(RuntimeConfig{}.prefill_chunk, 8192);
  EXPECT_EQ(parse_runtime_config("", "r.yaml").prefill_chunk, 8192);
  EXPECT_EQ(parse_runtime_config("prefill_chunk: 0\n", "r.yaml").prefill_chunk, 0);
  const RuntimeConfig c = parse_runtime_config("prefill_chunk: 4096\n", "r.yaml");
  EXPECT_EQ(parse_runtime_config(runtime_config_yaml(c), "emitted").prefill_chunk, 4096);
  expect_error_naming([] { parse_runtime_config("prefill_chunk: -1\n", "r.yaml"); }, {"r.yaml", "prefill_chunk"});
  EXPECT_EQ(resolve_prefill_chunk(-1, ""), 8192);
  EXPECT_EQ(resolve_prefill_chunk(0, ""), 0);
}

}  // namespace
}  // namespace v4rt::launch
