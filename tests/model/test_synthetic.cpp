// SPDX-License-Identifier: MIT
// Synthetic checkpoints: the tiny preset (with MTP) opens and validates, the same seed gives
// identical bytes, the quantizers reproduce golden tiny-a's stored codes from its dequantized
// values, and initial weight scales are those of make_golden.py's randomize().
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "model/checkpoint.h"
#include "model/presets.h"
#include "model/synthetic.h"
#include "test_util.h"

namespace v4rt::model {
namespace {

using testing::TempDir;

TEST(Synthetic, TinyPresetOpensAndValidates) {
  TempDir a;
  const ModelConfig cfg = preset_config("tiny", /*mtp=*/true);
  const uint64_t total = write_synthetic_checkpoint(cfg, a.str(), {11, 2});
  auto ck = Checkpoint::open(a.str());
  EXPECT_NO_THROW(ck->validate_tensors());
  EXPECT_EQ(ck->config().num_nextn_predict_layers, 1);
  EXPECT_EQ(ck->config().vocab_size, 129280);
  EXPECT_TRUE(ck->has("mtp.0.e_proj.weight"));
  uint64_t sum = 0;
  for (const auto& [n, t] : ck->tensors()) sum += t.bytes;
  EXPECT_EQ(sum, total);
}

// Same seed -> identical files; another seed -> different weights (small vocab keeps it quick).
TEST(Synthetic, DeterministicForASeed) {
  TempDir a, b, c;
  ModelConfig cfg = preset_config("tiny", /*mtp=*/true);
  cfg.vocab_size = 2048;
  write_synthetic_checkpoint(cfg, a.str(), {11, 2});
  write_synthetic_checkpoint(cfg, b.str(), {11, 2});
  write_synthetic_checkpoint(cfg, c.str(), {12, 2});
  for (const char* f : {"config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
                        "model-00002-of-00002.safetensors"}) {
    EXPECT_TRUE(testing::read_bytes(a / f) == testing::read_bytes(b / f)) << f << " differs for the same seed";
  }
  EXPECT_FALSE(testing::read_bytes(a / "model-00002-of-00002.safetensors") ==
               testing::read_bytes(c / "model-00002-of-00002.safetensors"));
}

TEST(Synthetic, ReleasePlacementOpens) {
  TempDir d;
  ModelConfig cfg = preset_config("tiny", /*mtp=*/true);
  cfg.vocab_size = 1024;
  write_synthetic_checkpoint(cfg, d.str(), {2, 0});
  auto ck = Checkpoint::open(d.str());
  EXPECT_EQ(ck->info("embed.weight").file, d / "model-00001-of-00009.safetensors");
  EXPECT_EQ(ck->info("layers.3.attn.wkv.weight").file, d / "model-00005-of-00009.safetensors");
  EXPECT_EQ(ck->info("head.weight").file, d / "model-00008-of-00009.safetensors");
  EXPECT_EQ(ck->info("mtp.0.hnorm.weight").file, d / "model-00009-of-00009.safetensors");
}

TEST(Synthetic, InitScalesFollowRandomize) {
  TempDir d;
  ModelConfig cfg = preset_config("tiny");
  cfg.vocab_size = 1024;
  write_synthetic_checkpoint(cfg, d.str(), {5, 3});
  auto ck = Checkpoint::open(d.str());
  auto stats = [&](const std::string& n, double* mean, double* sd) {
    const std::vector<float> v = ck->read_f32(n);
    double s = 0, s2 = 0;
    for (float x : v) s += x, s2 += double(x) * x;
    *mean = s / double(v.size());
    *sd = std::sqrt(s2 / double(v.size()) - *mean * *mean);
  };
  double m, s;
  stats("layers.1.attn.wq_b.weight", &m, &s);  // fan-in 128
  EXPECT_NEAR(s, 1.0 / std::sqrt(128.0), 0.01);
  EXPECT_NEAR(m, 0.0, 0.01);
  stats("layers.2.ffn.experts.3.w2.weight", &m, &s);  // FP4, fan-in 128
  EXPECT_NEAR(s, 1.0 / std::sqrt(128.0), 0.015);
  stats("embed.weight", &m, &s);
  EXPECT_NEAR(s, 1.0, 0.02);
  stats("layers.0.attn_norm.weight", &m, &s);
  EXPECT_NEAR(m, 1.0, 0.05);
  EXPECT_NEAR(s, 0.2, 0.05);
  const std::vector<float> hs = ck->read_f32("layers.0.hc_ffn_scale");
  for (float x : hs) EXPECT_TRUE(x >= 0.5f && x < 1.5f) << x;
  const std::vector<int64_t> tid = ck->read_i64("layers.0.ffn.gate.tid2eid");
  for (size_t r = 0; r < tid.size() / 4; ++r)
    for (int i = 0; i < 4; ++i)
      for (int j = i + 1; j < 4; ++j) ASSERT_NE(tid[r * 4 + size_t(i)], tid[r * 4 + size_t(j)]) << "row " << r;
  EXPECT_EQ(testing::read_shard(d / "model-00003-of-00003.safetensors").header["__metadata__"]["format"], "pt");
}

// Requantizing tiny-a's dequantized weights with make_golden.py's recipe gives back exactly the
// same values. (Codes may differ: a block whose largest value rounded down to half the grid top
// re-derives a scale one binade lower, with every code doubled.)
TEST(Synthetic, QuantizersRoundTripGoldenValues) {
  auto ck = Checkpoint::open(V4RT_GOLDEN_DIR "/tiny-a/model");
  for (const std::string base : {"layers.1.attn.wq_b", "layers.0.attn.wo_b", "layers.3.ffn.shared_experts.w1"}) {
    const TensorInfo& w = ck->info(base + ".weight");
    const TensorInfo& s = ck->info(base + ".scale");
    const int64_t cols = w.shape[1], scols = s.shape[1];
    const std::vector<float> deq = ck->read_f32(base + ".weight");
    std::vector<uint8_t> q(size_t(w.bytes)), sc(size_t(s.bytes));
    quantize_fp8_block(deq.data(), w.shape[0], cols, q.data(), sc.data());
    for (size_t i = 0; i < sc.size(); ++i) ASSERT_TRUE(sc[i] == s.data[i] || sc[i] + 1 == s.data[i]) << base << " block " << i;
    for (int64_t i = 0; i < int64_t(q.size()); ++i) {
      const int64_t r = i / cols, c = i % cols;
      ASSERT_EQ(e4m3_to_f32(q[size_t(i)]) * e8m0_to_f32(sc[size_t((r / 128) * scols + c / 128)]), deq[size_t(i)])
          << base << " element " << i;
    }
  }
  for (const std::string base : {"layers.0.ffn.experts.0.w1", "layers.5.ffn.experts.9.w2"}) {
    const TensorInfo& w = ck->info(base + ".weight");
    const TensorInfo& s = ck->info(base + ".scale");
    const int64_t cols = 2 * w.shape[1];
    const std::vector<float> deq = ck->read_f32(base + ".weight");
    std::vector<uint8_t> q(size_t(w.bytes)), sc(size_t(s.bytes));
    quantize_fp4(deq.data(), w.shape[0], cols, q.data(), sc.data());
    for (size_t i = 0; i < sc.size(); ++i) ASSERT_TRUE(sc[i] == s.data[i] || sc[i] + 1 == s.data[i]) << base << " group " << i;
    for (int64_t i = 0; i < int64_t(deq.size()); ++i) {
      const uint8_t code = fp4_unpack(q.data() + (i / cols) * (cols / 2), i % cols);
      ASSERT_EQ(fp4_to_f32(code) * e8m0_to_f32(sc[size_t(i / 32)]), deq[size_t(i)]) << base << " element " << i;
    }
  }
}

}  // namespace
}  // namespace v4rt::model
