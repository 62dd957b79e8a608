// SPDX-License-Identifier: MIT
// Bad input at the parsers' edges that tests/model, tests/text and tests/parallel do not already
// cover (docs/RELIABILITY.md lists both): JSON numbers that overflow, integers that would wrap,
// nesting deep enough to exhaust the stack, YAML keys that are not strings or appear twice, token-id
// files with ids outside int32, index entries that leave the checkpoint directory, and the same
// failures through the `v4rt` command line (one line on stderr, exit code != 0). Each case expects a
// v4rt::Error naming the file and the field or tensor at fault.
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/check.h"
#include "common/json_depth.h"
#include "launch/plan/hardware.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/presets.h"
#include "model/synthetic.h"
#include "launch/runtime_config.h"
#include "model/safetensors.h"
#include "model/text/json_format.h"
#include "model/token_ids.h"
#include "tests/model/test_util.h"

namespace v4rt::model {
namespace {

using testing::expect_error_naming;
using testing::TempDir;
using launch::parse_runtime_config;
using launch::RuntimeConfig;

const std::string kTinyConfig = V4RT_GOLDEN_DIR "/tiny-a/model/config.json";

std::string nested(int depth) { return std::string(size_t(depth), '[') + std::string(size_t(depth), ']'); }

// ----- safetensors headers -----------------------------------------------------------------------

std::vector<uint8_t> shard_bytes(const std::string& header, size_t data_bytes = 16) {
  std::vector<uint8_t> out(8);
  for (int i = 0; i < 8; ++i) out[size_t(i)] = uint8_t(uint64_t(header.size()) >> (8 * i));
  out.insert(out.end(), header.begin(), header.end());
  out.resize(out.size() + data_bytes, 0);
  return out;
}

void parse_shard(const std::string& header, size_t data_bytes = 16) {
  const std::vector<uint8_t> f = shard_bytes(header, data_bytes);
  safetensors::parse_header(f.data(), f.size(), f.size(), "bad.safetensors");
}

TEST(BadSafetensors, NumberTooLargeForJson) {
  expect_error_naming([] { parse_shard(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 1e999]}})"); },
                      {"bad.safetensors", "not valid JSON"});
}

TEST(BadSafetensors, DeepNestingRefusedBeforeParsing) {
  expect_error_naming(
      [] { parse_shard(R"({"w": {"dtype": "F32", "shape": )" + nested(200000) + R"(, "data_offsets": [0, 0]}})"); },
      {"bad.safetensors", "nests deeper than 512"});
}

TEST(BadSafetensors, HeaderIsNotAnObject) {
  expect_error_naming([] { parse_shard("[1, 2]"); }, {"bad.safetensors", "not a JSON object"});
}

TEST(BadSafetensors, FileShorterThanLengthField) {
  const uint8_t five[5] = {1, 0, 0, 0, 0};
  expect_error_naming([&] { safetensors::parse_header(five, 5, 5, "bad.safetensors"); }, {"bad.safetensors", "too short"});
}

TEST(BadSafetensors, NegativeDimension) {
  expect_error_naming([] { parse_shard(R"({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})"); },
                      {"'w'", "negative"});
}

TEST(BadSafetensors, ImplausibleShape) {
  expect_error_naming(
      [] { parse_shard(R"({"w": {"dtype": "F32", "shape": [1099511627776, 1099511627776], "data_offsets": [0, 4]}})"); },
      {"'w'", "implausibly large"});
}

TEST(BadSafetensors, ReversedOffsets) {
  expect_error_naming([] { parse_shard(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}})"); },
                      {"'w'", "reversed"});
}

TEST(BadSafetensors, MetadataValueNotString) {
  expect_error_naming([] { parse_shard(R"({"__metadata__": {"format": 3}})"); }, {"'__metadata__'", "'format'"});
}

TEST(BadSafetensors, AcceptedHeaderStillParses) {  // the cases above fail for their reason only
  parse_shard(R"({"__metadata__": {"format": "pt"}, "w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}})");
}

// ----- config.json -------------------------------------------------------------------------------

nlohmann::ordered_json tiny_config() { return nlohmann::ordered_json::parse(testing::read_text(kTinyConfig)); }

void parse_config(const nlohmann::ordered_json& j) { parse_model_config(j.dump(), "bad/config.json"); }

TEST(BadModelConfig, TinyConfigParses) { parse_config(tiny_config()); }

TEST(BadModelConfig, NumberTooLargeForJson) {
  std::string text = tiny_config().dump();
  text.replace(text.find("\"hidden_size\":") + 14, 3, "1e999");
  expect_error_naming([&] { parse_model_config(text, "bad/config.json"); }, {"bad/config.json", "not valid JSON"});
}

TEST(BadModelConfig, HugeFloatForInteger) {  // was UB (double -> int64 cast) before the range check
  auto j = tiny_config();
  j["hidden_size"] = 1e300;
  expect_error_naming([&] { parse_config(j); }, {"bad/config.json", "'hidden_size'", "integer"});
}

TEST(BadModelConfig, IntegerOutOfIntRange) {
  auto j = tiny_config();
  j["num_attention_heads"] = 4294967304LL;  // 2^32 + 8 would wrap to 8
  expect_error_naming([&] { parse_config(j); }, {"'num_attention_heads'", "out of range"});
}

TEST(BadModelConfig, CompressRatioThatWouldWrap) {
  auto j = tiny_config();
  j["compress_ratios"][1] = 4294967300LL;  // 2^32 + 4 was read as ratio 4
  expect_error_naming([&] { parse_config(j); }, {"'compress_ratios'", "entry 1"});
}

TEST(BadModelConfig, BlockSizeThatWouldWrap) {
  auto j = tiny_config();
  j["quantization_config"]["weight_block_size"] = {4294967424LL, 128};  // 2^32 + 128
  expect_error_naming([&] { parse_config(j); }, {"'quantization_config.weight_block_size'"});
}

TEST(BadModelConfig, LayerCountAtIntMax) {  // num_hidden_layers + MTP layers overflowed int
  auto j = tiny_config();
  j["num_hidden_layers"] = 2147483647;
  j["num_nextn_predict_layers"] = 1;
  // Now refused by the size bound before the layer sum is formed (the sum stays in int64).
  expect_error_naming([&] { parse_config(j); }, {"'num_hidden_layers'", "2147483647", "at most"});
}

TEST(BadModelConfig, DeepNesting) {
  expect_error_naming([] { parse_model_config("{\"vocab_size\": " + nested(100000) + "}", "bad/config.json"); },
                      {"bad/config.json", "nests deeper"});
}

// ----- checkpoint index ----------------------------------------------------------------------------

class BadIndex : public ::testing::Test {
 protected:
  void SetUp() override {
    std::filesystem::copy_file(kTinyConfig, tmp_ / "config.json");
  }
  void write_index(const std::string& text) const {
    testing::write_bytes(tmp_ / "model.safetensors.index.json", std::vector<uint8_t>(text.begin(), text.end()));
  }
  std::string index_path() const { return tmp_ / "model.safetensors.index.json"; }
  TempDir tmp_;
};

TEST_F(BadIndex, ShardNameLeavesTheDirectory) {
  write_index(R"({"weight_map": {"embed.weight": "../outside.safetensors"}})");
  expect_error_naming([&] { Checkpoint::open(tmp_.str()); }, {index_path(), "'embed.weight'", "invalid shard name"});
}

TEST_F(BadIndex, AbsoluteShardName) {
  write_index(R"({"weight_map": {"embed.weight": "/etc/passwd"}})");
  expect_error_naming([&] { Checkpoint::open(tmp_.str()); }, {index_path(), "invalid shard name"});
}

TEST_F(BadIndex, NumberTooLargeForJson) {
  write_index(R"({"metadata": {"total_size": 1e999}, "weight_map": {}})");
  expect_error_naming([&] { Checkpoint::open(tmp_.str()); }, {index_path(), "not valid JSON"});
}

TEST_F(BadIndex, DeepNesting) {
  write_index("{\"metadata\": " + nested(100000) + "}");
  expect_error_naming([&] { Checkpoint::open(tmp_.str()); }, {index_path(), "nests deeper"});
}

// ----- runtime YAML --------------------------------------------------------------------------------

TEST(BadRuntimeYaml, MappingAsKey) {
  expect_error_naming([] { parse_runtime_config("{model: m, parallel: {tp: 2}}: 1\n", "bad.yaml"); },
                      {"bad.yaml", "not a plain string"});
}

TEST(BadRuntimeYaml, DuplicateKey) {
  expect_error_naming([] { parse_runtime_config("parallel: {tp: 2, tp: 4}\n", "bad.yaml"); },
                      {"bad.yaml", "'parallel.tp'", "twice"});
  expect_error_naming([] { parse_runtime_config("model: a\nmodel: b\n", "bad.yaml"); }, {"bad.yaml:2", "'model'", "twice"});
}

TEST(BadRuntimeYaml, IntegerOverflow) {
  expect_error_naming([] { parse_runtime_config("parallel: {tp: 99999999999}\n", "bad.yaml"); },
                      {"bad.yaml", "'parallel.tp'", "99999999999"});
}

TEST(BadRuntimeYaml, NegativeSeed) {
  expect_error_naming([] { parse_runtime_config("sampling: {seed: -1}\n", "bad.yaml"); }, {"'sampling.seed'"});
}

TEST(BadRuntimeYaml, TopLevelSequence) {
  expect_error_naming([] { parse_runtime_config("- model\n- numerics\n", "bad.yaml"); }, {"bad.yaml", "mapping"});
}

TEST(BadRuntimeYaml, DeepNesting) {
  expect_error_naming([] { parse_runtime_config("model: " + nested(100000) + "\n", "bad.yaml"); }, {"bad.yaml"});
}

TEST(BadRuntimeYaml, ImpossibleLayoutNamesTheKey) {
  // The runtime YAML parses (each size >= 1); the layout check against the model refuses it.
  const RuntimeConfig rc = parse_runtime_config("parallel: {tp: 3, ep: 5}\n", "bad.yaml");
  const ModelConfig mc = load_model_config(kTinyConfig);
  parallel::ModelDims dims;
  dims.num_heads = mc.num_attention_heads;
  dims.head_dim = mc.head_dim;
  dims.o_groups = mc.o_groups;
  dims.o_lora_rank = mc.o_lora_rank;
  dims.index_n_heads = mc.index_n_heads;
  dims.index_head_dim = mc.index_head_dim;
  dims.n_routed_experts = mc.n_routed_experts;
  dims.q_lora_rank = mc.q_lora_rank;
  dims.hidden = mc.hidden_size;
  dims.world_size = 3;
  expect_error_naming([&] { parallel::validate(rc.parallel, dims); },
                      {"bad.yaml: parallel layout tp=3 sp=1 ep=5 dp=1 is invalid: ",
                       "parallel.tp = 3 does not divide num_attention_heads 8", "parallel.ep = 5"});
  try {
    parallel::validate(rc.parallel, dims);
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();  // one line
  }
}

// ----- planner hardware / calibration YAML (`v4rt plan --gpu FILE --calibration FILE`) -------------

TEST(BadPlanYaml, ChunkTooLargeForInt64) {  // the double -> int64 cast of 1e300 / .inf was UB
  for (const char* text : {"prefill_chunk_tokens: 1e300\n", "prefill_chunk_tokens: .inf\n"})
    expect_error_naming([&] { launch::plan::parse_calibration(text, "cal.yaml"); }, {"cal.yaml", "'prefill_chunk_tokens'"});
  EXPECT_EQ(launch::plan::parse_calibration("prefill_chunk_tokens: 4096\n", "cal.yaml").prefill_chunk_tokens, 4096);
}

TEST(BadPlanYaml, KeyThatIsNotAString) {  // YAML::TypedBadConversion escaped before
  expect_error_naming([] { launch::plan::parse_calibration("{a: b}: 0.5\n", "cal.yaml"); }, {"cal.yaml", "plain string"});
  expect_error_naming([] { launch::plan::parse_gpu_spec("[x]: 1\nname: h\n", "gpu.yaml"); }, {"gpu.yaml", "plain string"});
}

TEST(BadPlanYaml, GpuNameNotAString) {
  expect_error_naming([] { launch::plan::parse_gpu_spec("name: {a: 1}\n", "gpu.yaml"); }, {"gpu.yaml", "'name'"});
}

// ----- token-id files ------------------------------------------------------------------------------

std::string write_file(const TempDir& tmp, const std::string& name, const std::string& text) {
  const std::string path = tmp / name;
  testing::write_bytes(path, std::vector<uint8_t>(text.begin(), text.end()));
  return path;
}

TEST(BadTokenIds, IdTooLongForInt64) {  // std::out_of_range escaped before
  TempDir tmp;
  const std::string p = write_file(tmp, "ids.txt", "[1, 99999999999999999999999]");
  expect_error_naming([&] { read_token_ids(p); }, {p, "out of range"});
}

TEST(BadTokenIds, IdThatWouldWrapToZero) {
  TempDir tmp;
  const std::string p = write_file(tmp, "ids.txt", "4294967296");
  expect_error_naming([&] { read_token_ids(p); }, {p, "4294967296", "out of range"});
}

TEST(BadTokenIds, SafetensorsIdBeyondInt32) {
  TempDir tmp;
  safetensors::WriteTensor t{"input_ids", DType::kI64, {2}, std::vector<uint8_t>(16, 0)};
  t.bytes[8 + 4] = 1;  // second id = 2^32
  const std::string p = tmp / "ids.safetensors";
  safetensors::write_file(p, {t});
  expect_error_naming([&] { read_token_ids(p); }, {p, "input_ids[1]", "out of range"});
}

TEST(BadTokenIds, WrongDtype) {
  TempDir tmp;
  const std::string p = tmp / "ids.safetensors";
  safetensors::write_file(p, {{"input_ids", DType::kF32, {1}, std::vector<uint8_t>(4, 0)}});
  expect_error_naming([&] { read_token_ids(p); }, {p, "F32", "expected I64 or I32"});
}

TEST(BadTokenIds, TextThatIsNotIds) {
  TempDir tmp;
  const std::string p = write_file(tmp, "ids.txt", "12 abc");
  expect_error_naming([&] { read_token_ids(p); }, {p, "'abc'"});
  const std::string minus = write_file(tmp, "minus.txt", "1 - 2");
  expect_error_naming([&] { read_token_ids(minus); }, {minus, "unexpected text"});
}

TEST(BadTokenIds, GoodFileReads) {
  TempDir tmp;
  const std::string p = write_file(tmp, "ids.txt", "[0, 7,\n2147483647]");
  EXPECT_EQ(read_token_ids(p), (std::vector<int32_t>{0, 7, 2147483647}));
}

// ----- chat-request JSON ----------------------------------------------------------------------------

TEST(BadRequestJson, DeepNestingRefused) {
  const std::string body = R"({"messages": [{"role": "user", "content": )" + nested(100000) + "}]}";
  expect_error_naming([&] { text::json_parse(body, "request body"); }, {"request body", "nests deeper"});
  text::Json out;
  EXPECT_FALSE(text::json_try_parse(body, &out));
  // At the limit it still parses (Python's json accepts ~1000 levels; schemas never come close).
  EXPECT_TRUE(text::json_try_parse(nested(kMaxJsonDepth), &out));
  EXPECT_FALSE(text::json_try_parse(nested(kMaxJsonDepth + 1), &out));
}

TEST(BadRequestJson, DepthGuardIgnoresBracketsInStrings) {
  const std::string s = "[\"" + std::string(2000, '[') + "\\\"" + std::string(2000, '{') + "\"]";
  EXPECT_TRUE(json_depth_ok(s));
  text::Json out;
  EXPECT_TRUE(text::json_try_parse(s, &out));
}

TEST(BadRequestJson, NumberTooLargeForDouble) {
  expect_error_naming([] { text::json_parse(R"({"temperature": 1e999})", "request body"); },
                      {"request body", "invalid JSON"});
}

// ----- through the command line -----------------------------------------------------------------------

const std::string kV4rt = V4RT_BINARY_DIR "/launch/v4rt";

using testing::CmdResult;

CmdResult run_v4rt(const std::string& args, const TempDir& tmp) { return testing::run_shell(kV4rt + " " + args, tmp); }

void expect_one_line_error(const CmdResult& r, const std::vector<std::string>& needles) {
  EXPECT_EQ(r.code, 1) << r.err;  // 1 = v4rt::Error; a crash or an escaped exception differs
  size_t lines = 0;
  for (char c : r.err) lines += c == '\n';
  EXPECT_EQ(lines, 1u) << r.err;
  for (const std::string& n : needles) EXPECT_NE(r.err.find(n), std::string::npos) << "'" << n << "' not in: " << r.err;
}

TEST(BadCli, LogitsWithIdOutOfRange) {
  TempDir tmp;
  const std::string ids = write_file(tmp, "ids.txt", "5 99999999999999999999999");
  expect_one_line_error(run_v4rt("logits --model " V4RT_GOLDEN_DIR "/tiny-a/model --ids " + ids + " --out " +
                                     (tmp / "o.safetensors"),
                                 tmp),
                        {ids, "out of range"});
}

TEST(BadCli, InspectWithDeepIndex) {
  TempDir tmp;
  const std::string dir = tmp / "ck";
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(kTinyConfig, dir + "/config.json");
  write_file(tmp, "ck/model.safetensors.index.json", "{\"weight_map\": " + nested(300000) + "}");
  expect_one_line_error(run_v4rt("inspect --model " + dir, tmp), {dir + "/model.safetensors.index.json", "nests deeper"});
}

TEST(BadCli, InspectWithHugeNumberInConfig) {
  TempDir tmp;
  const std::string dir = tmp / "ck";
  std::filesystem::create_directories(dir);
  std::string text = testing::read_text(kTinyConfig);
  text.replace(text.find("\"vocab_size\":") + 13, 0, " 1e999,\"x\":");
  write_file(tmp, "ck/config.json", text);
  expect_one_line_error(run_v4rt("inspect --model " + dir, tmp), {dir + "/config.json", "not valid JSON"});
}

// A small synthetic checkpoint (the tiny preset, a 1024-token vocabulary) in tmp/ck.
std::string small_checkpoint(const TempDir& tmp) {
  ModelConfig c = preset_config("tiny");
  c.vocab_size = 1024;
  const std::string dir = tmp / "ck";
  write_synthetic_checkpoint(c, dir, {3, 2});
  return dir;
}

// n_routed_experts 1e6 ended in an uncaught std::bad_alloc (SIGABRT); 1e5 allocated 2.9 GB.
TEST(BadCli, InspectWithExpertCountFarTooLarge) {
  TempDir tmp;
  const std::string dir = small_checkpoint(tmp);
  for (const char* experts : {"100000", "1000000"}) {
    auto config = nlohmann::ordered_json::parse(testing::read_text(dir + "/config.json"));
    config["n_routed_experts"] = std::stoll(experts);
    write_file(tmp, "ck/config.json", config.dump());
    expect_one_line_error(run_v4rt("inspect --model " + dir, tmp),
                          {dir + "/config.json", "'n_routed_experts'", experts, "at most"});
  }
}

// A FIFO in place of a shard made `inspect` hang; `timeout` bounds the run if it still does.
TEST(BadCli, InspectWithFifoShard) {
  TempDir tmp;
  const std::string dir = small_checkpoint(tmp);
  const std::string shard = dir + "/model-00002-of-00002.safetensors";
  std::filesystem::remove(shard);
  ASSERT_EQ(::mkfifo(shard.c_str(), 0600), 0);
  const CmdResult r = testing::run_shell("timeout 60 " + kV4rt + " inspect --model " + dir, tmp);
  EXPECT_NE(r.code, 124) << "inspect hung on the FIFO";
  expect_one_line_error(r, {shard, "not a regular file"});
}

// `--config` on logits comes with the distributed driver; until then these cases are reached only
// through the library (BadRuntimeYaml above).
bool logits_takes_config(const TempDir& tmp) {
  const std::string out = tmp / "help.txt";
  std::system((kV4rt + " logits --help >" + out + " 2>&1").c_str());
  return testing::read_text(out).find("--config") != std::string::npos;
}

TEST(BadCli, LogitsWithBadRuntimeYaml) {
  TempDir tmp;
  if (!logits_takes_config(tmp)) GTEST_SKIP() << "`v4rt logits` has no --config option in this build";
  const std::string ids = write_file(tmp, "ids.txt", "1 2 3");
  const std::string base = "logits --model " V4RT_GOLDEN_DIR "/tiny-a/model --ids " + ids + " --out " + (tmp / "o.st");
  const std::string tp3 = write_file(tmp, "tp3.yaml", "parallel: {tp: 3}\n");
  // An impossible layout: one line naming the YAML file and every violated key.
  expect_one_line_error(run_v4rt(base + " --config " + tp3, tmp),
                        {tp3 + ": parallel layout tp=3", "parallel.tp = 3 does not divide num_attention_heads 8",
                         "parallel.tp = 3 does not divide o_groups 2"});
  const std::string inf = write_file(tmp, "inf.yaml", "sampling: {temperature: .inf}\n");
  expect_one_line_error(run_v4rt(base + " --config " + inf, tmp), {inf, "'sampling.temperature'", "[0, 2]"});
  const std::string block = write_file(tmp, "block.yaml", "parallel: {sp_block: 0}\n");
  expect_one_line_error(run_v4rt(base + " --config " + block, tmp), {block, "'parallel.sp_block'", ">= 1"});
  const std::string typo = write_file(tmp, "typo.yaml", "parallel: {tpp: 2}\n");
  expect_one_line_error(run_v4rt(base + " --config " + typo, tmp), {typo, "'parallel.tpp'"});
  const std::string type = write_file(tmp, "type.yaml", "sampling: {temperature: hot}\n");
  expect_one_line_error(run_v4rt(base + " --config " + type, tmp), {type, "'sampling.temperature'"});
  const std::string dup = write_file(tmp, "dup.yaml", "model: a\nmodel: b\n");
  expect_one_line_error(run_v4rt(base + " --config " + dup, tmp), {dup, "'model'", "twice"});
}

}  // namespace
}  // namespace v4rt::model
