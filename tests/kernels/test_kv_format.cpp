// SPDX-License-Identifier: MIT
// Compact KV rows (common/kv_format.h): the row sizes of spec §8.1, bytes encoded by hand, the
// lossless round trip of rows the official rounding produced (the backend's qdq op, an independent
// path), the report of rows it did not produce, and the CPU attention / indexer ops reading compact
// rows bit for bit as they read the same values in F32 rows.
#include <cmath>

#include "common/check.h"
#include "common/kv_format.h"
#include "kernels/backend.h"
#include "tests/kernels/cpu_test_util.h"

namespace v4rt::kernels {
namespace {

TEST(KvFormat, RowSizesOfTheSpec) {
  EXPECT_EQ(fp8_rope_kv_layout(512, 64).row_bytes, 584);  // 448 + 128 + 7 + 1 pad (Flash, Pro)
  EXPECT_EQ(fp4_kv_layout(128).row_bytes, 68);             // 64 + 4
  const KvRowLayout tiny = fp8_rope_kv_layout(128, 32);    // 96 nope: a partial second block
  EXPECT_EQ(tiny.num_scales(), 2);
  EXPECT_EQ(tiny.row_bytes, 168);                          // 96 + 64 + 2, padded to 8
  EXPECT_EQ(fp4_kv_layout(64).row_bytes, 36);              // 32 + 2, padded to 4
  EXPECT_THROW(fp4_kv_layout(48), Error);
}

TEST(KvFormat, BytesEncodedByHand) {
  const KvRowLayout l = fp8_rope_kv_layout(128, 64);  // 64 e4m3, 64 bf16, 1 scale
  std::vector<float> x(128, 0.0f);
  x[0] = 1.0f;     // amax 1: scale 2^ceil(log2(1/448)) = 2^-8, code of 256 = 1.0 * 2^8 -> 0x78
  x[1] = -0.5f;    // -128 = -1.0 * 2^7 -> 0x80 | 0x70
  x[64] = 1.5f;    // bf16 0x3fc0
  std::vector<uint8_t> row(size_t(l.row_bytes));
  ASSERT_TRUE(kv_pack_row(l, x.data(), row.data()));
  EXPECT_EQ(row[0], 0x78);
  EXPECT_EQ(row[1], 0xf0);
  EXPECT_EQ(row[2], 0x00);
  EXPECT_EQ(row[64], 0xc0);
  EXPECT_EQ(row[65], 0x3f);
  EXPECT_EQ(row[l.scale_offset], 127 - 8);

  const KvRowLayout k = fp4_kv_layout(32);
  std::vector<float> y(32, 0.0f);
  y[0] = 6.0f;   // amax 6: scale 1, code 7
  y[1] = -0.5f;  // code 8 | 1, high nibble of byte 0
  y[2] = 3.0f;   // code 5
  std::vector<uint8_t> key(size_t(k.row_bytes));
  ASSERT_TRUE(kv_pack_row(k, y.data(), key.data()));
  EXPECT_EQ(key[0], 0x97);
  EXPECT_EQ(key[1], 0x05);
  EXPECT_EQ(key[k.scale_offset], 127);
}

TEST(KvFormat, OfficialRowsRoundTripBitForBit) {
  auto be = make_cpu_backend();
  for (const KvRowLayout& l : {fp8_rope_kv_layout(512, 64), fp8_rope_kv_layout(128, 32), fp4_kv_layout(128),
                               fp4_kv_layout(64)}) {
    SCOPED_TRACE(std::string(kv_format_name(l.format)) + " dim " + std::to_string(l.dim));
    std::vector<float> x = official_rows(*be, l, 45, 100 + uint64_t(l.dim));
    const std::vector<uint8_t> packed = pack(*be, l, x);
    std::vector<float> back(x.size());
    for (size_t r = 0; r < x.size() / size_t(l.dim); ++r)
      kv_unpack_row(l, packed.data() + r * size_t(l.row_bytes), back.data() + r * size_t(l.dim));
    EXPECT_TRUE(bit_equal(back, x));
  }
}

TEST(KvFormat, RowsTheRoundingDidNotProduceAreReported) {
  auto be = make_cpu_backend();
  for (const KvRowLayout& l : {fp8_rope_kv_layout(128, 32), fp4_kv_layout(64)}) {
    std::vector<float> x = randn(size_t(3 * l.dim), 7);  // not rounded
    std::vector<uint8_t> row(size_t(l.row_bytes));
    EXPECT_FALSE(kv_pack_row(l, x.data(), row.data()));
    EXPECT_THROW(pack(*be, l, x), Error);
  }
}

// Sparse attention over compressed entries: compact rows give exactly the output of F32 rows
// holding the same values, with a candidate list (CSA) and with every visible entry (HCA).
TEST(CpuKvOps, AttentionReadsCompactEntriesAsF32) {
  auto be = make_cpu_backend();
  const int64_t n = 3, heads = 4, dim = 128, num_win = 6, num_comp = 40, cand = 9;
  const KvRowLayout l = fp8_rope_kv_layout(dim, 32);
  std::vector<float> q = randn(size_t(n * heads * dim), 1), win = randn(size_t(num_win * dim), 2);
  std::vector<float> comp = official_rows(*be, l, num_comp, 3);
  std::vector<uint8_t> packed = pack(*be, l, comp);
  std::vector<int32_t> idx(size_t(n * cand));
  for (size_t i = 0; i < idx.size(); ++i) idx[i] = i % 4 == 3 ? -1 : int32_t((i * 7) % num_comp);
  const WeightView sink = upload_f32(*be, randn(size_t(heads), 4), 1, heads);
  for (bool list : {true, false}) {
    SCOPED_TRACE(list ? "candidate list" : "all visible entries");
    std::vector<float> out_plain(q.size()), out_compact(q.size());
    for (bool compact : {false, true}) {
      SparseAttentionParams p;
      p.q = tv(q, {n, heads, dim});
      p.window_kv = tv(win, {num_win, dim});
      p.window_pos0 = 154;
      p.pos_begin = 157;
      p.window = 4;
      if (compact) {
        p.comp_kv = TensorView(packed.data(), DType::kU8, {num_comp, l.row_bytes});
        p.comp_layout = l;
      } else {
        p.comp_kv = tv(comp, {num_comp, dim});
      }
      if (list) p.comp_idx = tvi(idx, {n, cand});
      else p.comp_ratio = 4;
      p.sink = sink;
      p.softmax_scale = 0.088f;
      p.bf16_probs = p.out_bf16 = true;
      p.out = tv(compact ? out_compact : out_plain, {n, heads, dim});
      be->sparse_attention(p);
    }
    EXPECT_TRUE(bit_equal(out_compact, out_plain));
  }
}

TEST(CpuKvOps, IndexerReadsCompactKeysAsF32) {
  auto be = make_cpu_backend();
  const int64_t n = 4, heads = 3, dim = 64, keys = 21;
  const KvRowLayout l = fp4_kv_layout(dim);
  std::vector<float> q = randn(size_t(n * heads * dim), 5), w = randn(size_t(n * heads), 6);
  std::vector<float> k = official_rows(*be, l, keys, 7);
  std::vector<uint8_t> packed = pack(*be, l, k);
  std::vector<float> plain(size_t(n * keys)), compact(size_t(n * keys));
  for (bool c : {false, true}) {
    IndexerScoresParams p;
    p.q = tv(q, {n, heads, dim});
    if (c) {
      p.keys = TensorView(packed.data(), DType::kU8, {keys, l.row_bytes});
      p.key_layout = l;
    } else {
      p.keys = tv(k, {keys, dim});
    }
    p.w = tv(w, {n, heads});
    p.scores = tv(c ? compact : plain, {n, keys});
    p.weight_scale = 0.3f;
    p.pos_begin = 80;
    p.bf16_arith = true;
    be->indexer_scores(p);
  }
  EXPECT_TRUE(bit_equal(compact, plain));
}

}  // namespace
}  // namespace v4rt::kernels
