// SPDX-License-Identifier: MIT
// Runtime YAML: the shipped configs parse to the layouts their names promise; unknown keys, wrong
// types and out-of-range values are rejected naming file, key path and line.
#include <gtest/gtest.h>

#include "model/runtime_config.h"
#include "test_util.h"

namespace v4rt::model {
namespace {

using testing::expect_error_naming;

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

TEST(RuntimeConfig, UnknownKeyRejected) {
  expect_error_naming([] { parse_runtime_config("model: x\nparallel:\n  tp: 2\n  tpp: 2\n", "a.yaml"); },
                      {"a.yaml:4", "'parallel.tpp'", "not a known key"});
  expect_error_naming([] { parse_runtime_config("modle: x\n", "b.yaml"); }, {"b.yaml", "'modle'"});
  expect_error_naming([] { parse_runtime_config("debug: {trace_all: true}\n", "c.yaml"); }, {"'debug.trace_all'"});
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

}  // namespace
}  // namespace v4rt::model
