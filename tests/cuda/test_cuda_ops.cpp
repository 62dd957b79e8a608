// SPDX-License-Identifier: MIT
// Every non-GEMM CUDA op against the CPU reference op on fresh random inputs: odd sizes, decode- and
// prefill-shaped cases, NaN/inf position parity, per-op tolerances for the bf16 activation path;
// the batched ops of a decode batch (and RoPE in runs) against the CPU op per sequence.
// Inputs are bf16-representable so both backends start from identical values.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <string>
#include <tuple>
#include <utility>

#include "common/kv_format.h"
#include "kernels/cuda/factory.h"
#include "tests/cuda/cuda_test_util.h"

namespace v4rt::kernels::cuda_test {
namespace {

const Tolerance kBf16Tol{1e-2, 1e-2, 1e-4};    // one bf16 rounding of the output
const Tolerance kF32Tol{1e-4, 1e-5, 1e-8};     // fp32 outputs, summation order only

// --- rms_norm ------------------------------------------------------------------------------------

TEST(CudaOps, RmsNorm) {
  V4RT_REQUIRE_GPU();
  Rng rng(1);
  // Dims to 1,024 take the warp-per-row kernel (rows not a multiple of its 8 a block), wider ones a block a row.
  for (auto [rows, dim, weighted] : {std::tuple{1, 4096, true}, {7, 1000, true}, {33, 512, false}, {64, 7168, true},
                                     {1001, 36, false}, {9, 1024, true}, {3, 1025, true}, {5, 2, true}}) {
    Dual x = make_dual({rows, dim}, rng.normals(int64_t(rows) * dim, 2.f));
    Dual y = make_dual({rows, dim}, std::vector<float>(size_t(rows) * dim, 0.f));
    RmsNormParams p;
    p.eps = 1e-6f;
    DualWeight w;
    if (weighted) w = upload_f32(rng.normals(dim), 1, dim, DType::kBF16);
    p.x = x.cpu; p.y = y.cpu; p.weight = w.cpu;
    cpu_backend().rms_norm(p);
    p.x = x.gpu; p.y = y.gpu; p.weight = w.gpu;
    gpu_backend().rms_norm(p);
    EXPECT_TRUE(compare("rms_norm " + std::to_string(rows) + "x" + std::to_string(dim), y.gpu_values(), y.cpu_values(), kBf16Tol));
  }
}

TEST(CudaOps, RmsNormBf16PerHeadInPlace) {
  V4RT_REQUIRE_GPU();
  Rng rng(2);
  const int rows = 3 * 64, dim = 512;
  Dual x = make_dual({rows, dim}, rng.normals(rows * dim, 0.7f));
  RmsNormParams p;
  p.bf16_arith = true;
  p.x = p.y = x.cpu;
  cpu_backend().rms_norm(p);
  p.x = p.y = x.gpu;
  gpu_backend().rms_norm(p);
  // Both round at every step; only the fp32 sum order differs (rarely one bf16 ulp).
  EXPECT_TRUE(compare("rms_norm bf16 per-head", x.gpu_values(), x.cpu_values(), {8e-3, 0, 1e-5}));
}

// --- rope, hadamard ------------------------------------------------------------------------------

TEST(CudaOps, RopeForwardInverseLargePositions) {
  V4RT_REQUIRE_GPU();
  Rng rng(3);
  std::vector<float> inv_freq(32);
  for (int i = 0; i < 32; ++i) inv_freq[size_t(i)] = std::pow(160000.f, -2.f * float(i) / 64.f) / (i >= 25 ? 16.f : 1.f);
  for (auto [rows, heads, pos0, inverse] : {std::tuple{5, 3, int64_t(1000), false}, {2, 64, int64_t((1 << 20) - 7), false},
                                           {9, 1, int64_t(17), true}}) {
    Dual x = make_dual({rows, heads, 512}, rng.normals(int64_t(rows) * heads * 512));
    RopeParams p;
    p.inv_freq = inv_freq.data();
    p.rope_dim = 64;
    p.pos_begin = pos0;
    p.pos_step = 1;
    p.inverse = inverse;
    p.x = x.cpu;
    cpu_backend().rope(p);
    p.x = x.gpu;
    gpu_backend().rope(p);
    EXPECT_TRUE(compare("rope pos " + std::to_string(pos0), x.gpu_values(), x.cpu_values(), kBf16Tol));
  }
}

// The rows of several sequences in one call, each at its own position (ragged, out of order, past
// 2^20), forward and inverse.
TEST(CudaOps, RopePerRowPositions) {
  V4RT_REQUIRE_GPU();
  Rng rng(31);
  std::vector<float> inv_freq(32);
  for (int i = 0; i < 32; ++i) inv_freq[size_t(i)] = std::pow(160000.f, -2.f * float(i) / 64.f) / (i >= 25 ? 16.f : 1.f);
  const std::vector<int32_t> positions = {1000, 1001, 1002, 5, (1 << 20) + 3, 0, 77, 78};
  const int rows = int(positions.size()), heads = 3;
  const Dual pos = make_dual_i32({rows}, positions);
  for (bool inverse : {false, true}) {
    Dual x = make_dual({rows, heads, 512}, rng.normals(int64_t(rows) * heads * 512));
    RopeParams p;
    p.inv_freq = inv_freq.data();
    p.rope_dim = 64;
    p.inverse = inverse;
    p.x = x.cpu;
    p.positions = static_cast<const int32_t*>(pos.cpu.data);
    cpu_backend().rope(p);
    p.x = x.gpu;
    p.positions = static_cast<const int32_t*>(pos.gpu.data);
    gpu_backend().rope(p);
    EXPECT_TRUE(compare(std::string("rope positions") + (inverse ? " inverse" : ""), x.gpu_values(), x.cpu_values(), kBf16Tol));
  }
}

// The new compressed entries of a decode batch in one call (RopeParams::runs): each sequence's
// entries at j0 * ratio, (j0 + 1) * ratio, ... (ragged counts, empty runs, positions past 2^20),
// batches of 1 to 1,500 runs (more than one launch group), forward and inverse.
TEST(CudaOps, RopeRuns) {
  V4RT_REQUIRE_GPU();
  Rng rng(32);
  std::vector<float> inv_freq(32);
  for (int i = 0; i < 32; ++i) inv_freq[size_t(i)] = std::pow(160000.f, -2.f * float(i) / 64.f) / (i >= 25 ? 16.f : 1.f);
  for (int num_runs : {1, 3, 64, 300, 1500}) {
    std::vector<RopeRun> runs;
    int64_t rows = 0;
    for (int k = 0; k < num_runs; ++k) {
      const int64_t n = num_runs == 1 ? 2 : rng.integer(0, 3);
      const int64_t step = k % 7 == 6 ? 128 : 4;
      const int64_t j0 = k % 5 == 4 ? ((int64_t(1) << 20) + rng.integer(0, 1000)) / step : rng.integer(0, 4000);
      runs.push_back({rows, n, j0 * step, step});
      rows += n;
    }
    for (bool inverse : {false, true}) {
      Dual x = make_dual({rows, 1, 512}, rng.normals(rows * 512));
      RopeParams p;
      p.inv_freq = inv_freq.data();
      p.rope_dim = 64;
      p.inverse = inverse;
      p.runs = runs.data();
      p.num_runs = int64_t(runs.size());
      p.x = x.cpu;
      cpu_backend().rope(p);
      p.x = x.gpu;
      gpu_backend().rope(p);
      EXPECT_TRUE(compare("rope runs " + std::to_string(num_runs) + (inverse ? " inverse" : ""), x.gpu_values(),
                          x.cpu_values(), kBf16Tol));
    }
  }
}

// Every dim of the warp kernel (32 to 1,024: one to 32 elements a lane), 37 rows (the last block
// part full), and the block kernel's 2,048 and 16,384 (a 64 KB row in shared memory, past the 48 KB a
// launch gets without opting in). Both kernels add and subtract the same pairs stage by stage as the
// CPU op: the same bits, with and without the bf16 rounding of the output.
TEST(CudaOps, Hadamard) {
  V4RT_REQUIRE_GPU();
  Rng rng(4);
  for (int dim : {128, 64, 32, 256, 512, 1024, 2048, 16384}) {
    for (const bool round : {false, true}) {
      Dual x = make_dual({37, dim}, rng.normals(37 * dim), DType::kF32);
      HadamardParams p;
      p.out_bf16 = round;
      p.x = x.cpu;
      cpu_backend().hadamard(p);
      p.x = x.gpu;
      gpu_backend().hadamard(p);
      const std::vector<float> g = x.gpu_values(), c = x.cpu_values();
      int64_t differ = 0;
      for (size_t i = 0; i < g.size(); ++i) differ += std::memcmp(&g[i], &c[i], 4) != 0;
      EXPECT_EQ(differ, 0) << "hadamard f32 dim " << dim << (round ? " rounded" : "") << ": " << differ << " of "
                           << g.size() << " values differ from the CPU op's";
    }
  }
}

// --- mHC -----------------------------------------------------------------------------------------

TEST(CudaOps, HcPreHeadPost) {
  V4RT_REQUIRE_GPU();
  Rng rng(5);
  // F32 x (the model's hc state) from 32 tokens: the mix GEMM (CudaBackend::hc_pre), its sum of
  // squares in the finishing kernel (CudaBackendOptions::hc_fused_sumsq, the default) and by a
  // pass of its own; else the GEMV kernels.
  for (auto [n, hidden, x_dtype] : {std::tuple{1, 4096, DType::kBF16}, {19, 256, DType::kBF16}, {300, 512, DType::kBF16},
                                    {2, 7168, DType::kBF16}, {300, 512, DType::kF32}, {40, 4096, DType::kF32}}) {
    const int hc = 4, nmix = (2 + hc) * hc;
    Dual x = make_dual({n, hc, hidden}, rng.normals(int64_t(n) * hc * hidden), x_dtype);
    DualWeight fn = upload_f32(rng.normals(int64_t(nmix) * hc * hidden, 0.02f, false), nmix, hc * hidden);
    DualWeight base = upload_f32(rng.normals(nmix, 0.5f, false), 1, nmix);
    DualWeight scale = upload_f32({0.7f, 1.3f, 0.9f}, 1, 3);
    Dual a = make_dual({n, hidden}, std::vector<float>(size_t(n) * hidden, 0.f));
    Dual post = make_dual({n, hc}, std::vector<float>(size_t(n) * hc, 0.f), DType::kF32);
    Dual comb = make_dual({n, hc, hc}, std::vector<float>(size_t(n) * hc * hc, 0.f), DType::kF32);
    HcPreParams p;
    p.x = x.cpu; p.fn = fn.cpu; p.base = base.cpu; p.scale = scale.cpu; p.a = a.cpu; p.post = post.cpu; p.comb = comb.cpu;
    cpu_backend().hc_pre(p);
    p.x = x.gpu; p.fn = fn.gpu; p.base = base.gpu; p.scale = scale.gpu; p.a = a.gpu; p.post = post.gpu; p.comb = comb.gpu;
    gpu_backend().hc_pre(p);
    const std::string tag = " n" + std::to_string(n) + " d" + std::to_string(hidden) + " " + std::string(dtype_name(x_dtype));
    EXPECT_TRUE(compare("hc_pre a" + tag, a.gpu_values(), a.cpu_values(), kBf16Tol));
    EXPECT_TRUE(compare("hc_pre post" + tag, post.gpu_values(), post.cpu_values(), {1e-4, 1e-5, 1e-8}));
    EXPECT_TRUE(compare("hc_pre comb" + tag, comb.gpu_values(), comb.cpu_values(), {1e-3, 1e-4, 1e-7}));
    if (n >= 32 && x_dtype == DType::kF32) {  // the GEMM path, the sum of squares by a pass of its own
      static const std::unique_ptr<Backend> pass = [] {
        cuda::CudaBackendOptions o;
        o.hc_fused_sumsq = false;
        return cuda::make_cuda_backend(0, o);
      }();
      pass->hc_pre(p);
      EXPECT_TRUE(compare("hc_pre sumsq pass a" + tag, a.gpu_values(), a.cpu_values(), kBf16Tol));
      EXPECT_TRUE(compare("hc_pre sumsq pass post" + tag, post.gpu_values(), post.cpu_values(), {1e-4, 1e-5, 1e-8}));
      EXPECT_TRUE(compare("hc_pre sumsq pass comb" + tag, comb.gpu_values(), comb.cpu_values(), {1e-3, 1e-4, 1e-7}));
    }

    // hc_post on the same shapes (post/comb taken from the CPU result for both backends).
    Dual o = make_dual({n, hidden}, rng.normals(int64_t(n) * hidden));
    Dual post2 = make_dual({n, hc}, post.cpu_values(), DType::kF32);
    Dual comb2 = make_dual({n, hc, hc}, comb.cpu_values(), DType::kF32);
    Dual xn = make_dual({n, hc, hidden}, std::vector<float>(size_t(n) * hc * hidden, 0.f));
    HcPostParams q;
    q.o = o.cpu; q.x_old = x.cpu; q.post = post2.cpu; q.comb = comb2.cpu; q.x_new = xn.cpu;
    cpu_backend().hc_post(q);
    q.o = o.gpu; q.x_old = x.gpu; q.post = post2.gpu; q.comb = comb2.gpu; q.x_new = xn.gpu;
    gpu_backend().hc_post(q);
    EXPECT_TRUE(compare("hc_post" + tag, xn.gpu_values(), xn.cpu_values(), kBf16Tol));

    DualWeight hfn = upload_f32(rng.normals(int64_t(hc) * hc * hidden, 0.02f, false), hc, hc * hidden);
    DualWeight hbase = upload_f32(rng.normals(hc, 0.5f, false), 1, hc);
    DualWeight hscale = upload_f32({1.1f}, 1, 1);
    Dual y = make_dual({n, hidden}, std::vector<float>(size_t(n) * hidden, 0.f));
    HcHeadParams h;
    h.x = x.cpu; h.fn = hfn.cpu; h.base = hbase.cpu; h.scale = hscale.cpu; h.y = y.cpu;
    cpu_backend().hc_head(h);
    h.x = x.gpu; h.fn = hfn.gpu; h.base = hbase.gpu; h.scale = hscale.gpu; h.y = y.gpu;
    gpu_backend().hc_head(h);
    EXPECT_TRUE(compare("hc_head" + tag, y.gpu_values(), y.cpu_values(), kBf16Tol));
  }
}

// --- compressor ----------------------------------------------------------------------------------

TEST(CudaOps, CompressorPoolCsaAndHca) {
  V4RT_REQUIRE_GPU();
  Rng rng(6);
  struct Case { int ratio, head_dim; bool overlap; int entries; DType dt; };
  for (const Case& c : {Case{4, 512, true, 5, DType::kF32}, Case{4, 128, true, 33, DType::kBF16},
                        Case{128, 512, false, 2, DType::kF32}, Case{128, 96, false, 1, DType::kBF16}}) {
    const int cc = c.overlap ? 2 : 1;
    const int rows = (c.entries + (c.overlap ? 1 : 0)) * c.ratio;
    const int width = cc * c.head_dim;
    std::vector<float> score = rng.normals(int64_t(rows) * width);
    if (c.overlap)  // the block before entry 0 does not exist: -inf scores, weight 0
      for (int r = 0; r < c.ratio; ++r)
        for (int ch = 0; ch < c.head_dim; ++ch) score[size_t(r * width + ch)] = -INFINITY;
    Dual kv = make_dual({rows, width}, rng.normals(int64_t(rows) * width), c.dt);
    Dual sc = make_dual({rows, width}, score, c.dt);
    DualWeight ape = upload_f32(rng.normals(int64_t(c.ratio) * width, 0.5f, false), c.ratio, width);
    Dual out = make_dual({c.entries, c.head_dim}, std::vector<float>(size_t(c.entries) * c.head_dim, 0.f), c.dt);
    CompressorPoolParams p;
    p.ratio = c.ratio; p.head_dim = c.head_dim; p.overlap = c.overlap; p.num_entries = c.entries;
    p.kv = kv.cpu; p.score = sc.cpu; p.ape = ape.cpu; p.out = out.cpu;
    cpu_backend().compressor_pool(p);
    p.kv = kv.gpu; p.score = sc.gpu; p.ape = ape.gpu; p.out = out.gpu;
    gpu_backend().compressor_pool(p);
    EXPECT_TRUE(compare("compressor ratio " + std::to_string(c.ratio) + " d" + std::to_string(c.head_dim),
                        out.gpu_values(), out.cpu_values(), c.dt == DType::kF32 ? Tolerance{2e-5, 1e-6, 1e-10} : kBf16Tol));
  }
}

// A decode batch's pooling in one call: each part a sequence's token rows (rows of one buffer) with
// a ragged number of completed blocks, its entries into its rows of one staged buffer; batches of
// 1 to 800 parts (more than one launch group), CSA and HCA, against the CPU op per part.
TEST(CudaOps, CompressorPoolBatch) {
  V4RT_REQUIRE_GPU();
  Rng rng(61);
  struct Case { int ratio, head_dim; bool overlap; int num_parts; DType dt; };
  for (const Case& c : {Case{4, 128, true, 1, DType::kBF16}, Case{4, 128, true, 3, DType::kF32},
                        Case{4, 128, true, 64, DType::kBF16}, Case{4, 128, true, 300, DType::kBF16},
                        Case{4, 64, true, 800, DType::kBF16}, Case{128, 64, false, 3, DType::kF32},
                        Case{128, 64, false, 64, DType::kBF16}}) {
    const int cc = c.overlap ? 2 : 1;
    const int width = cc * c.head_dim;
    std::vector<int64_t> entries, row0;
    int64_t rows = 0, total = 0;
    for (int i = 0; i < c.num_parts; ++i) {
      entries.push_back(c.num_parts == 1 ? 2 : rng.integer(c.ratio == 4 ? 0 : 1, c.ratio == 4 ? 3 : 1));
      row0.push_back(rows);
      rows += (entries.back() + (c.overlap ? 1 : 0)) * c.ratio + rng.integer(0, c.ratio - 1);  // + an open block
      total += entries.back();
    }
    std::vector<float> score = rng.normals(rows * width);
    if (c.overlap)  // part 0 starts its sequence: no block before its entry 0 (-inf scores, weight 0)
      for (int r = 0; r < c.ratio; ++r)
        for (int ch = 0; ch < width; ++ch) score[size_t(r * width + ch)] = -INFINITY;
    Dual kv = make_dual({rows, width}, rng.normals(rows * width), c.dt);
    Dual sc = make_dual({rows, width}, score, c.dt);
    DualWeight ape = upload_f32(rng.normals(int64_t(c.ratio) * width, 0.5f, false), c.ratio, width);
    Dual out = make_dual({total, c.head_dim}, std::vector<float>(size_t(total) * c.head_dim, 0.f), c.dt);
    auto parts_on = [&](bool gpu) {
      std::vector<CompressorPoolParams> parts;
      int64_t e0 = 0;
      for (int i = 0; i < c.num_parts; ++i) {
        const int64_t end = i + 1 < c.num_parts ? row0[size_t(i) + 1] : rows;
        CompressorPoolParams p;
        p.ratio = c.ratio; p.head_dim = c.head_dim; p.overlap = c.overlap; p.num_entries = entries[size_t(i)];
        p.kv = view_rows(gpu ? kv.gpu : kv.cpu, row0[size_t(i)], end);
        p.score = view_rows(gpu ? sc.gpu : sc.cpu, row0[size_t(i)], end);
        p.ape = gpu ? ape.gpu : ape.cpu;
        p.out = view_rows(gpu ? out.gpu : out.cpu, e0, e0 + p.num_entries);
        e0 += p.num_entries;
        parts.push_back(p);
      }
      return parts;
    };
    const std::vector<CompressorPoolParams> cpu_parts = parts_on(false), gpu_parts = parts_on(true);
    cpu_backend().compressor_pool_batch({cpu_parts.data(), int64_t(cpu_parts.size())});
    gpu_backend().compressor_pool_batch({gpu_parts.data(), int64_t(gpu_parts.size())});
    EXPECT_TRUE(compare("compressor batch of " + std::to_string(c.num_parts) + " ratio " + std::to_string(c.ratio),
                        out.gpu_values(), out.cpu_values(), c.dt == DType::kF32 ? Tolerance{2e-5, 1e-6, 1e-10} : kBf16Tol));
  }
}

// --- indexer, top-k ------------------------------------------------------------------------------

TEST(CudaOps, IndexerScores) {
  V4RT_REQUIRE_GPU();
  Rng rng(7);
  struct Case { int n, heads, keys; int64_t pos0; bool bf16_arith; int h0, h1; };
  for (const Case& c : {Case{1, 64, 1000, 3999, false, 0, -1}, Case{3, 64, 517, 1000, true, 0, -1},
                        Case{5, 64, 300, 1190, false, 16, 48}}) {
    Dual q = make_dual({c.n, c.heads, 128}, rng.normals(int64_t(c.n) * c.heads * 128));
    Dual k = make_dual({c.keys, 128}, rng.normals(int64_t(c.keys) * 128));
    Dual w = make_dual({c.n, c.heads}, rng.normals(int64_t(c.n) * c.heads));
    Dual s = make_dual({c.n, c.keys}, rng.normals(int64_t(c.n) * c.keys), DType::kF32);
    IndexerScoresParams p;
    p.weight_scale = 1.0f / std::sqrt(8192.f);
    p.pos_begin = c.pos0;
    p.bf16_arith = c.bf16_arith;
    p.h_begin = c.h0;
    p.h_end = c.h1;
    p.accumulate = c.h0 > 0;
    p.q = q.cpu; p.keys = k.cpu; p.w = w.cpu; p.scores = s.cpu;
    cpu_backend().indexer_scores(p);
    p.q = q.gpu; p.keys = k.gpu; p.w = w.gpu; p.scores = s.gpu;
    gpu_backend().indexer_scores(p);
    EXPECT_TRUE(compare("indexer n" + std::to_string(c.n) + (c.bf16_arith ? " bf16" : "") + (p.accumulate ? " acc" : ""),
                        s.gpu_values(), s.cpu_values(), c.bf16_arith ? Tolerance{2e-2, 2e-2, 1e-4} : Tolerance{1e-4, 1e-4, 1e-8}));
  }
}

// The official numerics with prefill-sized query counts take indexer_scores_tc_kernel (bf16 tensor
// cores). Its inputs there are FP4-quantized (e2m1 x power of two, exact in bf16), as here; keys
// stored F32 (the model's key table) and bf16; a key sub-range with accumulation over a head
// sub-range; an odd query count (the last block of 4 queries part empty); keys past the causal limit.
TEST(CudaOps, IndexerScoresTensorCores) {
  V4RT_REQUIRE_GPU();
  Rng rng(17);
  auto fp4_values = [&](int64_t cnt) {
    std::vector<float> v(static_cast<size_t>(cnt));
    for (auto& x : v) x = round_fp4(rng.normal(2.f)) * std::ldexp(1.f, int(rng.integer(-3, 1)));
    return v;
  };
  struct Case { int n, heads, dim, keys; int64_t pos0; int64_t k0, k1; int h0, h1; DType key_dtype; };
  for (const Case& c : {Case{37, 64, 128, 1000, 3999, 0, -1, 0, -1, DType::kF32},
                        Case{64, 64, 128, 700, 1000, 100, 650, 16, 48, DType::kBF16},
                        Case{300, 16, 64, 513, 2000, 0, -1, 0, -1, DType::kF32}}) {
    const int64_t kend = c.k1 < 0 ? c.keys : c.k1, cols = kend - c.k0;
    Dual q = make_dual({c.n, c.heads, c.dim}, fp4_values(int64_t(c.n) * c.heads * c.dim));
    Dual k = make_dual({c.keys, c.dim}, fp4_values(int64_t(c.keys) * c.dim), c.key_dtype);
    Dual w = make_dual({c.n, c.heads}, rng.normals(int64_t(c.n) * c.heads));
    Dual s = make_dual({c.n, cols}, rng.normals(int64_t(c.n) * cols), DType::kF32);
    IndexerScoresParams p;
    p.weight_scale = 1.0f / std::sqrt(8192.f);
    p.pos_begin = c.pos0;
    p.bf16_arith = true;
    p.key_begin = c.k0;
    p.key_end = c.k1;
    p.h_begin = c.h0;
    p.h_end = c.h1;
    p.accumulate = c.h0 > 0;
    p.q = q.cpu; p.keys = k.cpu; p.w = w.cpu; p.scores = s.cpu;
    cpu_backend().indexer_scores(p);
    p.q = q.gpu; p.keys = k.gpu; p.w = w.gpu; p.scores = s.gpu;
    gpu_backend().indexer_scores(p);
    EXPECT_TRUE(compare("indexer tc n" + std::to_string(c.n) + " heads " + std::to_string(c.heads) + " d" +
                            std::to_string(c.dim) + (p.accumulate ? " acc" : ""),
                        s.gpu_values(), s.cpu_values(), {2e-2, 2e-2, 1e-4}));
  }
}

TEST(CudaOps, TopkTiesNonFiniteAndShortRows) {
  V4RT_REQUIRE_GPU();
  Rng rng(8);
  struct Case { int rows, cols, k; };
  for (const Case& c : {Case{4, 100, 1}, Case{3, 5000, 64}, Case{2, 70000, 512}, Case{2, 3001, 1024}, Case{3, 600, 1024}}) {
    std::vector<float> s(size_t(c.rows) * c.cols);
    for (auto& v : s) v = round_bf16(float(rng.integer(-300, 300)) / 64.f);  // coarse: many ties
    for (int r = 0; r < c.rows; ++r) {
      s[size_t(r) * c.cols + size_t(rng.integer(0, c.cols - 1))] = NAN;
      for (int i = 0; i < c.cols / 10; ++i) s[size_t(r) * c.cols + size_t(rng.integer(0, c.cols - 1))] = -INFINITY;
      s[size_t(r) * c.cols] = -0.0f;
    }
    Dual sc = make_dual({c.rows, c.cols}, s, DType::kF32);
    Dual idx = make_dual_i32({c.rows, c.k}, std::vector<int32_t>(size_t(c.rows) * c.k, 7));
    Dual val = make_dual({c.rows, c.k}, std::vector<float>(size_t(c.rows) * c.k, 0.f), DType::kF32);
    TopkParams p;
    p.k = c.k;
    p.index_offset = 11;
    p.scores = sc.cpu; p.out_idx = idx.cpu; p.out_values = val.cpu;
    cpu_backend().topk(p);
    p.scores = sc.gpu; p.out_idx = idx.gpu; p.out_values = val.gpu;
    gpu_backend().topk(p);
    const auto gi = gpu_i32(idx), ci = cpu_i32(idx);
    int64_t mismatches = 0;
    for (size_t i = 0; i < gi.size(); ++i) mismatches += gi[i] != ci[i];
    std::printf("[compare] topk %dx%d k=%d index mismatches=%lld\n", c.rows, c.cols, c.k, static_cast<long long>(mismatches));
    EXPECT_EQ(mismatches, 0) << "topk " << c.rows << "x" << c.cols << " k=" << c.k;
    EXPECT_TRUE(compare("topk values", val.gpu_values(), val.cpu_values(), {0, 0, 0}));
  }
}

// --- sparse attention ----------------------------------------------------------------------------

struct AttnCase {
  const char* name;
  int n, heads, dim;
  int64_t pos0;
  int win_rows;
  int64_t win_pos0;
  int num_comp;
  int list_len;   // > 0: explicit candidate lists; 0: all visible (comp_ratio)
  int comp_ratio;
  bool bf16_probs;
  int h0, h1;
};

// `rows`: the GPU dtype of q and the window rows (the model keeps both in F32).
void run_attention(const AttnCase& c, Rng& rng, DType rows = DType::kBF16) {
  Dual q = make_dual({c.n, c.heads, c.dim}, rng.normals(int64_t(c.n) * c.heads * c.dim, 0.3f), rows);
  Dual win = make_dual({c.win_rows, c.dim}, rng.normals(int64_t(c.win_rows) * c.dim), rows);
  Dual comp = make_dual({std::max(c.num_comp, 1), c.dim}, rng.normals(int64_t(std::max(c.num_comp, 1)) * c.dim));
  std::vector<int32_t> list(static_cast<size_t>(c.n) * size_t(std::max(c.list_len, 1)));
  for (auto& v : list) v = rng.integer(0, 9) == 0 ? -1 : int32_t(rng.integer(0, c.num_comp - 1));
  Dual idx = make_dual_i32({c.n, std::max(c.list_len, 1)}, list);
  DualWeight sink = upload_f32(rng.normals(c.heads, 1.f, false), 1, c.heads);
  Dual out = make_dual({c.n, c.heads, c.dim}, std::vector<float>(size_t(c.n) * c.heads * c.dim, 0.f));
  Dual lse = make_dual({c.n, c.heads}, std::vector<float>(size_t(c.n) * c.heads, 0.f), DType::kF32);
  SparseAttentionParams p;
  p.pos_begin = c.pos0;
  p.window_pos0 = c.win_pos0;
  p.window = 128;
  p.comp_ratio = c.comp_ratio;
  p.softmax_scale = 1.0f / std::sqrt(512.f);
  p.bf16_probs = c.bf16_probs;
  p.h_begin = c.h0;
  p.h_end = c.h1;
  p.q = q.cpu; p.window_kv = win.cpu; p.comp_kv = c.num_comp ? comp.cpu : TensorView{};
  p.comp_idx = c.list_len ? idx.cpu : TensorView{}; p.sink = sink.cpu; p.out = out.cpu; p.lse = lse.cpu;
  cpu_backend().sparse_attention(p);
  p.q = q.gpu; p.window_kv = win.gpu; p.comp_kv = c.num_comp ? comp.gpu : TensorView{};
  p.comp_idx = c.list_len ? idx.gpu : TensorView{}; p.sink = sink.gpu; p.out = out.gpu; p.lse = lse.gpu;
  gpu_backend().sparse_attention(p);
  EXPECT_TRUE(compare(std::string("attention ") + c.name, out.gpu_values(), out.cpu_values(), kBf16Tol));
  EXPECT_TRUE(compare(std::string("attention lse ") + c.name, lse.gpu_values(), lse.cpu_values(), {1e-5, 1e-5, 1e-9}));
}

TEST(CudaOps, SparseAttentionDecodeAndPrefill) {
  V4RT_REQUIRE_GPU();
  Rng rng(9);
  const AttnCase cases[] = {
      {"decode csa", 1, 64, 512, 300, 128, 173, 100, 77, 0, false, 0, -1},
      {"decode hca", 1, 16, 512, 5000, 128, 4873, 39, 0, 128, false, 0, -1},
      {"decode window-only", 1, 8, 512, 50, 51, 0, 0, 0, 0, true, 0, -1},
      {"decode csa heads [16,48) bf16 P", 1, 64, 512, 300, 128, 173, 100, 77, 0, true, 16, 48},
      {"decode hca 9000 entries (3 tiles per split)", 1, 64, 512, 1160000, 128, 1160000 - 127, 9000, 0, 128, false, 0, -1},
      {"prefill csa", 70, 8, 512, 0, 70, 0, 17, 17, 0, false, 0, -1},
      {"prefill hca odd", 140, 5, 96, 200, 340, 0, 2, 0, 128, true, 1, 4},
  };
  for (const AttnCase& c : cases) run_attention(c, rng);
}

// Prefill shapes of the official numerics (bf16 P, head_dim % 128 == 0, enough tokens to fill the
// SMs): sparse_attention_tc_kernel. Window rows missing below window_pos0 (a chunk boundary),
// lists with -1 entries (fewer candidates than top-k), tokens with fewer than 64 candidates, a
// head sub-range smaller than the 64-head block, 128 heads (two head blocks), positions past 65,536.
TEST(CudaOps, SparseAttentionPrefillTensorCores) {
  V4RT_REQUIRE_GPU();
  Rng rng(19);
  const AttnCase cases[] = {
      {"tc prefill csa, window cut at a chunk boundary", 200, 64, 512, 1000, 200 + 127, 1000 - 127, 300, 77, 0, true, 0, -1},
      {"tc prefill hca past 65536", 150, 64, 512, 70000, 150 + 127, 70000 - 127, 548, 0, 128, true, 0, -1},
      {"tc prefill window-only heads [3,13) d128", 600, 16, 128, 0, 600, 0, 0, 0, 0, true, 3, 13},
      {"tc prefill csa 128 heads across 65536", 40, 128, 512, 65530, 40 + 127, 65530 - 127, 2000, 200, 0, true, 0, -1},
  };
  for (const AttnCase& c : cases) run_attention(c, rng);
}

// The same kernel over F32 q and window rows, as the model holds them (rounded to bf16 as they
// load), against the CPU op on the F32 values.
TEST(CudaOps, SparseAttentionPrefillTensorCoresF32Rows) {
  V4RT_REQUIRE_GPU();
  Rng rng(23);
  const AttnCase cases[] = {
      {"tc prefill csa f32 rows", 200, 64, 512, 1000, 200 + 127, 1000 - 127, 300, 77, 0, true, 0, -1},
      {"tc prefill hca f32 rows past 65536", 150, 64, 512, 70000, 150 + 127, 70000 - 127, 548, 0, 128, true, 0, -1},
  };
  for (const AttnCase& c : cases) run_attention(c, rng, DType::kF32);
}

// --- batched indexer scores and sparse attention (a decode batch) -------------------------------

// Batches of 1, 3, 64 and 300 sequences (300: more parts than one launch's parameters hold, so two
// groups) in one indexer_scores_batch, every sequence's scores in its rows of one buffer filled
// with -inf, against the CPU op per sequence. Sequences of 1 or 2 query rows with 1 .. 700 keys
// taken from one key table at different offsets, plain or compact FP4; the batch of 1 has 20 rows
// (under bf16_arith: the tensor-core kernel).
TEST(CudaOps, IndexerScoresBatch) {
  V4RT_REQUIRE_GPU();
  Rng rng(21);
  const int heads = 64, dim = 128, table = 1500;
  const KvRowLayout fp4 = fp4_kv_layout(dim);
  Dual keys = make_dual({table, dim}, rng.normals(int64_t(table) * dim));
  DualRows ckeys = dual_compact_rows(fp4, table, rng);
  for (auto [num_parts, bf16_arith] : {std::pair{1, true}, {3, false}, {64, true}, {300, true}, {300, false}}) {
    std::vector<int64_t> rows(static_cast<size_t>(num_parts)), nkeys(rows), row0(rows);
    int64_t total = 0, max_keys = 0;
    for (int i = 0; i < num_parts; ++i) {
      rows[size_t(i)] = num_parts == 1 ? 20 : 1 + (i % 5 == 2);
      nkeys[size_t(i)] = 1 + (int64_t(i) * 337 + 90) % 700;
      row0[size_t(i)] = total;
      total += rows[size_t(i)];
      max_keys = std::max(max_keys, nkeys[size_t(i)]);
    }
    Dual q = make_dual({total, heads, dim}, rng.normals(total * heads * dim));
    Dual w = make_dual({total, heads}, rng.normals(total * heads));
    Dual s = make_dual({total, max_keys}, std::vector<float>(size_t(total * max_keys), -INFINITY), DType::kF32);
    auto part = [&](int i, bool gpu) {
      const int64_t r0 = row0[size_t(i)], r1 = r0 + rows[size_t(i)], k0 = (int64_t(i) * 53) % (table - 700);
      IndexerScoresParams p;
      p.q = view_rows(gpu ? q.gpu : q.cpu, r0, r1);
      if (i % 3 == 1) {
        p.keys = view_rows(gpu ? ckeys.gpu : ckeys.cpu, k0, k0 + nkeys[size_t(i)]);
        p.key_layout = fp4;
      } else {
        p.keys = view_rows(gpu ? keys.gpu : keys.cpu, k0, k0 + nkeys[size_t(i)]);
      }
      p.w = view_rows(gpu ? w.gpu : w.cpu, r0, r1);
      p.scores = view_cols(view_rows(gpu ? s.gpu : s.cpu, r0, r1), 0, nkeys[size_t(i)]);
      p.weight_scale = 1.0f / std::sqrt(8192.f);
      p.pos_begin = std::max<int64_t>(0, 4 * nkeys[size_t(i)] - 1 - (i % 4) * 9);  // some keys not yet visible
      p.bf16_arith = bf16_arith;
      return p;
    };
    std::vector<IndexerScoresParams> parts;
    for (int i = 0; i < num_parts; ++i) cpu_backend().indexer_scores(part(i, false));
    for (int i = 0; i < num_parts; ++i) parts.push_back(part(i, true));
    gpu_backend().indexer_scores_batch({parts.data(), int64_t(parts.size())});
    EXPECT_TRUE(compare("indexer batch of " + std::to_string(num_parts) + (bf16_arith ? " bf16" : ""), s.gpu_values(),
                        s.cpu_values(), bf16_arith ? Tolerance{2e-2, 2e-2, 1e-4} : Tolerance{1e-4, 1e-4, 1e-8}));
  }
}

// Prefill-shaped calls of indexer_scores_tc_kernel (queries stationary in blocks of 4, keys
// streamed in tiles of 64, split over blocks when the queries are few) against the CUDA-core
// kernel (a backend with indexer_tensor_cores off) bit for bit, and against the CPU op. FP4 values
// at close scales: every dot is exact in fp32 whatever the order, so the two kernels must agree
// on every bit. Cases: 600 queries x 3000 F32 keys with the last keys visible to no query (whole
// tiles skipped, -inf) and tiles that some queries see; a first chunk (pos 0, 517 queries: the
// last block part empty) where most blocks see a few keys; heads [8, 45) of 64 with accumulation
// over a key sub-range of bf16 rows (cp.async path; an m16 head tile partly past nh, one wholly
// past it); compact FP4 keys contiguous and paged through a block table (16-row blocks in reverse
// order in a pool of 0xA5 bytes); head dim 64; 65,537 queries (16,385 blocks on x) of 4 heads.
// Long FP4 key ranges (the raw rows of tile i + 2 in flight during tile i): 64 queries x 20,000
// keys paged and contiguous, a sub-range with accumulation over heads [8, 45) and 67 queries, key
// ranges of one, two and three tiles (the prologue alone, with one fetch, one steady step), and
// head dim 64.
// Every case with compact FP4 keys also runs the FP8 wgmma kernel (indexer_fp8.cu, the default for
// them): against the CPU op within the bf16 kernel's tolerance, and its scores that differ in bits
// from the bf16 kernel's counted (the FP8 accumulation and the per-quad head sum, see the kernel).
// FP8-only cases: 65,537 queries of 4 heads at dim 64 (16,385 blocks on x), and q whose 32-blocks
// are 0, 4, 8 and 12 binades apart (plus each value's own 4): past the 13 binades the e4m3
// rescaling of a row keeps exact, the smallest values round. The FP8 kernel runs twice: on keys
// decoded once per launch (the default) and with each block decoding its tiles
// (indexer_predecode off); the two must agree on every bit. And with the head terms summed by fp32
// adds per thread (indexer_head_sum_mma off) instead of on the tensor cores: both within the
// tolerance of the CPU op, the scores that differ in bits counted.
TEST(CudaOps, IndexerScoresTensorCoresPrefill) {
  V4RT_REQUIRE_GPU();
  Rng rng(29);
  cuda::CudaBackendOptions simt_options, bf16_options, in_block_options, add_sum_options;
  simt_options.indexer_tensor_cores = false;
  bf16_options.indexer_fp8 = false;
  in_block_options.indexer_predecode = false;
  add_sum_options.indexer_head_sum_mma = false;
  auto simt = cuda::make_cuda_backend(0, simt_options);
  auto bf16tc = cuda::make_cuda_backend(0, bf16_options);
  auto fp8 = cuda::make_cuda_backend(0, cuda::CudaBackendOptions{});
  auto fp8_in_block = cuda::make_cuda_backend(0, in_block_options);
  auto fp8_add_sum = cuda::make_cuda_backend(0, add_sum_options);
  int spread = 0;  // binades q's 32-blocks span beyond fp4_values' own (FP8-only case)
  auto fp4_values = [&](int64_t cnt) {
    std::vector<float> v(static_cast<size_t>(cnt));
    for (size_t i = 0; i < v.size(); ++i) {
      const int block_shift = spread ? -int((i / 32) % 4) * spread / 3 : 0;
      v[i] = round_fp4(rng.normal(2.f)) * std::ldexp(1.f, int(rng.integer(-3, 1)) + block_shift);
    }
    return v;
  };
  enum class Keys { kF32, kBF16, kFp4, kFp4Paged };
  struct Case { const char* name; int n, heads, dim, keys; int64_t pos0, k0, k1; int h0, h1; Keys kind; };
  for (const Case& c : {Case{"600x3000 masked tail", 600, 64, 128, 3000, 9000, 0, -1, 0, -1, Keys::kF32},
                        Case{"first chunk 517x130", 517, 64, 128, 130, 0, 0, -1, 0, -1, Keys::kF32},
                        Case{"heads [8,45) keys [100,2900) acc", 300, 64, 128, 3000, 8000, 100, 2900, 8, 45, Keys::kBF16},
                        Case{"fp4 keys", 200, 64, 128, 1500, 5000, 0, -1, 0, -1, Keys::kFp4},
                        Case{"fp4 keys paged, from 37", 200, 64, 128, 1500, 5000, 37, -1, 0, -1, Keys::kFp4Paged},
                        Case{"dim 64, 16 heads", 333, 16, 64, 900, 3000, 0, -1, 0, -1, Keys::kF32},
                        Case{"65537 queries, 4 heads, dim 32", 65537, 4, 32, 40, 70000, 0, -1, 0, -1, Keys::kF32},
                        Case{"64x20000 fp4 paged", 64, 64, 128, 20000, 79960, 0, -1, 0, -1, Keys::kFp4Paged},
                        Case{"64x20000 fp4", 64, 64, 128, 20000, 79960, 0, -1, 0, -1, Keys::kFp4},
                        Case{"67 queries, keys [37,19990), heads [8,45) acc, fp4 paged", 67, 64, 128, 20000, 79900, 37,
                             19990, 8, 45, Keys::kFp4Paged},
                        Case{"one fp4 tile", 20, 64, 128, 50, 190, 0, -1, 0, -1, Keys::kFp4Paged},
                        Case{"two fp4 tiles", 20, 64, 128, 128, 500, 0, -1, 0, -1, Keys::kFp4Paged},
                        Case{"three fp4 tiles, masked", 33, 64, 128, 190, 640, 0, -1, 0, -1, Keys::kFp4Paged},
                        Case{"dim 64, 16 heads, 5000 fp4 keys", 48, 16, 64, 5000, 19980, 0, -1, 0, -1, Keys::kFp4Paged},
                        Case{"fp8 only: 65537 queries, 4 heads, dim 64, fp4", 65537, 4, 64, 40, 70000, 0, -1, 0, -1, Keys::kFp4},
                        Case{"fp8 only: q blocks over 12 binades", 130, 64, 128, 3000, 12000, 0, -1, 0, -1, Keys::kFp4}}) {
    SCOPED_TRACE(c.name);
    const bool fp8_only = std::string(c.name).rfind("fp8 only", 0) == 0;
    spread = std::string(c.name).find("binades") != std::string::npos ? 12 : 0;
    const int64_t kend = c.k1 < 0 ? c.keys : c.k1, cols = kend - c.k0;
    const bool compact = c.kind == Keys::kFp4 || c.kind == Keys::kFp4Paged;
    const KvRowLayout fp4 = fp4_kv_layout(c.dim);
    Dual q = make_dual({c.n, c.heads, c.dim}, fp4_values(int64_t(c.n) * c.heads * c.dim));
    Dual w = make_dual({c.n, c.heads}, rng.normals(int64_t(c.n) * c.heads));
    const std::vector<float> init = rng.normals(int64_t(c.n) * cols);
    Dual s_tc = make_dual({c.n, cols}, init, DType::kF32), s_simt = make_dual({c.n, cols}, init, DType::kF32);
    Dual k = make_dual({c.keys, c.dim}, fp4_values(int64_t(c.keys) * c.dim), c.kind == Keys::kBF16 ? DType::kBF16 : DType::kF32);
    DualRows ck;
    if (compact) ck = dual_compact_rows(fp4, c.keys, rng);
    PagedRows paged;
    if (c.kind == Keys::kFp4Paged) paged = page_rows_reversed(ck.bytes, c.keys, fp4.row_bytes);
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
      if (compact) {
        p.key_layout = fp4;
        p.keys = gpu ? (c.kind == Keys::kFp4Paged ? paged.view : ck.gpu) : ck.cpu;
        if (gpu && c.kind == Keys::kFp4Paged) p.key_blocks = paged.blocks;
      } else {
        p.keys = gpu ? k.gpu : k.cpu;
      }
      return p;
    };
    auto count_differ = [](const std::vector<float>& x, const std::vector<float>& y) {
      int64_t differ = 0;
      for (size_t i = 0; i < x.size(); ++i) differ += std::memcmp(&x[i], &y[i], 4) != 0;
      return differ;
    };
    // The same call into bf16 scores (not accumulated: the official numerics' scores are bf16
    // values): the F32 scores' values bit for bit.
    auto bf16_scores_equal = [&](Backend& be, const std::vector<float>& f32, const char* what) {
      if (c.h0 > 0) return;
      Dual sb = make_dual({c.n, cols}, init, DType::kBF16);
      be.indexer_scores(params(true, sb));
      be.synchronize();
      const std::vector<float> b = sb.gpu_values();
      int64_t differ = 0;
      for (size_t i = 0; i < b.size(); ++i) {
        const float want = round_bf16(f32[i]);
        differ += std::memcmp(&b[i], &want, 4) != 0;
      }
      std::printf("[compare] indexer %s %s: %lld bf16 scores differ from the F32 ones\n", what, c.name,
                  static_cast<long long>(differ));
      EXPECT_EQ(differ, 0) << what << " " << c.name;
    };
    cpu_backend().indexer_scores(params(false, s_tc));
    bf16tc->indexer_scores(params(true, s_tc));
    bf16tc->synchronize();
    const std::vector<float> tc = s_tc.gpu_values();
    bf16_scores_equal(*bf16tc, tc, "tc prefill");
    if (!fp8_only) {
      simt->indexer_scores(params(true, s_simt));
      simt->synchronize();
      const int64_t differ = count_differ(tc, s_simt.gpu_values());
      std::printf("[compare] indexer tc prefill %s: %lld of %zu scores differ from the CUDA-core kernel\n", c.name,
                  static_cast<long long>(differ), tc.size());
      EXPECT_EQ(differ, 0) << c.name;
      EXPECT_TRUE(compare(std::string("indexer tc prefill ") + c.name, tc, s_tc.cpu_values(), {2e-2, 2e-2, 1e-4}));
      bf16_scores_equal(*simt, s_simt.gpu_values(), "cuda cores");
    }
    if (compact) {
      Dual s_f8 = make_dual({c.n, cols}, init, DType::kF32);
      fp8->indexer_scores(params(true, s_f8));
      fp8->synchronize();
      const std::vector<float> f8 = s_f8.gpu_values();
      const int64_t differ = count_differ(f8, tc);
      std::printf("[compare] indexer fp8 prefill %s: %lld of %zu scores differ from the bf16 kernel\n", c.name,
                  static_cast<long long>(differ), f8.size());
      EXPECT_TRUE(compare(std::string("indexer fp8 prefill ") + c.name, f8, s_tc.cpu_values(), {2e-2, 2e-2, 1e-4}));
      bf16_scores_equal(*fp8, f8, "fp8 prefill");
      Dual s_blk = make_dual({c.n, cols}, init, DType::kF32);
      fp8_in_block->indexer_scores(params(true, s_blk));
      fp8_in_block->synchronize();
      const int64_t blk_differ = count_differ(f8, s_blk.gpu_values());
      std::printf("[compare] indexer fp8 prefill %s: %lld scores differ between pre-decoded and in-block keys\n",
                  c.name, static_cast<long long>(blk_differ));
      EXPECT_EQ(blk_differ, 0) << c.name;
      Dual s_add = make_dual({c.n, cols}, init, DType::kF32);
      fp8_add_sum->indexer_scores(params(true, s_add));
      fp8_add_sum->synchronize();
      const std::vector<float> add = s_add.gpu_values();
      std::printf("[compare] indexer fp8 prefill %s: %lld scores differ between head sums on the tensor cores and "
                  "by fp32 adds\n", c.name, static_cast<long long>(count_differ(f8, add)));
      EXPECT_TRUE(compare(std::string("indexer fp8 prefill, fp32-add head sums ") + c.name, add, s_tc.cpu_values(),
                          {2e-2, 2e-2, 1e-4}));
    }
  }
}

// Batches of 1, 3, 64 and 300 sequences (three groups of parts) in one sparse_attention_batch, each
// writing its rows of shared q / out / lse buffers, against the CPU op per sequence (tolerances of
// SparseAttentionDecodeAndPrefill). Sequences cycle through: window rows only with a window not
// yet full; a candidate list padded with -1 to the batch's longest (fewer candidates than top-k);
// compact kFp8Rope entries with a list; every visible entry (comp_ratio). Window rows are views at
// different offsets of one table. Each batch runs twice: with the decode tensor-core kernels off
// (batch sizes take the decode multi-query kernel with splits (1, 3), the per-warp kernel (64; 300
// without bf16 P) and the tensor-core kernel (300 with bf16 P)) and on (the default: bf16 P on the
// tensor-core kernel, split over the candidates for 1 and 3; each split rounds P against its own
// running max, hence kSplitTol).
TEST(CudaOps, SparseAttentionBatch) {
  V4RT_REQUIRE_GPU();
  Rng rng(23);
  const int heads = 64, dim = 512, window = 128, num_comp = 900, kmax = 160, win_table = 4000;
  const KvRowLayout fp8 = fp8_rope_kv_layout(dim, 64);
  Dual win = make_dual({win_table, dim}, rng.normals(int64_t(win_table) * dim));
  Dual comp = make_dual({num_comp, dim}, rng.normals(int64_t(num_comp) * dim));
  DualRows ccomp = dual_compact_rows(fp8, num_comp, rng);
  DualWeight sink = upload_f32(rng.normals(heads, 1.f, false), 1, heads);
  cuda::CudaBackendOptions no_tc_options;
  no_tc_options.decode_tensor_cores = false;
  auto no_tc = cuda::make_cuda_backend(0, no_tc_options);
  auto tc = cuda::make_cuda_backend(0, cuda::CudaBackendOptions{});  // decode tensor cores: the default
  for (auto [num_parts, bf16_probs] : {std::pair{1, true}, {3, true}, {64, true}, {300, true}, {300, false}}) {
    std::vector<int64_t> rows(static_cast<size_t>(num_parts)), row0(rows);
    int64_t total = 0;
    for (int i = 0; i < num_parts; ++i) {
      rows[size_t(i)] = 1 + (num_parts == 3 && i == 1) * 4;  // one prefill-like part of 5 rows
      row0[size_t(i)] = total;
      total += rows[size_t(i)];
    }
    std::vector<int32_t> lists(size_t(total * kmax), -1);
    for (int64_t r = 0; r < total; ++r)
      for (int c = 0; c < kmax - int(r % 7) * 20; ++c)
        lists[size_t(r * kmax + c)] = rng.integer(0, 9) == 0 ? -1 : int32_t(rng.integer(0, num_comp - 1));
    Dual idx = make_dual_i32({total, kmax}, lists);
    Dual q = make_dual({total, heads, dim}, rng.normals(total * heads * dim, 0.3f));
    Dual out = make_dual({total, heads, dim}, std::vector<float>(size_t(total * heads * dim), 0.f));
    Dual lse = make_dual({total, heads}, std::vector<float>(size_t(total * heads), 0.f), DType::kF32);
    auto part = [&](int i, bool gpu) {
      const int64_t r0 = row0[size_t(i)], r1 = r0 + rows[size_t(i)];
      const int kind = i % 4;
      SparseAttentionParams p;
      p.pos_begin = kind == 0 ? (i * 7) % (window - 5) : 1000 + int64_t(i) * 131;
      p.window = window;
      const int64_t first = std::max<int64_t>(0, p.pos_begin - window + 1);
      p.window_pos0 = first;
      const int64_t wrows = p.pos_begin + rows[size_t(i)] - first, w0 = (int64_t(i) * 11) % (win_table - wrows);
      p.window_kv = view_rows(gpu ? win.gpu : win.cpu, w0, w0 + wrows);
      if (kind == 1 || kind == 3) p.comp_kv = gpu ? comp.gpu : comp.cpu;
      if (kind == 2) {
        p.comp_kv = gpu ? ccomp.gpu : ccomp.cpu;
        p.comp_layout = fp8;
      }
      if (kind == 1 || kind == 2) p.comp_idx = view_rows(gpu ? idx.gpu : idx.cpu, r0, r1);
      if (kind == 3) p.comp_ratio = 4;
      p.sink = gpu ? sink.gpu : sink.cpu;
      p.q = view_rows(gpu ? q.gpu : q.cpu, r0, r1);
      p.out = view_rows(gpu ? out.gpu : out.cpu, r0, r1);
      p.lse = view_rows(gpu ? lse.gpu : lse.cpu, r0, r1);
      p.softmax_scale = 1.0f / std::sqrt(float(dim));
      p.bf16_probs = bf16_probs;
      return p;
    };
    std::vector<SparseAttentionParams> parts;
    for (int i = 0; i < num_parts; ++i) cpu_backend().sparse_attention(part(i, false));
    for (int i = 0; i < num_parts; ++i) parts.push_back(part(i, true));
    for (const bool decode_tc : {false, true}) {
      Backend& be = decode_tc ? *tc : *no_tc;
      be.sparse_attention_batch({parts.data(), int64_t(parts.size())});
      be.synchronize();
      const std::string name = "attention batch of " + std::to_string(num_parts) + (bf16_probs ? " bf16 P" : "") +
                               (decode_tc ? ", decode tensor cores" : "");
      const Tolerance tol = decode_tc && bf16_probs ? kSplitTol : kBf16Tol;
      EXPECT_TRUE(compare(name, out.gpu_values(), out.cpu_values(), tol));
      EXPECT_TRUE(compare(name + " lse", lse.gpu_values(), lse.cpu_values(), {1e-5, 1e-5, 1e-9}));
    }
  }
}

// --- elementwise ---------------------------------------------------------------------------------

TEST(CudaOps, SwigluAddEmbedding) {
  V4RT_REQUIRE_GPU();
  Rng rng(10);
  const int n = 5, inter = 300;
  Dual g = make_dual({n, inter}, rng.normals(n * inter, 6.f));
  Dual u = make_dual({n, inter}, rng.normals(n * inter, 6.f));
  Dual rw = make_dual({n}, rng.normals(n, 1.f, false), DType::kF32);
  Dual h = make_dual({n, inter}, std::vector<float>(size_t(n) * inter, 0.f));
  SwigluParams p;
  p.limit = 10.f;
  p.gate = g.cpu; p.up = u.cpu; p.h = h.cpu; p.row_weight = rw.cpu;
  cpu_backend().swiglu(p);
  p.gate = g.gpu; p.up = u.gpu; p.h = h.gpu; p.row_weight = rw.gpu;
  gpu_backend().swiglu(p);
  EXPECT_TRUE(compare("swiglu clamp + row weight", h.gpu_values(), h.cpu_values(), kBf16Tol));

  Dual a = make_dual({n, inter}, rng.normals(n * inter));
  Dual b = make_dual({n, inter}, rng.normals(n * inter));
  Dual o = make_dual({n, inter}, std::vector<float>(size_t(n) * inter, 0.f));
  AddParams ap;
  ap.a = a.cpu; ap.b = b.cpu; ap.out = o.cpu;
  cpu_backend().add(ap);
  ap.a = a.gpu; ap.b = b.gpu; ap.out = o.gpu;
  gpu_backend().add(ap);
  EXPECT_TRUE(compare("add", o.gpu_values(), o.cpu_values(), kBf16Tol));

  const int vocab = 1000, hidden = 256;
  DualWeight table = upload_f32(rng.normals(int64_t(vocab) * hidden), vocab, hidden, DType::kBF16);
  Dual ids = make_dual_i32({7}, {0, 999, 5, 5, 123, 1, 998});
  Dual e = make_dual({7, 4, hidden}, std::vector<float>(size_t(7) * 4 * hidden, 0.f));
  EmbeddingParams ep;
  ep.table = table.cpu; ep.ids = ids.cpu; ep.out = e.cpu;
  cpu_backend().embedding(ep);
  ep.table = table.gpu; ep.ids = ids.gpu; ep.out = e.gpu;
  gpu_backend().embedding(ep);
  EXPECT_TRUE(compare("embedding x4 replicas", e.gpu_values(), e.cpu_values(), {0, 0, 0}));
}

TEST(CudaOps, QuantizeDequantizeExact) {
  V4RT_REQUIRE_GPU();
  Rng rng(11);
  struct Case { QdqFormat f; int block, cols; const char* name; };
  for (const Case& c : {Case{QdqFormat::kFp8E4M3, 64, 448, "fp8 block64"}, Case{QdqFormat::kFp8E4M3, 128, 512, "fp8 block128"},
                        Case{QdqFormat::kFp4E2M1, 32, 128, "fp4 block32"}, Case{QdqFormat::kBf16, 1, 300, "bf16"}}) {
    std::vector<float> v = rng.normals(9 * c.cols, 3.f, c.f != QdqFormat::kBf16);
    v[5] = 0.f;
    v[70] = 1e-7f;
    Dual x = make_dual({9, c.cols}, v, DType::kF32);
    QdqParams p;
    p.format = c.f;
    p.block = c.block;
    p.x = x.cpu;
    cpu_backend().qdq(p);
    p.x = x.gpu;
    gpu_backend().qdq(p);
    EXPECT_TRUE(compare(std::string("qdq ") + c.name, x.gpu_values(), x.cpu_values(), {0, 0, 0}));
  }
}

// --- batched row copies --------------------------------------------------------------------------

// copy_rows_batch on the device against the CPU reference, byte for byte: every dtype, column
// slices of wider tables (16-, 8-, 4-, 2- and 1-byte aligned), zero-row copies, a copy over many
// blocks and more copies than one launch's group (640). Untouched bytes around the destinations
// must stay as they were.
TEST(CudaOps, CopyRowsBatchExact) {
  V4RT_REQUIRE_GPU();
  (void)gpu_backend();  // installs the device allocator before the first device Buffer below
  struct Case {
    DType dtype;
    int64_t rows, src_width, src_col, dst_width, dst_col, cols;
  };
  std::vector<Case> cases = {
      {DType::kF32, 127, 512, 0, 512, 0, 512},  {DType::kBF16, 1, 520, 4, 512, 0, 512},
      {DType::kF32, 3, 13, 2, 9, 1, 6},         {DType::kBF16, 37, 9, 1, 11, 5, 6},
      {DType::kF32, 4, 10, 2, 12, 4, 6},
      {DType::kU8, 3, 23, 5, 31, 7, 17},        {DType::kU8, 2, 584, 0, 600, 3, 584},
      {DType::kI32, 0, 4, 0, 4, 0, 4},          {DType::kI32, 9, 6, 1, 3, 0, 3},
      {DType::kF32, 6000, 128, 0, 160, 32, 128},  // 3 MB over 188 blocks
  };
  Rng rng(41);
  for (int i = 0; i < 1300; ++i) cases.push_back({DType::kF32, rng.integer(0, 2), 512, 0, 512, 0, 512});
  std::vector<Buffer> cpu_dst, gpu_dst, cpu_src, gpu_src;
  std::vector<RowCopy> cpu_copies, gpu_copies;
  for (const Case& c : cases) {
    const size_t es = dtype_size(c.dtype);
    std::vector<uint8_t> src(size_t(c.rows * c.src_width) * es + 1), dst(size_t(c.rows * c.dst_width) * es + 1);
    for (uint8_t& b : src) b = uint8_t(rng.integer(0, 255));
    for (uint8_t& b : dst) b = uint8_t(rng.integer(0, 255));
    cpu_src.emplace_back(src.size(), Device::kHost);
    cpu_dst.emplace_back(dst.size(), Device::kHost);
    gpu_src.emplace_back(src.size(), Device::kCuda);
    gpu_dst.emplace_back(dst.size(), Device::kCuda);
    std::memcpy(cpu_src.back().data(), src.data(), src.size());
    std::memcpy(cpu_dst.back().data(), dst.data(), dst.size());
    gpu_backend().copy_to_device(gpu_src.back().data(), src.data(), src.size());
    gpu_backend().copy_to_device(gpu_dst.back().data(), dst.data(), dst.size());
    auto cols = [&](Buffer& buf, int64_t width, int64_t col, Device dev) {
      return view_cols(make_view(buf.data(), c.dtype, {c.rows, width}, dev), col, col + c.cols);
    };
    cpu_copies.push_back({cols(cpu_dst.back(), c.dst_width, c.dst_col, Device::kHost),
                          cols(cpu_src.back(), c.src_width, c.src_col, Device::kHost)});
    gpu_copies.push_back({cols(gpu_dst.back(), c.dst_width, c.dst_col, Device::kCuda),
                          cols(gpu_src.back(), c.src_width, c.src_col, Device::kCuda)});
  }
  cpu_backend().copy_rows_batch(cpu_copies.data(), cpu_copies.size());
  gpu_backend().copy_rows_batch(gpu_copies.data(), gpu_copies.size());
  gpu_backend().synchronize();
  int failed = 0;
  for (size_t i = 0; i < cases.size() && failed < 5; ++i) {
    std::vector<uint8_t> got(gpu_dst[i].bytes());
    gpu_backend().copy_to_host(got.data(), gpu_dst[i].data(), got.size());
    if (std::memcmp(got.data(), cpu_dst[i].data(), got.size()) != 0) {
      ADD_FAILURE() << "copy " << i << " (" << dtype_name(cases[i].dtype) << ", " << cases[i].rows << " rows) differs";
      ++failed;
    }
  }
}

}  // namespace
}  // namespace v4rt::kernels::cuda_test
