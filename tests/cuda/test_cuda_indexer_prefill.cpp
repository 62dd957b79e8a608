// SPDX-License-Identifier: MIT
// The prefill shapes of the lightning indexer on the device: top-k of many long rows (the
// row-per-block radix select of kernels/cuda/indexer.cu, every narrowing level and the column-order
// tie cut) against the CPU op exactly, and the tensor-core scores over compact FP4 keys (the raw
// rows fetched a tile ahead by cp.async) over long key ranges, bit for bit against the CUDA-core
// kernel and within the usual tolerance of the CPU op.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "common/kv_format.h"
#include "kernels/cuda/factory.h"
#include "tests/cuda/cuda_test_util.h"

namespace v4rt::kernels::cuda_test {
namespace {

// Row r of a top-k case by kind r % 7: coarse values (many ties in every digit), one value
// everywhere (a tie far larger than the candidate buffer: the column-order cut), bf16 normals,
// few valid scores (every one selected), a causal -inf tail with NaN and signed zeros, fp32 values
// differing only in their low 8 bits (the third digit), and a constant run covering the k-th key.
std::vector<float> topk_rows(int rows, int cols, int64_t stride, Rng& rng) {
  std::vector<float> s(size_t(rows) * size_t(stride), 12345.f);  // padding past cols: never read
  for (int r = 0; r < rows; ++r) {
    float* row = &s[size_t(r) * size_t(stride)];
    const int kind = r % 7;
    for (int c = 0; c < cols; ++c) {
      float v = 0.f;
      switch (kind) {
        case 0: v = round_bf16(float(rng.integer(-300, 300)) / 64.f); break;
        case 1: v = 1.5f; break;
        case 2: v = round_bf16(rng.normal(3.f)); break;
        case 3: v = rng.integer(0, 499) == 0 ? round_bf16(rng.normal()) : -INFINITY; break;
        case 4: v = c < cols / 3 ? round_bf16(float(rng.integer(-20, 20)) / 8.f) : -INFINITY; break;
        case 5: v = 1.f + float(rng.integer(0, 255)) * std::ldexp(1.f, -23); break;
        default: v = rng.integer(0, 3) == 0 ? 2.f : round_bf16(rng.normal(1.f)); break;
      }
      row[c] = v;
    }
    for (int i = 0; i < cols / 20; ++i) row[rng.integer(0, cols - 1)] = -INFINITY;  // -inf runs and singles
    const int run = int(rng.integer(0, cols - 2000));
    for (int c = run; c < run + 1500; ++c) row[c] = -INFINITY;
    if (kind == 4) {
      row[0] = -0.0f;
      row[1] = 0.0f;
      row[2] = NAN;
      row[5] = INFINITY;
    }
  }
  return s;
}

// 300 rows x 70,000 scores (and a padded stride with a scalar tail, and k = 2,048 / 1) against
// the CPU op: the same columns in the same order, the same values.
TEST(CudaIndexerPrefill, TopkManyLongRowsExact) {
  V4RT_REQUIRE_GPU();
  Rng rng(71);
  struct Case { int rows, cols; int64_t stride; int k; };
  for (const Case& c : {Case{300, 70000, 70000, 512}, Case{70, 70001, 70004, 2048}, Case{35, 16384, 16384, 1},
                        Case{21, 40003, 40008, 700}}) {
    const std::string name = std::to_string(c.rows) + "x" + std::to_string(c.cols) + " stride " +
                              std::to_string(c.stride) + " k=" + std::to_string(c.k);
    SCOPED_TRACE(name);
    Dual sc = make_dual({c.rows, c.stride}, topk_rows(c.rows, c.cols, c.stride, rng), DType::kF32);
    TensorView cpu_scores = sc.cpu, gpu_scores = sc.gpu;
    cpu_scores.shape[1] = gpu_scores.shape[1] = c.cols;  // rows of `stride`, `cols` used
    Dual idx = make_dual_i32({c.rows, c.k}, std::vector<int32_t>(size_t(c.rows) * c.k, 7));
    Dual val = make_dual({c.rows, c.k}, std::vector<float>(size_t(c.rows) * c.k, 0.f), DType::kF32);
    TopkParams p;
    p.k = c.k;
    p.index_offset = 5;
    p.scores = cpu_scores; p.out_idx = idx.cpu; p.out_values = val.cpu;
    cpu_backend().topk(p);
    p.scores = gpu_scores; p.out_idx = idx.gpu; p.out_values = val.gpu;
    gpu_backend().topk(p);
    const auto gi = gpu_i32(idx), ci = cpu_i32(idx);
    int64_t mismatches = 0, first = -1;
    for (size_t i = 0; i < gi.size(); ++i)
      if (gi[i] != ci[i]) {
        if (first < 0) first = int64_t(i);
        ++mismatches;
      }
    std::printf("[compare] topk rows %s: index mismatches=%lld\n", name.c_str(), static_cast<long long>(mismatches));
    EXPECT_EQ(mismatches, 0) << name << ": first at row " << (first < 0 ? -1 : first / c.k) << " slot "
                             << (first < 0 ? -1 : first % c.k) << " (gpu " << (first < 0 ? 0 : gi[size_t(first)])
                             << ", cpu " << (first < 0 ? 0 : ci[size_t(first)]) << ")";
    const std::vector<float> gv = val.gpu_values(), cv = val.cpu_values();
    int64_t differ = 0;
    for (size_t i = 0; i < gv.size(); ++i) differ += std::memcmp(&gv[i], &cv[i], 4) != 0;
    EXPECT_EQ(differ, 0) << name << ": values differ";
  }
}

// Rows of a compact layout on both backends (official values, packed).
struct CompactKeys {
  std::vector<uint8_t> bytes;
  Buffer gpu_buf;
  TensorView cpu, gpu;
};
CompactKeys compact_keys(const KvRowLayout& l, int64_t rows, Rng& rng) {
  std::vector<float> x = rng.normals(rows * l.dim, 1.f, false);
  round_to_kv_layout(cpu_backend(), l, TensorView(x.data(), DType::kF32, {rows, l.dim}));
  CompactKeys d;
  d.bytes.resize(size_t(rows * l.row_bytes));
  for (int64_t r = 0; r < rows; ++r) EXPECT_TRUE(kv_pack_row(l, &x[size_t(r * l.dim)], &d.bytes[size_t(r * l.row_bytes)]));
  d.gpu_buf = gpu_backend().alloc(d.bytes.size());
  gpu_backend().copy_to_device(d.gpu_buf.data(), d.bytes.data(), d.bytes.size());
  d.cpu = TensorView(d.bytes.data(), DType::kU8, {rows, l.row_bytes});
  d.gpu = TensorView(d.gpu_buf.data(), DType::kU8, {rows, l.row_bytes}, Device::kCuda);
  return d;
}

// Tensor-core scores over compact FP4 keys, paged (blocks of 16 rows in reverse order in a pool of
// 0xA5 bytes) and contiguous: 64 queries x 20,000 keys (313 tiles a block: the raw rows of tile
// i + 2 in flight during tile i throughout), a key sub-range with accumulation over heads [8, 45),
// 67 queries (a partial block), and key ranges of one, two and three tiles (the prologue alone,
// the prologue with one fetch, one steady step), head dim 64. Positions at ratio 4 so that nearly
// every key is visible (the last few masked for the first queries). Bit for bit against the CUDA-core
// kernel, within the tolerance of CudaOps.IndexerScoresTensorCoresPrefill against the CPU op.
TEST(CudaIndexerPrefill, IndexerScoresFp4LongKeys) {
  V4RT_REQUIRE_GPU();
  Rng rng(73);
  cuda::CudaBackendOptions simt_options;
  simt_options.indexer_tensor_cores = false;
  auto simt = cuda::make_cuda_backend(0, simt_options);
  auto fp4_values = [&](int64_t cnt) {
    std::vector<float> v(static_cast<size_t>(cnt));
    for (auto& x : v) x = round_fp4(rng.normal(2.f)) * std::ldexp(1.f, int(rng.integer(-3, 1)));
    return v;
  };
  struct Case { const char* name; int n, heads, dim, keys; int64_t pos0, k0, k1; int h0, h1; bool paged; };
  for (const Case& c : {Case{"64x20000 paged", 64, 64, 128, 20000, 79960, 0, -1, 0, -1, true},
                        Case{"64x20000 contiguous", 64, 64, 128, 20000, 79960, 0, -1, 0, -1, false},
                        Case{"67 queries, keys [37,19990), heads [8,45) acc, paged", 67, 64, 128, 20000, 79900, 37, 19990,
                             8, 45, true},
                        Case{"one tile", 20, 64, 128, 50, 190, 0, -1, 0, -1, true},
                        Case{"two tiles", 20, 64, 128, 128, 500, 0, -1, 0, -1, true},
                        Case{"three tiles, masked", 33, 64, 128, 190, 640, 0, -1, 0, -1, true},
                        Case{"dim 64, 16 heads", 48, 16, 64, 5000, 19980, 0, -1, 0, -1, true}}) {
    SCOPED_TRACE(c.name);
    const int64_t kend = c.k1 < 0 ? c.keys : c.k1, cols = kend - c.k0;
    const KvRowLayout fp4 = fp4_kv_layout(c.dim);
    Dual q = make_dual({c.n, c.heads, c.dim}, fp4_values(int64_t(c.n) * c.heads * c.dim));
    Dual w = make_dual({c.n, c.heads}, rng.normals(int64_t(c.n) * c.heads));
    const std::vector<float> init = rng.normals(int64_t(c.n) * cols);
    Dual s_tc = make_dual({c.n, cols}, init, DType::kF32), s_simt = make_dual({c.n, cols}, init, DType::kF32);
    CompactKeys ck = compact_keys(fp4, c.keys, rng);
    Buffer pool, table;
    TensorView paged_view;
    KvBlocks blocks;
    if (c.paged) {  // block b of 16 rows in 256-byte slot nb - 1 - b
      const int shift = 4;
      const int64_t rows_per = int64_t(1) << shift, nb = (c.keys + rows_per - 1) / rows_per;
      const int64_t slot = (rows_per * fp4.row_bytes + 255) / 256 * 256;
      std::vector<uint8_t> host(size_t(nb * slot), 0xA5);
      for (int64_t r = 0; r < c.keys; ++r)
        std::memcpy(&host[size_t((nb - 1 - (r >> shift)) * slot + (r & (rows_per - 1)) * fp4.row_bytes)],
                    &ck.bytes[size_t(r * fp4.row_bytes)], size_t(fp4.row_bytes));
      pool = gpu_backend().alloc(host.size());
      gpu_backend().copy_to_device(pool.data(), host.data(), host.size());
      std::vector<const uint8_t*> addr(static_cast<size_t>(nb));
      for (int64_t b = 0; b < nb; ++b) addr[size_t(b)] = static_cast<const uint8_t*>(pool.data()) + (nb - 1 - b) * slot;
      table = gpu_backend().alloc(addr.size() * sizeof(addr[0]));
      gpu_backend().copy_to_device(table.data(), addr.data(), addr.size() * sizeof(addr[0]));
      blocks.blocks = static_cast<const uint8_t* const*>(table.data());
      blocks.block_shift = shift;
      paged_view = TensorView(const_cast<uint8_t*>(addr[0]), DType::kU8, {c.keys, fp4.row_bytes}, Device::kCuda);
    }
    auto params = [&](bool gpu, const Dual& s) {
      IndexerScoresParams p;
      p.weight_scale = 1.0f / std::sqrt(8192.f);
      p.pos_begin = c.pos0;
      p.bf16_arith = true;
      p.key_begin = c.k0;
      p.key_end = c.k1;
      p.h_begin = c.h0;
      p.h_end = c.h1;
      p.accumulate = c.h0 > 0;
      p.q = gpu ? q.gpu : q.cpu;
      p.w = gpu ? w.gpu : w.cpu;
      p.scores = gpu ? s.gpu : s.cpu;
      p.key_layout = fp4;
      p.keys = gpu ? (c.paged ? paged_view : ck.gpu) : ck.cpu;
      if (gpu && c.paged) p.key_blocks = blocks;
      return p;
    };
    cpu_backend().indexer_scores(params(false, s_tc));
    gpu_backend().indexer_scores(params(true, s_tc));
    gpu_backend().synchronize();
    simt->indexer_scores(params(true, s_simt));
    simt->synchronize();
    const std::vector<float> tc = s_tc.gpu_values(), cc = s_simt.gpu_values();
    int64_t differ = 0;
    for (size_t i = 0; i < tc.size(); ++i) differ += std::memcmp(&tc[i], &cc[i], 4) != 0;
    std::printf("[compare] indexer fp4 prefill %s: %lld of %zu scores differ from the CUDA-core kernel\n", c.name,
                static_cast<long long>(differ), tc.size());
    EXPECT_EQ(differ, 0) << c.name;
    EXPECT_TRUE(compare(std::string("indexer fp4 prefill ") + c.name, tc, s_tc.cpu_values(), {2e-2, 2e-2, 1e-4}));
  }
}

}  // namespace
}  // namespace v4rt::kernels::cuda_test
