// SPDX-License-Identifier: MIT
// Checkpoint reading: golden tiny-a opens lazily, FP8/FP4/BF16/F32 dequantization equals values
// decoded here independently from the raw file bytes (exact), and the whole model dequantizes in
// well under a second.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "model/checkpoint.h"
#include "test_util.h"

namespace v4rt::model {
namespace {

using testing::expect_error_naming;

const std::string kTinyA = V4RT_GOLDEN_DIR "/tiny-a/model";

// Independent decoders, written from the format definitions of spec §2.1.
float ref_e4m3(uint8_t b) {
  const int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
  const double v = e == 0 ? (m / 8.0) * std::pow(2.0, -6) : (1.0 + m / 8.0) * std::pow(2.0, e - 7);
  return float(s ? -v : v);
}
float ref_e8m0(uint8_t b) { return float(std::pow(2.0, int(b) - 127)); }
float ref_fp4(uint8_t c) {
  static const float kMag[8] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6};
  return (c & 8) ? -kMag[c & 7] : kMag[c & 7];
}

// The raw bytes and shape of one tensor of tiny-a, found through the index and the shard header.
struct Raw {
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};
Raw raw_tensor(const std::string& name) {
  const auto shard = testing::read_shard(kTinyA + "/" + testing::shard_of(kTinyA, name));
  const auto& h = shard.header[name];
  Raw r;
  r.shape = h["shape"].get<std::vector<int64_t>>();
  const uint64_t b = h["data_offsets"][0].get<uint64_t>(), e = h["data_offsets"][1].get<uint64_t>();
  r.bytes.assign(shard.data.begin() + int64_t(b), shard.data.begin() + int64_t(e));
  return r;
}

class TinyA : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { ck_ = Checkpoint::open(kTinyA).release(); }
  static void TearDownTestSuite() { delete ck_; }
  static Checkpoint* ck_;
};
Checkpoint* TinyA::ck_ = nullptr;

TEST_F(TinyA, OpensLazilyWithEveryIndexedTensor) {
  const auto index = nlohmann::json::parse(testing::read_text(kTinyA + "/model.safetensors.index.json"));
  EXPECT_EQ(ck_->tensors().size(), index["weight_map"].size());
  EXPECT_EQ(ck_->bytes_read(), 0u);  // open touched headers only
  EXPECT_EQ(ck_->config().hidden_size, 256);
  const TensorInfo& t = ck_->info("layers.1.attn.wq_b.weight");
  EXPECT_EQ(t.dtype, DType::kF8E4M3);
  EXPECT_EQ(t.shape, (std::vector<int64_t>{1024, 128}));
  EXPECT_EQ(t.bytes, 1024u * 128u);
  EXPECT_EQ(std::memcmp(t.data, raw_tensor("layers.1.attn.wq_b.weight").bytes.data(), t.bytes), 0);
  expect_error_naming([] { ck_->info("layers.9.nothing"); }, {"layers.9.nothing"});
}

TEST_F(TinyA, Fp8DequantMatchesRawBytes) {
  for (const std::string base : {"layers.1.attn.wq_b", "layers.0.attn.wo_a", "layers.3.ffn.shared_experts.w2",
                                 "layers.5.attn.indexer.wq_b", "layers.2.attn.wkv"}) {
    const Raw w = raw_tensor(base + ".weight"), s = raw_tensor(base + ".scale");
    const int64_t rows = w.shape[0], cols = w.shape[1];
    ASSERT_EQ(s.shape, (std::vector<int64_t>{(rows + 127) / 128, (cols + 127) / 128})) << base;
    const std::vector<float> got = ck_->read_f32(base + ".weight");
    ASSERT_EQ(int64_t(got.size()), rows * cols) << base;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        const float want = ref_e4m3(w.bytes[size_t(r * cols + c)]) * ref_e8m0(s.bytes[size_t((r / 128) * s.shape[1] + c / 128)]);
        ASSERT_EQ(got[size_t(r * cols + c)], want) << base << " [" << r << ", " << c << "]";
      }
    // A row range (a TP shard) equals the same rows of the full read.
    const int64_t b = rows / 3, e = rows - rows / 4;
    const std::vector<float> part = ck_->read_f32(base + ".weight", b, e);
    ASSERT_EQ(int64_t(part.size()), (e - b) * cols);
    EXPECT_TRUE(std::equal(part.begin(), part.end(), got.begin() + b * cols)) << base;
  }
}

TEST_F(TinyA, Fp4DequantMatchesRawBytes) {
  for (const std::string base : {"layers.0.ffn.experts.0.w1", "layers.2.ffn.experts.5.w3", "layers.4.ffn.experts.15.w2"}) {
    const Raw w = raw_tensor(base + ".weight"), s = raw_tensor(base + ".scale");
    const int64_t rows = w.shape[0], cols = 2 * w.shape[1];
    ASSERT_EQ(s.shape, (std::vector<int64_t>{rows, cols / 32})) << base;
    EXPECT_EQ(ck_->logical_shape(base + ".weight"), (std::vector<int64_t>{rows, cols}));
    const std::vector<float> got = ck_->read_f32(base + ".weight");
    ASSERT_EQ(int64_t(got.size()), rows * cols);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        const uint8_t byte = w.bytes[size_t(r * (cols / 2) + c / 2)];
        const uint8_t code = (c % 2 == 0) ? (byte & 0xf) : (byte >> 4);  // low nibble = even element
        const float want = ref_fp4(code) * ref_e8m0(s.bytes[size_t(r * (cols / 32) + c / 32)]);
        ASSERT_EQ(got[size_t(r * cols + c)], want) << base << " [" << r << ", " << c << "]";
      }
    const std::vector<float> part = ck_->read_f32(base + ".weight", 7, 9);
    EXPECT_TRUE(std::equal(part.begin(), part.end(), got.begin() + 7 * cols));
  }
}

TEST_F(TinyA, Bf16F32I64Exact) {
  const Raw e = raw_tensor("embed.weight");
  const std::vector<float> emb = ck_->read_f32("embed.weight", 10, 12);
  for (size_t i = 0; i < emb.size(); ++i) {
    const uint32_t bits = uint32_t(e.bytes[(10 * 256 + i) * 2] | (e.bytes[(10 * 256 + i) * 2 + 1] << 8)) << 16;
    float want;
    std::memcpy(&want, &bits, 4);
    ASSERT_EQ(emb[i], want) << i;
  }
  const Raw f = raw_tensor("layers.0.hc_attn_fn");
  const std::vector<float> fn = ck_->read_f32("layers.0.hc_attn_fn");
  ASSERT_EQ(fn.size() * 4, f.bytes.size());
  EXPECT_EQ(std::memcmp(fn.data(), f.bytes.data(), f.bytes.size()), 0);
  const std::vector<int64_t> tid = ck_->read_i64("layers.1.ffn.gate.tid2eid");
  ASSERT_EQ(tid.size(), 1024u * 4u);
  for (int64_t v : tid) ASSERT_TRUE(v >= 0 && v < 16);
  expect_error_naming([] { ck_->read_f32("layers.1.attn.wq_b.weight", 5, 2000); }, {"layers.1.attn.wq_b.weight", "row range"});
  expect_error_naming([] { ck_->read_i64("embed.weight"); }, {"embed.weight", "I64"});
}

TEST_F(TinyA, FullDequantUnderASecond) {
  const auto t0 = std::chrono::steady_clock::now();
  size_t values = 0;
  for (const auto& [name, t] : ck_->tensors()) {
    if (t.dtype == DType::kF8E8M0) continue;  // scales are consumed with their weights
    values += ck_->read_f32(name).size();
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(s, 1.0) << values << " values";
  EXPECT_GT(values, 10'000'000u);
  EXPECT_GT(ck_->bytes_read(), 11'000'000u);
}

}  // namespace
}  // namespace v4rt::model
