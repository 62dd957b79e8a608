// SPDX-License-Identifier: MIT
// Model costs against independent figures: the release index's total_size (exact), spec §8.2 KV
// bytes per token and constant state, spec §8.3 decode FLOPs at 1M context, spec §9 shapes.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "launch/plan/model_cost.h"
#include "model/config.h"
#include "model/presets.h"
#include "model/state.h"

namespace v4rt::launch::plan {
namespace {

constexpr int64_t kMillion = 1 << 20;  // spec §8.2: L_ctx = 2^20
constexpr double kGiB = double(1ull << 30), kMiB = double(1 << 20);

std::string release_dir(const std::string& model) {
  return std::string(V4RT_GOLDEN_DIR) + "/../spec/release/" + model;
}
model::ModelConfig release_config(const std::string& model) {
  return model::load_model_config(release_dir(model) + "/config.json");
}
int64_t index_total_size(const std::string& model) {
  std::ifstream in(release_dir(model) + "/model.safetensors.index.json");
  return nlohmann::json::parse(in).at("metadata").at("total_size").get<int64_t>();
}

TEST(ModelCost, WeightBytesEqualReleaseIndexTotalSize) {
  // Exact (tolerance 0): every tensor of spec §9 incl. MTP, FP8 128x128 and FP4 per-32 scale grids.
  EXPECT_EQ(weight_bytes(release_config("flash")).total(), 159609485896);
  EXPECT_EQ(weight_bytes(release_config("pro")).total(), 864704792696);
  EXPECT_EQ(weight_bytes(release_config("flash")).total(), index_total_size("flash"));
  EXPECT_EQ(weight_bytes(release_config("pro")).total(), index_total_size("pro"));
  // The presets are the same models.
  EXPECT_EQ(weight_bytes(model::preset_config("flash")).total(), 159609485896);
  EXPECT_EQ(weight_bytes(model::preset_config("pro")).total(), 864704792696);
}

TEST(ModelCost, ExpertAndGroupBytesFromSpecShapes) {
  // Flash routed expert: w1/w3 I8 [2048,2048] + scale [2048,128]; w2 I8 [4096,1024] + [4096,64].
  const WeightBytes f = weight_bytes(release_config("flash"));
  EXPECT_EQ(f.expert_bytes, 2 * (2048 * 2048 + 2048 * 128) + (4096 * 1024 + 4096 * 64));
  // 44 MoE blocks (43 + MTP) x 256 experts.
  EXPECT_EQ(f.main.experts + f.mtp.experts, 44LL * 256 * f.expert_bytes);
  EXPECT_EQ(f.embed, 129280LL * 4096 * 2);
  // Splitting over 1 rank holds everything; over tp/ep ranks the groups divide.
  EXPECT_DOUBLE_EQ(f.per_gpu(1, 1), double(f.total()));
  EXPECT_NEAR(f.per_gpu(8, 8) * 8, double(f.total()) + 7.0 * (f.main.replicated + f.mtp.replicated), 1.0);
}

TEST(ModelCost, KvBytesPerTokenMatchSpec82) {
  const model::ModelConfig flash = release_config("flash"), pro = release_config("pro");
  // Spec §8.2 rounds to whole bytes: 3514.25 and 5031.44 are exact.
  EXPECT_NEAR(kv_bytes_per_token(flash, KvFormat::kCompact), 3514, 0.5);
  EXPECT_NEAR(kv_bytes_per_token(pro, KvFormat::kCompact), 5031, 0.5);
  EXPECT_DOUBLE_EQ(kv_bytes_per_token(flash, KvFormat::kBf16), 6880);
  EXPECT_DOUBLE_EQ(kv_bytes_per_token(pro, KvFormat::kBf16), 9848);
  // At 1M tokens every block is complete, so the sequence's bytes are exactly per_token x 2^20; the
  // runtime's paged rows add 8 bytes of block table per 64-row pool block (no partial block at 2^20:
  // 4,096 blocks per CSA table, entries and keys, and 128 per HCA table; Flash 21 + 20 layers, Pro 30 + 31).
  const int64_t flash_tables = 8 * (21 * 2 * 4096 + 20 * 128), pro_tables = 8 * (30 * 2 * 4096 + 31 * 128);
  EXPECT_EQ(kv_bytes(flash, kMillion, KvFormat::kCompact).compressed, int64_t(3514.25 * kMillion) + flash_tables);
  EXPECT_EQ(kv_bytes(pro, kMillion, KvFormat::kCompact).compressed, int64_t(5031.4375 * kMillion) + pro_tables);
  EXPECT_EQ(kv_bytes(pro, kMillion, KvFormat::kBf16).compressed, 9848LL * kMillion);
  EXPECT_NEAR((kv_bytes(flash, kMillion, KvFormat::kCompact).compressed - flash_tables) / kGiB, 3.43, 0.005);
  EXPECT_NEAR((kv_bytes(pro, kMillion, KvFormat::kCompact).compressed - pro_tables) / kGiB, 4.91, 0.005);
  EXPECT_NEAR(kv_bytes(flash, kMillion, KvFormat::kBf16).compressed / kGiB, 6.72, 0.005);
  EXPECT_NEAR(kv_bytes(pro, kMillion, KvFormat::kBf16).compressed / kGiB, 9.62, 0.005);
}

TEST(ModelCost, EntryFormatsAndConstantState) {
  const model::ModelConfig flash = release_config("flash"), pro = release_config("pro");
  const KvEntryBytes compact = kv_entry_bytes(flash, KvFormat::kCompact);
  EXPECT_EQ(compact.main_entry, 584);   // 448 e4m3 + 64 bf16 + 7 e8m0 + 1 pad
  EXPECT_EQ(compact.indexer_key, 68);   // 64 B FP4 + 4 e8m0
  EXPECT_EQ(kv_entry_bytes(flash, KvFormat::kBf16).main_entry, 1024);
  EXPECT_EQ(kv_entry_bytes(flash, KvFormat::kBf16).indexer_key, 256);
  // Spec §8.2 constants of the reference layout (quoted to 0.1 MiB): windows 5.4 / 7.6 MiB,
  // compressor state 11.6 / 17.8.
  const KvBytes fb = kv_bytes(flash, kMillion, KvFormat::kBf16);
  const KvBytes pb = kv_bytes(pro, kMillion, KvFormat::kBf16);
  EXPECT_NEAR(fb.window_ring / kMiB, 5.4, 0.05);
  EXPECT_NEAR(pb.window_ring / kMiB, 7.6, 0.05);
  EXPECT_NEAR(fb.compressor_state / kMiB, 11.6, 0.05);
  EXPECT_NEAR(pb.compressor_state / kMiB, 17.8, 0.05);
  // The runtime's storages cost what it allocates: F32 window tails of 127 + 32 rows (43 / 61
  // layers x 159 x 512 x 4 B) and F32 compressor buffers of 16 rows (CSA 128 + 32 KiB) or two
  // blocks (HCA 1 MiB).
  const KvBytes f = kv_bytes(flash, kMillion, KvFormat::kCompact);
  const KvBytes p = kv_bytes(pro, kMillion, KvFormat::kCompact);
  EXPECT_EQ(f.window_ring, 43 * 159 * 512 * 4);
  EXPECT_EQ(p.window_ring, 61 * 159 * 512 * 4);
  EXPECT_EQ(f.compressor_state, (21 * 160 + 20 * 1024) * 1024);
  EXPECT_EQ(p.compressor_state, (30 * 160 + 31 * 1024) * 1024);
  for (KvFormat format : {KvFormat::kCompact, KvFormat::kF32}) {
    const model::KvStorage storage = format == KvFormat::kCompact ? model::KvStorage::kCompact : model::KvStorage::kF32;
    for (int64_t context : {int64_t(5), int64_t(1000), kMillion})
      EXPECT_EQ(kv_bytes(flash, context, format).total(), model::state_bytes(flash, context, storage))
          << kv_format_name(format) << " at " << context;
  }
  // SP divides only the compressed part.
  EXPECT_EQ(p.per_gpu(8), (p.compressed + 7) / 8 + p.window_ring + p.compressor_state);
  // Short contexts: entries exist only for complete compressor blocks; the first entry of a table
  // takes a whole pool block (64 x 584 = 37,376 B of entries, 64 x 68 = 4,352 B of keys, 8 B of
  // block table each).
  EXPECT_EQ(kv_bytes(flash, 3, KvFormat::kCompact).compressed, 0);
  EXPECT_EQ(kv_bytes(flash, 4, KvFormat::kCompact).compressed, 21 * (37376 + 8 + 4352 + 8));
  EXPECT_EQ(kv_bytes(flash, 4, KvFormat::kF32).compressed, 21 * (512 + 128) * 4);
}

TEST(ModelCost, DecodeFlopsAt1MMatchSpec83) {
  // Spec §8.3 (GFLOP, one decimal): Flash linear 26.5, attention 113.8 (indexer ~90);
  // Pro linear 97.7, attention 205.5 (indexer ~129, HCA ~67).
  const model::ModelConfig flash = release_config("flash"), pro = release_config("pro");
  EXPECT_NEAR(2 * linear_macs(flash).total(6) / 1e9, 26.5, 0.05);
  EXPECT_NEAR(2 * linear_macs(pro).total(6) / 1e9, 97.7, 0.05);
  const AttentionFlops af = decode_attention_flops(flash, kMillion);
  const AttentionFlops ap = decode_attention_flops(pro, kMillion);
  EXPECT_NEAR(af.total() / 1e9, 113.8, 0.05);
  EXPECT_NEAR(ap.total() / 1e9, 205.5, 0.05);
  EXPECT_NEAR(af.indexer / 1e9, 90, 0.5);
  EXPECT_NEAR(ap.indexer / 1e9, 129, 0.5);
}

TEST(ModelCost, PrefillAttentionSumsDecodeOverPositions) {
  // Prefill of n tokens = the sum of single-token decode costs at contexts 1..n.
  const model::ModelConfig flash = release_config("flash");
  for (int64_t n : {1, 3, 4, 5, 127, 128, 129, 700, 2049, 5000}) {
    AttentionFlops sum;
    for (int64_t t = 1; t <= n; ++t) {
      const AttentionFlops a = decode_attention_flops(flash, t);
      sum.indexer += a.indexer;
      sum.core_window += a.core_window;
      sum.core_compressed += a.core_compressed;
    }
    const AttentionFlops p = prefill_attention_flops(flash, n);
    EXPECT_DOUBLE_EQ(p.indexer, sum.indexer) << n;
    EXPECT_DOUBLE_EQ(p.core_window, sum.core_window) << n;
    EXPECT_DOUBLE_EQ(p.core_compressed, sum.core_compressed) << n;
  }
}

}  // namespace
}  // namespace v4rt::launch::plan
