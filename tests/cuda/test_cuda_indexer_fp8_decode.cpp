// SPDX-License-Identifier: MIT
// The FP8 wgmma kernel of a decode batch (indexer_fp8_decode.cu: one query row per block, keys split
// over blocks) in indexer_scores_batch, against the CPU op per sequence within the tolerance of
// the prefill FP8 kernel's test, and against the bf16-exact path (a backend with indexer_fp8 off:
// the CUDA-core kernel) with the scores that differ in bits counted (the FP8 accumulation and the
// per-quad head sum, see indexer_fp8.cu). q holds FP4-quantized values, as the model's.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "common/kv_format.h"
#include "kernels/cuda/factory.h"
#include "tests/cuda/cuda_test_util.h"

namespace v4rt::kernels::cuda_test {
namespace {

enum class Paging { kNone, kAll, kOdd };  // which parts' keys are paged (block table, reverse order)

struct DecodeCase {
  const char* name;
  int num_parts, heads, dim;
  int max_rows;      // query rows per part: 1, or 1 and 2 alternating in a pattern
  int64_t max_keys;  // keys per part: max_keys for a batch of one, else 1 .. max_keys
  int h0, h1;        // heads [h0, h1); h1 = -1: all
  Paging paging;
  bool sub_range;    // keys [key_begin, key_end) of the part's table, accumulated into the scores
};

// Batches of 1, 3, 64 and 300 sequences (300: more than one launch's parameters hold, so two
// launches) of 1 or 2 query rows, 1 .. 3000 compact FP4 keys each (views of one table at different
// offsets, or the same rows paged through a block table in reverse block order), the scores of
// every sequence in its rows of one buffer. Keys past a row's visible ones (pos_begin + row + 1) /
// ratio get -inf (a few per row, or all of them for some sequences). Heads 64 and a sub-range
// [8, 45) with accumulation over a key sub-range; head dim 128 and 64.
TEST(CudaIndexerFp8Decode, Batch) {
  V4RT_REQUIRE_GPU();
  Rng rng(37);
  cuda::CudaBackendOptions exact_options;
  exact_options.indexer_fp8 = false;
  auto exact = cuda::make_cuda_backend(0, exact_options);
  cuda::CudaBackendOptions fp8_options;
  fp8_options.decode_tensor_cores = true;  // the decode kernel (debug.cuda_decode_tc)
  auto fp8 = cuda::make_cuda_backend(0, fp8_options);
  // FP4-quantized values (e2m1 times a power of two), as q and the keys of the official numerics.
  auto fp4_values = [&](int64_t cnt) {
    std::vector<float> v(static_cast<size_t>(cnt));
    for (auto& x : v) x = round_fp4(rng.normal(2.f)) * std::ldexp(1.f, int(rng.integer(-3, 1)));
    return v;
  };
  for (const DecodeCase& c :
       {DecodeCase{"1 part, 1 row, 2048 keys", 1, 64, 128, 1, 2048, 0, -1, Paging::kNone, false},
        DecodeCase{"1 part, 2 rows, 3000 keys paged", 1, 64, 128, 2, 3000, 0, -1, Paging::kAll, false},
        DecodeCase{"3 parts, dim 64, 16 heads", 3, 16, 64, 2, 3000, 0, -1, Paging::kNone, false},
        DecodeCase{"64 parts paged", 64, 64, 128, 2, 3000, 0, -1, Paging::kAll, false},
        DecodeCase{"300 parts, heads [8,45), key sub-range acc, odd parts paged", 300, 64, 128, 2, 3000, 8, 45,
                   Paging::kOdd, true},
        DecodeCase{"300 parts, dim 64, paged", 300, 64, 64, 2, 1000, 0, -1, Paging::kAll, false}}) {
    SCOPED_TRACE(c.name);
    const KvRowLayout fp4 = fp4_kv_layout(c.dim);
    const int64_t table = c.max_keys + 500;
    DualRows ck = dual_compact_rows(fp4, table, rng);
    std::vector<int64_t> rows(static_cast<size_t>(c.num_parts)), row0(rows), nkeys(rows), k0(rows), kb(rows), ke(rows);
    int64_t total = 0, max_cols = 0;
    for (int i = 0; i < c.num_parts; ++i) {
      const size_t u = size_t(i);
      rows[u] = c.max_rows == 1 ? 1 : (c.num_parts == 1 ? c.max_rows : 1 + (i % 5 == 2));
      row0[u] = total;
      total += rows[u];
      nkeys[u] = c.num_parts == 1 ? c.max_keys : 1 + (int64_t(i) * 337 + 90) % c.max_keys;
      k0[u] = (int64_t(i) * 53) % (table - nkeys[u] + 1);
      kb[u] = c.sub_range ? nkeys[u] / 5 : 0;
      ke[u] = c.sub_range ? nkeys[u] - nkeys[u] / 7 : nkeys[u];
      max_cols = std::max(max_cols, ke[u] - kb[u]);
    }
    std::vector<PagedRows> paged(static_cast<size_t>(c.num_parts));
    auto is_paged = [&](int i) { return c.paging == Paging::kAll || (c.paging == Paging::kOdd && i % 2 == 1); };
    for (int i = 0; i < c.num_parts; ++i) {
      if (!is_paged(i)) continue;
      const size_t u = size_t(i);
      const auto first = ck.bytes.begin() + k0[u] * fp4.row_bytes;
      const std::vector<uint8_t> bytes(first, first + nkeys[u] * fp4.row_bytes);
      paged[u] = page_rows_reversed(bytes, nkeys[u], fp4.row_bytes);
    }
    Dual q = make_dual({total, c.heads, c.dim}, fp4_values(total * c.heads * c.dim));
    Dual w = make_dual({total, c.heads}, rng.normals(total * c.heads));
    const std::vector<float> init = rng.normals(total * max_cols);
    Dual s_f8 = make_dual({total, max_cols}, init, DType::kF32), s_ex = make_dual({total, max_cols}, init, DType::kF32);
    Dual s_b = make_dual({total, max_cols}, init, DType::kBF16);  // the FP8 kernel into bf16 scores
    enum class Side { kCpu, kFp8, kExact, kFp8Bf16 };
    auto part = [&](int i, Side side) {
      const size_t u = size_t(i);
      const bool gpu = side != Side::kCpu;
      IndexerScoresParams p;
      p.q = view_rows(gpu ? q.gpu : q.cpu, row0[u], row0[u] + rows[u]);
      p.w = view_rows(gpu ? w.gpu : w.cpu, row0[u], row0[u] + rows[u]);
      p.key_layout = fp4;
      if (gpu && is_paged(i)) {
        p.keys = paged[u].view;
        p.key_blocks = paged[u].blocks;
      } else {
        p.keys = view_rows(gpu ? ck.gpu : ck.cpu, k0[u], k0[u] + nkeys[u]);
      }
      const Dual& s = side == Side::kExact ? s_ex : side == Side::kFp8Bf16 ? s_b : s_f8;
      p.scores = view_cols(view_rows(side == Side::kCpu ? s.cpu : s.gpu, row0[u], row0[u] + rows[u]), 0, ke[u] - kb[u]);
      p.key_begin = kb[u];
      p.key_end = ke[u];
      p.h_begin = c.h0;
      p.h_end = c.h1;
      p.accumulate = c.sub_range;
      p.weight_scale = 1.0f / std::sqrt(8192.f);
      // Every key visible to the last row, the last few not yet visible to some rows, none for others.
      p.pos_begin = i % 7 == 3 ? 0 : std::max<int64_t>(0, 4 * nkeys[u] - rows[u] - ((i + 1) % 4) * 9);
      p.bf16_arith = true;
      return p;
    };
    for (int i = 0; i < c.num_parts; ++i) cpu_backend().indexer_scores(part(i, Side::kCpu));
    std::vector<IndexerScoresParams> f8_parts, ex_parts;
    for (int i = 0; i < c.num_parts; ++i) {
      f8_parts.push_back(part(i, Side::kFp8));
      ex_parts.push_back(part(i, Side::kExact));
    }
    fp8->indexer_scores_batch({f8_parts.data(), int64_t(f8_parts.size())});
    fp8->synchronize();
    exact->indexer_scores_batch({ex_parts.data(), int64_t(ex_parts.size())});
    exact->synchronize();
    const std::vector<float> f8 = s_f8.gpu_values(), ex = s_ex.gpu_values(), ref = s_f8.cpu_values();
    int64_t differ = 0, neg_inf = 0;
    for (size_t i = 0; i < f8.size(); ++i) {
      differ += std::memcmp(&f8[i], &ex[i], 4) != 0;
      neg_inf += std::isinf(ref[i]) && ref[i] < 0;
    }
    std::printf("[compare] indexer fp8 decode %s: %lld of %zu scores differ from the bf16-exact path (%lld -inf)\n",
                c.name, static_cast<long long>(differ), f8.size(), static_cast<long long>(neg_inf));
    EXPECT_GT(neg_inf, 0) << "keys not yet visible";
    EXPECT_TRUE(compare(std::string("indexer fp8 decode ") + c.name, f8, ref, {2e-2, 2e-2, 1e-4}));
    EXPECT_TRUE(compare(std::string("indexer exact decode ") + c.name, ex, ref, {2e-2, 2e-2, 1e-4}));
    if (!c.sub_range) {  // bf16 scores (never accumulated): the F32 scores' values bit for bit
      std::vector<IndexerScoresParams> b_parts;
      for (int i = 0; i < c.num_parts; ++i) b_parts.push_back(part(i, Side::kFp8Bf16));
      fp8->indexer_scores_batch({b_parts.data(), int64_t(b_parts.size())});
      fp8->synchronize();
      const std::vector<float> b = s_b.gpu_values();
      int64_t b_differ = 0;
      for (size_t i = 0; i < b.size(); ++i) {
        const float want = round_bf16(f8[i]);  // written scores are bf16 values; the rest the bf16 init
        b_differ += std::memcmp(&b[i], &want, 4) != 0;
      }
      std::printf("[compare] indexer fp8 decode %s: %lld bf16 scores differ from the F32 ones\n", c.name,
                  static_cast<long long>(b_differ));
      EXPECT_EQ(b_differ, 0) << c.name;
    }
  }
}

}  // namespace
}  // namespace v4rt::kernels::cuda_test
