// SPDX-License-Identifier: MIT
// expected_tensors(config) against the official index files (names; bytes through
// metadata.total_size; the dtype histogram of spec §9) and against golden tiny-a's real headers
// (names, dtypes and shapes), read here with nlohmann directly.
#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "model/checkpoint.h"
#include "model/config.h"
#include "test_util.h"

namespace v4rt::model {
namespace {

using testing::read_text;

const std::string kRelease = V4RT_GOLDEN_DIR "/../spec/release";

void check_release(const std::string& name, size_t count, uint64_t total_size) {
  const ModelConfig c = load_model_config(kRelease + "/" + name + "/config.json");
  const auto want = expected_tensors(c);
  const auto index = nlohmann::json::parse(read_text(kRelease + "/" + name + "/model.safetensors.index.json"));
  std::set<std::string> names;
  for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) names.insert(it.key());
  EXPECT_EQ(names.size(), count);
  EXPECT_EQ(want.size(), count);
  std::vector<std::string> missing, extra;
  for (const std::string& n : names)
    if (!want.count(n)) missing.push_back(n);
  for (const auto& [n, t] : want)
    if (!names.count(n)) extra.push_back(n);
  EXPECT_TRUE(missing.empty()) << missing.size() << " index names not expected, first: " << missing.front();
  EXPECT_TRUE(extra.empty()) << extra.size() << " expected names not in index, first: " << extra.front();
  uint64_t bytes = 0;
  for (const auto& [n, t] : want) {
    uint64_t numel = 1;
    for (int64_t d : t.shape) numel *= uint64_t(d);
    bytes += numel * dtype_size(t.dtype);
  }
  EXPECT_EQ(bytes, total_size);
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), total_size);
  // Every name sits in the shard the release placement rule gives.
  size_t misplaced = 0;
  std::string first;
  for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) {
    if (release_shard_name(c, it.key()) != it.value().get<std::string>()) {
      if (!misplaced++) first = it.key() + " -> " + release_shard_name(c, it.key()) + ", index: " + it.value().get<std::string>();
    }
  }
  EXPECT_EQ(misplaced, 0u) << first;
}

TEST(ExpectedTensors, FlashIndex) { check_release("flash", 69187, 159609485896ull); }
TEST(ExpectedTensors, ProIndex) { check_release("pro", 145116, 864704792696ull); }

TEST(ExpectedTensors, FlashDtypeHistogram) {
  const auto want = expected_tensors(load_model_config(kRelease + "/flash/config.json"));
  std::map<DType, int> hist;
  for (const auto& [n, t] : want) ++hist[t.dtype];
  EXPECT_EQ(hist[DType::kBF16], 433);
  EXPECT_EQ(hist[DType::kF32], 417);
  EXPECT_EQ(hist[DType::kF8E4M3], 375);
  EXPECT_EQ(hist[DType::kF8E8M0], 34167);
  EXPECT_EQ(hist[DType::kI64], 3);
  EXPECT_EQ(hist[DType::kI8], 33792);
  // A few shapes from the table of spec §9.
  EXPECT_EQ(want.at("layers.0.attn.wo_a.weight").shape, (std::vector<int64_t>{8192, 4096}));
  EXPECT_EQ(want.at("layers.0.attn.wo_b.scale").shape, (std::vector<int64_t>{32, 64}));
  EXPECT_EQ(want.at("layers.2.attn.compressor.ape").shape, (std::vector<int64_t>{4, 1024}));
  EXPECT_EQ(want.at("layers.3.attn.compressor.ape").shape, (std::vector<int64_t>{128, 512}));
  EXPECT_EQ(want.at("layers.5.ffn.experts.17.w1.weight").shape, (std::vector<int64_t>{2048, 2048}));
  EXPECT_EQ(want.at("layers.5.ffn.experts.17.w2.scale").shape, (std::vector<int64_t>{4096, 64}));
  EXPECT_EQ(want.at("layers.0.ffn.gate.tid2eid").shape, (std::vector<int64_t>{129280, 6}));
  EXPECT_EQ(want.at("hc_head_fn").shape, (std::vector<int64_t>{4, 16384}));
  EXPECT_EQ(want.at("layers.7.hc_attn_fn").shape, (std::vector<int64_t>{24, 16384}));
}

TEST(ExpectedTensors, GoldenTinyAHeaders) {
  const std::string dir = V4RT_GOLDEN_DIR "/tiny-a/model";
  const auto want = expected_tensors(load_model_config(dir + "/config.json"));
  std::map<std::string, ExpectedTensor> have;
  for (const char* shard : {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}) {
    const auto raw = testing::read_shard(dir + "/" + shard);
    for (auto it = raw.header.begin(); it != raw.header.end(); ++it) {
      if (it.key() == "__metadata__") continue;
      ExpectedTensor t;
      ASSERT_TRUE(dtype_from_name(it.value()["dtype"].get<std::string>(), &t.dtype)) << it.key();
      t.shape = it.value()["shape"].get<std::vector<int64_t>>();
      have[it.key()] = t;
    }
  }
  EXPECT_EQ(have.size(), want.size());
  for (const auto& [n, t] : have) {
    auto it = want.find(n);
    ASSERT_NE(it, want.end()) << "tiny-a has unexpected " << n;
    EXPECT_EQ(it->second.dtype, t.dtype) << n;
    EXPECT_EQ(it->second.shape, t.shape) << n;
  }
}

}  // namespace
}  // namespace v4rt::model
