// SPDX-License-Identifier: MIT
// The grouped W4A8 expert GEMM on tensor cores against an fp64 host reference of the official
// numerics and against the CUDA-core kernel on the same inputs. Every case runs both tensor-core
// kernels forced (the tile kernel fp4_grouped_gemm_mma and the decode GEMV fp4_grouped_gemv),
// compares them with each other, and checks that the dispatching entry (fp4_grouped_gemm_tc) gave
// bit for bit the one fp4_tc_use_gemv picks. Cases: experts with 0 and 1 rows, ragged groups,
// groups without weights, row tiles and 8-row GEMV passes that end inside a group, channel counts
// not a multiple of the 128-channel tile or the GEMV's 32 (odd ones too), k of one and of several
// 128-steps (fewer than the pipeline stages, and not a multiple of them or of the GEMV's 4 warps),
// bf16 and fp32 outputs, zero and extreme codes, scale rows that are not word aligned, and the
// V4-Flash decode shapes over 256 experts. Each of the tile kernel's row tiles (16, 32, 64, 128
// rows, picked by the mean rows per group) is exercised on decode-, middle- and prefill-sized groups.
// The FP8 wgmma kernel (fp4_grouped_gemm_wgmma, 128-row tiles, one promotion per 128-k step) runs
// forced on every case too, against the fp64 reference and the tile kernel, and so does its
// warp-specialized twin (fp4_grouped_gemm_wgmma_ws, bit for bit the wgmma kernel's, with its
// activation tiles by cp.async, TMA and TMA multicast in clusters of two, the last two also with
// the weight ring); CudaW4a8Wgmma adds the Flash prefill shapes and weight scales spanning more binades
// than its e4m3 re-encode keeps.
// CudaW4a8Gemv adds the decode GEMV's own cases and its gate/up pair (fp4_grouped_gemv_pair, bit for
// bit the single GEMV on each projection).
// moe_experts through the backend in prefill shapes lives in test_cuda_moe.cpp
// (CudaMoe.ExpertsDecodeAndPrefill: its prefill sizes take this kernel).
#include <cuda_runtime.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <memory>
#include <numeric>
#include <type_traits>

#include "kernels/cuda/fp4_gemm.h"
#include "tests/cuda/cuda_test_util.h"

namespace v4rt::kernels::cuda_test {
namespace {

// Device memory owned by a test.
template <typename T>
struct Dev {
  T* p = nullptr;
  size_t n = 0;
  explicit Dev(const std::vector<T>& host) : n(host.size()) {
    EXPECT_EQ(cudaMalloc(reinterpret_cast<void**>(&p), std::max<size_t>(n, 1) * sizeof(T)), cudaSuccess);
    if (n) {
      EXPECT_EQ(cudaMemcpy(p, host.data(), n * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
    }
  }
  explicit Dev(size_t count) : n(count) {
    EXPECT_EQ(cudaMalloc(reinterpret_cast<void**>(&p), std::max<size_t>(n, 1) * sizeof(T)), cudaSuccess);
    EXPECT_EQ(cudaMemset(p, 0xff, std::max<size_t>(n, 1) * sizeof(T)), cudaSuccess);  // NaN-ish sentinel
  }
  ~Dev() { cudaFree(p); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  std::vector<T> host() const {
    std::vector<T> h(n);
    if (n) {
      EXPECT_EQ(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    }
    return h;
  }
};

struct W4a8Case {
  std::vector<int> rows;       // rows per group
  std::vector<bool> has_w;     // group has weights (false: skipped, its rows left untouched)
  int64_t n, k;
  bool out_f32;
  int tile_rows = 0;              // the row tile the kernel must pick for this case (0: any)
  bool misaligned_scales = false;  // weight scale rows start one byte past a word boundary
  bool wide_scales = false;  // weight scales 2^-27..2^-3 (a 128-k step's four span up to 24 binades)
  int ref_row_stride = 1;    // reference rows: every this many of a group's, and its last (prefill sizes)
};

// The kernels run_case runs on every case: the tensor-core entry as dispatched (tile kernel or
// GEMV by the mean rows per group), each of those two forced, the CUDA-core kernel and the FP8
// wgmma kernel forced.
enum class Kernel { kTcDispatch, kTile, kGemv, kCudaCores, kWgmma, kWgmmaWs };

// Host fp64 reference of one output: bf16/fp32 of sum over 32-blocks b of
// (sum_{k in b} e4m3(x8) * s_x[k/128] * fp4(w)) * 2^(S[b] - 127).
void run_case(const W4a8Case& c, Rng& rng) {
  const int groups = int(c.rows.size());
  std::vector<int32_t> offsets(size_t(groups) + 1, 0);
  for (int g = 0; g < groups; ++g) offsets[size_t(g) + 1] = offsets[size_t(g)] + c.rows[size_t(g)];
  const int64_t total = offsets.back(), n = c.n, k = c.k, kb = k / 128;
  std::vector<uint8_t> x8(size_t(total * k));
  for (auto& v : x8) {
    do v = uint8_t(rng.integer(0, 255));
    while ((v & 0x7f) == 0x7f);  // no NaN codes (act_quant never emits them)
  }
  if (total > 0) {  // extreme codes in the first row: +-448 and the smallest subnormals
    x8[0] = 0x7e;
    x8[1] = 0xfe;
    x8[2] = 0x01;
    x8[3] = 0x81;
  }
  std::vector<float> xs(size_t(total * kb));
  for (auto& s : xs) s = std::ldexp(1.f, int(rng.integer(-12, -4)));  // act_quant scales: powers of two
  // Groups with weights but no rows share one device buffer (never read: no rows), so cases of
  // hundreds of mostly empty groups at real sizes stay small.
  std::vector<std::vector<uint8_t>> w(static_cast<size_t>(groups)), ws(static_cast<size_t>(groups));
  std::vector<std::unique_ptr<Dev<uint8_t>>> dw, dws;
  std::unique_ptr<Dev<uint8_t>> empty_w, empty_ws;
  std::vector<const uint8_t*> wp(static_cast<size_t>(groups), nullptr), wsp(static_cast<size_t>(groups), nullptr);
  for (int g = 0; g < groups; ++g) {
    if (!c.has_w[size_t(g)]) continue;
    if (c.rows[size_t(g)] == 0) {
      if (!empty_w) {
        empty_w = std::make_unique<Dev<uint8_t>>(size_t(n * k / 2));
        empty_ws = std::make_unique<Dev<uint8_t>>(size_t(n * k / 32));
      }
      wp[size_t(g)] = empty_w->p;
      wsp[size_t(g)] = empty_ws->p;
      continue;
    }
    w[size_t(g)].resize(size_t(n * k / 2));
    for (auto& b : w[size_t(g)]) b = uint8_t(rng.integer(0, 255));
    ws[size_t(g)].resize(size_t(n * k / 32));
    for (auto& s : ws[size_t(g)]) s = uint8_t(c.wide_scales ? rng.integer(100, 124) : rng.integer(118, 124));
    dw.push_back(std::make_unique<Dev<uint8_t>>(w[size_t(g)]));
    const size_t pad = c.misaligned_scales ? 1 : 0;
    std::vector<uint8_t> ws_dev = ws[size_t(g)];
    if (pad) ws_dev.insert(ws_dev.begin(), uint8_t(0));
    dws.push_back(std::make_unique<Dev<uint8_t>>(ws_dev));
    wp[size_t(g)] = dw.back()->p;
    wsp[size_t(g)] = dws.back()->p + pad;
  }
  if (c.tile_rows > 0) {  // run() passes max_rows = total + 3
    EXPECT_EQ(cuda::fp4_tc_rows_per_tile(total + 3, groups), c.tile_rows) << "case with " << groups << " groups";
  }
  // The activations hold max_rows = total + 3 rows (the rows past total zero), as the kernels'
  // callers allocate them: the tensor-map copies may read rows up to max_rows.
  std::vector<uint8_t> x8_rows(x8);
  x8_rows.resize(size_t((total + 3) * k), 0);
  Dev<uint8_t> dx(x8_rows);
  Dev<float> dxs(xs);
  Dev<int32_t> doff(offsets);
  Dev<const uint8_t*> dwp(wp), dwsp(wsp);

  // a_copy, ring: the warp-specialized kernel's form (Fp4GroupedGemmParams::ws_a_copy,
  // ws_weight_ring).
  auto run = [&](Kernel kernel, auto* out, int a_copy, bool ring) {
    cuda::Fp4GroupedGemmParams p;
    p.ws_a_copy = a_copy;
    p.ws_weight_ring = ring;
    p.x8 = dx.p;
    p.x_scale = dxs.p;
    p.row_offsets = doff.p;
    p.w = dwp.p;
    p.w_scale = dwsp.p;
    if constexpr (std::is_same_v<std::remove_pointer_t<decltype(out)>, Dev<float>>) {
      p.out_f32 = out->p;
    } else {
      p.out = out->p;
    }
    p.num_groups = groups;
    p.n = n;
    p.k = k;
    p.tensor_cores = kernel != Kernel::kCudaCores;
    p.max_rows = total + 3;  // an upper bound, not the exact count
    if (kernel == Kernel::kTile) {
      cuda::fp4_grouped_gemm_mma(p);
    } else if (kernel == Kernel::kGemv) {
      cuda::fp4_grouped_gemv(p);
    } else if (kernel == Kernel::kWgmma) {
      cuda::fp4_grouped_gemm_wgmma(p);
    } else if (kernel == Kernel::kWgmmaWs) {
      cuda::fp4_grouped_gemm_wgmma_ws(p);
    } else {
      cuda::fp4_grouped_gemm(p);
    }
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  };
  // Outputs of the six runs as floats (sentinel NaNs where nothing was written), and the bits of
  // the dispatched run and of the kernel it must have taken.
  const Kernel kernels[] = {Kernel::kTcDispatch, Kernel::kTile,    Kernel::kGemv,     Kernel::kCudaCores,
                            Kernel::kWgmma,      Kernel::kWgmmaWs};
  constexpr int kRuns = 6;
  std::vector<float> got[kRuns];
  std::vector<uint32_t> bits[kRuns];
  const size_t outn = size_t(std::max<int64_t>(total * n, 1));
  // One run's outputs as floats into *values and as bits into *out_bits.
  auto outputs = [&](Kernel kernel, int a_copy, bool ring, std::vector<float>* values,
                     std::vector<uint32_t>* out_bits) {
    if (c.out_f32) {
      Dev<float> o(outn);
      run(kernel, &o, a_copy, ring);
      *values = o.host();
      for (float v : *values) out_bits->push_back(std::bit_cast<uint32_t>(v));
    } else {
      Dev<uint16_t> o(outn);
      run(kernel, &o, a_copy, ring);
      for (uint16_t v : o.host()) {
        values->push_back(bf16_to_f32(v));
        out_bits->push_back(v);
      }
    }
  };
  for (int i = 0; i < kRuns; ++i) outputs(kernels[i], 0, false, &got[i], &bits[i]);
  const bool gemv = cuda::fp4_tc_use_gemv(total + 3, groups, n, k);
  std::string tag = "w4a8 groups";
  for (int r : c.rows) {
    tag += ' ';
    tag += std::to_string(r);
  }
  tag += " n" + std::to_string(n) + " k" + std::to_string(k) + (c.out_f32 ? " f32" : " bf16");
  EXPECT_TRUE(bits[0] == bits[gemv ? 2 : 1]) << tag << ": the dispatched run differs from the "
                                             << (gemv ? "GEMV" : "tile kernel");
  // The warp-specialized wgmma kernel runs the same MMAs on the same
  // operands in the same order and the same promotions: bit for bit the wgmma kernel's.
  EXPECT_TRUE(bits[5] == bits[4]) << tag << ": the warp-specialized wgmma kernel differs from the wgmma kernel";
  // Its activation tiles by TMA and by TMA multicast in clusters of two (odd channel-tile counts run
  // without clusters), each also with the weight ring: the same operands in shared memory, the same
  // bits.
  for (const bool ring : {false, true}) {
    for (const int a_copy : {1, 2}) {
      std::vector<float> v;
      std::vector<uint32_t> b;
      outputs(Kernel::kWgmmaWs, a_copy, ring, &v, &b);
      EXPECT_TRUE(b == bits[5]) << tag << ": the warp-specialized kernel with activation copy " << a_copy
                                << (ring ? " and the weight ring" : "") << " differs from its cp.async form";
    }
  }
  // Reference over the rows of groups with weights; rows of skipped groups must stay untouched.
  std::vector<float> ref, tile, gv, cc, wg, wgws;
  int64_t untouched_bad = 0;
  for (int g = 0; g < groups; ++g) {
    if (c.rows[size_t(g)] == 0) continue;
    std::vector<float> wf;  // decoded weights [n, k]
    if (c.has_w[size_t(g)]) {
      float lut[16];
      for (int code = 0; code < 16; ++code) lut[code] = fp4_to_f32(uint8_t(code));
      wf.resize(size_t(n * k));
      for (int64_t j = 0; j < n; ++j)
        for (int64_t i = 0; i < k; ++i) wf[size_t(j * k + i)] = lut[fp4_unpack(w[size_t(g)].data() + j * (k / 2), i)];
    }
    std::vector<double> xv(static_cast<size_t>(k));
    for (int64_t r = offsets[size_t(g)]; r < offsets[size_t(g) + 1]; ++r) {
      if (c.has_w[size_t(g)] && (r - offsets[size_t(g)]) % c.ref_row_stride != 0 && r + 1 != offsets[size_t(g) + 1])
        continue;
      for (int64_t i = 0; i < k; ++i) {
        xv[size_t(i)] = double(e4m3_to_f32(x8[size_t(r * k + i)])) * xs[size_t(r * kb + i / 128)];
      }
      for (int64_t j = 0; j < n; ++j) {
        const size_t o = size_t(r * n + j);
        if (!c.has_w[size_t(g)]) {
          untouched_bad += !std::isnan(got[1][o]) + !std::isnan(got[2][o]) + !std::isnan(got[4][o]) +
                           !std::isnan(got[5][o]);
          continue;
        }
        double acc = 0.0;
        for (int64_t b = 0; b < k / 32; ++b) {
          double blk = 0.0;
          for (int64_t i = b * 32; i < b * 32 + 32; ++i) blk += xv[size_t(i)] * wf[size_t(j * k + i)];
          acc += blk * e8m0_to_f32(ws[size_t(g)][size_t(j * (k / 32) + b)]);
        }
        ref.push_back(c.out_f32 ? float(acc) : round_bf16(float(acc)));
        tile.push_back(got[1][o]);
        gv.push_back(got[2][o]);
        cc.push_back(got[3][o]);
        wg.push_back(got[4][o]);
        wgws.push_back(got[5][o]);
      }
    }
  }
  EXPECT_EQ(untouched_bad, 0) << tag << ": rows of groups without weights were written";
  // bf16 outputs: one bf16 rounding (and a last-bit flip where the sums differ in order). fp32
  // outputs: the tensor cores add the 32 products of a block at reduced alignment precision, so
  // the bound is relative to the rms of the row block, not to each (possibly cancelling) element.
  const Tolerance tol = c.out_f32 ? Tolerance{1e-3, 1e-3, 1e-6} : Tolerance{1e-2, 1e-2, 1e-4};
  EXPECT_TRUE(compare(tag + " tile kernel vs fp64", tile, ref, tol));
  EXPECT_TRUE(compare(tag + " tile kernel vs cuda cores", tile, cc, tol));
  EXPECT_TRUE(compare(tag + " gemv vs fp64", gv, ref, tol));
  EXPECT_TRUE(compare(tag + " gemv vs cuda cores", gv, cc, tol));
  EXPECT_TRUE(compare(tag + " gemv vs tile kernel", gv, tile, tol));
  // The wgmma kernel sums a 128-k step's 128 products inside the tensor cores, which keep fewer
  // bits than fp32 (nmse ~4e-8 against fp64 on an H100, 2026-12-05, against ~1e-14 for the tile
  // kernel's exact 32-blocks): far below a bf16 rounding, which is why the dispatch gives it bf16
  // outputs only; its fp32 outputs are held to the bf16 bound.
  const Tolerance wg_tol = c.out_f32 ? Tolerance{1e-2, 1e-2, 1e-6} : tol;
  EXPECT_TRUE(compare(tag + " wgmma vs fp64", wg, ref, wg_tol));
  EXPECT_TRUE(compare(tag + " wgmma vs tile kernel", wg, tile, wg_tol));
  EXPECT_TRUE(compare(tag + " wgmma ws vs fp64", wgws, ref, wg_tol));
  EXPECT_TRUE(compare(tag + " wgmma ws vs tile kernel", wgws, tile, wg_tol));
  if (c.wide_scales) {  // the e4m3 re-encode rounds the small blocks: how far that moves the result
    double max_err = 0.0, max_ref = 0.0;
    for (size_t i = 0; i < ref.size(); ++i) {
      max_err = std::max(max_err, std::fabs(double(wg[i]) - double(ref[i])));
      max_ref = std::max(max_ref, std::fabs(double(ref[i])));
    }
    std::printf("%s: wgmma max |err| %.3g (max |ref| %.3g)\n", tag.c_str(), max_err, max_ref);
  }
}

TEST(CudaW4a8, EdgeShapesVsReference) {
  V4RT_REQUIRE_GPU();
  Rng rng(71);
  const std::vector<W4a8Case> cases = {
      {{1}, {true}, 128, 128, false},                                // one row, one tile, one k step
      {{0, 1, 0, 0}, {true, true, true, true}, 256, 256, false},     // empty groups around a one-row group
      {{64, 65, 63, 0, 130}, {true, true, true, true, true}, 384, 512, false},  // tile boundaries
      {{7, 0, 200, 3}, {true, true, false, true}, 200, 384, false},  // a group without weights; n % 128 != 0
      {{33, 1, 90}, {true, true, true}, 77, 640, false},             // odd n: scalar stores at the edge
      {{129, 2}, {true, true}, 130, 256, true},                      // fp32 outputs
      {{0, 0}, {true, true}, 128, 128, false},                       // no rows at all
  };
  for (const auto& c : cases) run_case(c, rng);
}

TEST(CudaW4a8, RandomRaggedGroups) {
  V4RT_REQUIRE_GPU();
  Rng rng(72);
  for (int trial = 0; trial < 4; ++trial) {
    W4a8Case c;
    const int groups = int(rng.integer(1, 24));
    for (int g = 0; g < groups; ++g) {
      const int64_t kind = rng.integer(0, 3);
      c.rows.push_back(kind == 0 ? 0 : kind == 1 ? int(rng.integer(1, 4)) : int(rng.integer(5, 300)));
      c.has_w.push_back(rng.integer(0, 9) != 0);
    }
    c.n = 8 * rng.integer(1, 48);
    c.k = 128 * rng.integer(1, 6);
    c.out_f32 = trial == 3;
    run_case(c, rng);
  }
}

// The row tile by mean rows per group: the decode batch of 256 sequences (1,536 rows over 256
// experts), middle sizes, the 8192-token prefill (49,152 rows: the 128-row tile), and the edges of
// each range.
TEST(CudaW4a8, TileShapeByMeanRows) {
  EXPECT_EQ(cuda::kFp4TcRowsPerTile, 64);
  EXPECT_EQ(cuda::fp4_tc_rows_per_tile(1536, 256), 16);
  EXPECT_EQ(cuda::fp4_tc_rows_per_tile(16 * 256, 256), 16);
  EXPECT_EQ(cuda::fp4_tc_rows_per_tile(16 * 256 + 1, 256), 32);
  EXPECT_EQ(cuda::fp4_tc_rows_per_tile(40 * 8, 8), 32);
  EXPECT_EQ(cuda::fp4_tc_rows_per_tile(40 * 8 + 1, 8), 64);
  EXPECT_EQ(cuda::fp4_tc_rows_per_tile(95 * 8, 8), 64);
  EXPECT_EQ(cuda::fp4_tc_rows_per_tile(95 * 8 + 1, 8), 128);
  EXPECT_EQ(cuda::fp4_tc_rows_per_tile(49152, 256), 128);
  EXPECT_EQ(cuda::fp4_tc_rows_per_tile(4096 * 6, 256), 128);  // 4,096-token prefill: 96 rows per expert
  EXPECT_EQ(cuda::fp4_tc_rows_per_tile(5, 1), 16);
  EXPECT_EQ(cuda::fp4_tc_rows_per_tile(500, 1), 128);
}

// Decode-sized groups (0 to 8 rows, many groups, some empty, some without weights): the 16-row tile;
// one group of 40 rows spans three of its tiles. k of 1, 2, 3 and 7 steps against 4 stages.
TEST(CudaW4a8, DecodeSizedGroups) {
  V4RT_REQUIRE_GPU();
  Rng rng(73);
  const int64_t ks[] = {128, 256, 384, 896};
  for (int trial = 0; trial < 4; ++trial) {
    W4a8Case c;
    const int groups = 40 + int(rng.integer(0, 24));
    for (int g = 0; g < groups; ++g) {
      c.rows.push_back(rng.integer(0, 4) == 0 ? 0 : int(rng.integer(1, 8)));
      c.has_w.push_back(rng.integer(0, 7) != 0);
    }
    c.rows[size_t(groups / 2)] = 40;
    c.has_w[size_t(groups / 2)] = true;
    c.n = trial == 1 ? 200 : 256 + 8 * rng.integer(0, 16);
    c.k = ks[trial];
    c.out_f32 = trial == 2;
    c.tile_rows = 16;
    c.misaligned_scales = trial == 3;
    run_case(c, rng);
  }
}

// Middle-sized groups (mean 17 to 40 rows): the 32-row tile, groups ending inside and on tiles.
TEST(CudaW4a8, MiddleSizedGroups) {
  V4RT_REQUIRE_GPU();
  Rng rng(74);
  const std::vector<W4a8Case> cases = {
      {{33, 64, 17, 0, 1, 31}, {true, true, true, true, true, true}, 328, 640, false, 32},
      {{20, 0, 35, 40, 9}, {true, true, false, true, true}, 77, 384, false, 32},  // odd n
      {{32, 32, 5}, {true, true, true}, 136, 896, true, 32},                    // fp32, 7 k steps
  };
  for (const auto& c : cases) run_case(c, rng);
}

// Groups of a mean 41 to 95 rows: the 64-row tile, groups ending inside, on and one past tiles, k
// steps not a multiple of the stages, n not a multiple of the 128-channel tile.
TEST(CudaW4a8, MeanSixtyFourRowGroups) {
  V4RT_REQUIRE_GPU();
  Rng rng(76);
  const std::vector<W4a8Case> cases = {
      {{70, 65, 0, 130, 63, 90}, {true, true, true, true, true, true}, 296, 640, false, 64},
      {{64, 129, 1, 95}, {true, false, true, true}, 136, 896, true, 64},  // fp32, 7 k steps
      {{128, 50}, {true, true}, 77, 1152, false, 64, true},  // odd n, 9 k steps, misaligned scale rows
  };
  for (const auto& c : cases) run_case(c, rng);
}

// Prefill-sized groups (a mean of 96+ rows; 100 to 400 rows each): the 128-row tile of two warps
// along the rows, groups ending inside, on and one past its tiles, empty groups and groups without
// weights, k of 5, 7 and 9 steps (not multiples of the stages), n not a multiple of the 128-channel
// tile (odd too), scale rows not word aligned.
TEST(CudaW4a8, PrefillSizedGroups) {
  V4RT_REQUIRE_GPU();
  Rng rng(75);
  const std::vector<W4a8Case> cases = {
      {{230, 257, 0, 201}, {true, true, true, true}, 296, 640, false, 128},
      {{210, 64, 129}, {true, false, true}, 136, 896, true, 128},
      {{256, 300}, {true, true}, 128, 1152, false, 128, true},  // 9 k steps, misaligned scale rows
      {{100, 0, 257, 384, 0, 129, 255}, {true, true, true, true, true, true, true}, 296, 640, false, 128},
      {{400, 128, 0, 131, 250}, {true, true, true, false, true}, 200, 896, true, 128},  // fp32
      {{127, 0, 385, 300, 0, 0, 1}, {true, true, true, true, true, true, true}, 77, 1152, false, 128, true},
  };
  for (const auto& c : cases) run_case(c, rng);
}

// --- the FP8 wgmma kernel (fp4_gemm_wgmma.cu); run_case runs it on every case above too -----------

// The V4-Flash prefill shapes: 8192 tokens x top-6 over 256 experts (ragged, about 192 rows per
// expert), a few experts with 0 and 1 rows and one without weights; gate/up (n 2048, k 4096) and
// down (n 4096, k 2048), bf16 outputs. The fp64 reference covers every 64th row of each expert and
// its last (all rows: about 10^12 host multiply-adds).
TEST(CudaW4a8Wgmma, PrefillShapes) {
  V4RT_REQUIRE_GPU();
  Rng rng(91);
  for (int trial = 0; trial < 2; ++trial) {
    W4a8Case c{std::vector<int>(256, 0), std::vector<bool>(256, true), trial == 0 ? 2048 : 4096,
               trial == 0 ? 4096 : 2048, false, 128};
    c.ref_row_stride = 64;
    for (int t = 0; t < 8192; ++t) {
      int chosen[6];
      for (int j = 0; j < 6; ++j) {
        bool dup = true;
        while (dup) {
          chosen[j] = int(rng.integer(0, 255));
          dup = std::find(chosen, chosen + j, chosen[j]) != chosen + j;
        }
        c.rows[size_t(chosen[j])]++;
      }
    }
    c.rows[3] = 0;
    c.rows[77] = 0;
    c.rows[100] = 1;
    c.rows[200] = 1;
    c.has_w[150] = false;
    run_case(c, rng);
  }
}

// The dispatch: fp4_grouped_gemm_tc with wgmma set takes the wgmma kernel for the 128-row tile
// case with bf16 outputs (bit for bit; with wgmma_ws also set, the warp-specialized one), the
// mma.sync tile kernel below it, and the tile kernel for fp32 outputs of the 128-row case (trial 2).
TEST(CudaW4a8Wgmma, DispatchByFlagAndTile) {
  V4RT_REQUIRE_GPU();
  Rng rng(92);
  for (int trial = 0; trial < 3; ++trial) {
    const bool f32 = trial == 2;
    const std::vector<int> rows = trial != 1 ? std::vector<int>{230, 0, 1, 300} : std::vector<int>{50, 70, 0, 60};
    const int64_t n = 136, k = 512, total = std::accumulate(rows.begin(), rows.end(), int64_t(0));
    std::vector<int32_t> off(rows.size() + 1, 0);
    for (size_t g = 0; g < rows.size(); ++g) off[g + 1] = off[g] + rows[g];
    std::vector<uint8_t> x8(size_t(total * k)), w(size_t(n * k / 2)), ws(size_t(n * k / 32));
    for (auto& v : x8) v = uint8_t(rng.integer(0, 126));
    for (auto& v : w) v = uint8_t(rng.integer(0, 255));
    for (auto& v : ws) v = uint8_t(rng.integer(118, 124));
    std::vector<float> xs(size_t(total * k / 128), 1.f / 16);
    Dev<uint8_t> dx(x8), dw(w), dws(ws);
    Dev<float> dxs(xs);
    Dev<int32_t> doff(off);
    Dev<const uint8_t*> dwp(std::vector<const uint8_t*>(rows.size(), dw.p)),
        dwsp(std::vector<const uint8_t*>(rows.size(), dws.p));
    auto run = [&](int which, bool ws) {
      Dev<uint16_t> o(size_t(total * n));
      Dev<float> o32(size_t(f32 ? total * n : 1));
      cuda::Fp4GroupedGemmParams p;
      p.x8 = dx.p;
      p.x_scale = dxs.p;
      p.row_offsets = doff.p;
      p.w = dwp.p;
      p.w_scale = dwsp.p;
      if (f32) p.out_f32 = o32.p;
      else p.out = o.p;
      p.num_groups = int(rows.size());
      p.n = n;
      p.k = k;
      p.tensor_cores = true;
      p.wgmma = true;
      p.wgmma_ws = ws;
      p.max_rows = total;
      if (which == 0) cuda::fp4_grouped_gemm_tc(p);
      else if (which == 1) cuda::fp4_grouped_gemm_wgmma(p);
      else if (which == 3) cuda::fp4_grouped_gemm_wgmma_ws(p);
      else cuda::fp4_grouped_gemm_mma(p);
      EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      std::vector<uint32_t> bits;
      if (f32) {
        for (float v : o32.host()) bits.push_back(std::bit_cast<uint32_t>(v));
      } else {
        for (uint16_t v : o.host()) bits.push_back(v);
      }
      return bits;
    };
    const bool wide = cuda::fp4_tc_rows_per_tile(total, int64_t(rows.size())) == cuda::kFp4WgmmaRowsPerTile;
    EXPECT_EQ(wide, trial != 1);
    for (const bool ws : {false, true}) {
      EXPECT_TRUE(run(0, ws) == run(wide && !f32 ? (ws ? 3 : 1) : 2, ws)) << "trial " << trial << " ws " << ws;
    }
  }
}

// Weight scales drawn over 25 binades, so a 128-k step's four 32-blocks span up to 24 (beyond the
// 14 the e4m3 re-encode keeps exactly): the small blocks round, within the tolerance; the max error
// is printed.
TEST(CudaW4a8Wgmma, WideScaleSpans) {
  V4RT_REQUIRE_GPU();
  Rng rng(93);
  W4a8Case a{{230, 0, 129, 64}, {true, true, true, true}, 296, 1152, false, 128};
  a.wide_scales = true;
  W4a8Case b{{200, 131}, {true, true}, 136, 640, true, 128};
  b.wide_scales = true;
  run_case(a, rng);
  run_case(b, rng);
}

// --- the decode GEMV (fp4_gemv.cu); run_case runs it on every case above too ---------------------

// The dispatch by rounded-up mean rows per group. With 8-row passes (gemv_rows 8): the GEMV up to
// kFp4GemvMaxMeanRows, gate/up up to kFp4GemvMaxMeanRowsWide. By default: 16-row passes above a
// mean of 4 and the GEMV up to kFp4GemvMaxMeanRows16 for every shape.
TEST(CudaW4a8Gemv, DispatchByMeanRows) {
  EXPECT_EQ(cuda::kFp4GemvMaxMeanRows, 4);
  EXPECT_EQ(cuda::kFp4GemvMaxMeanRows16, 8);
  EXPECT_TRUE(cuda::fp4_tc_use_gemv(6, 256, 0, 0, 8));         // batch 1, top-6 of 256 experts
  EXPECT_TRUE(cuda::fp4_tc_use_gemv(384, 256, 0, 0, 8));       // batch 64: a mean of 1.5
  EXPECT_FALSE(cuda::fp4_tc_use_gemv(1536, 256, 0, 0, 8));     // batch 256: a mean of 6, the tile kernel
  EXPECT_TRUE(cuda::fp4_tc_use_gemv(4 * 256, 256, 0, 0, 8));
  EXPECT_FALSE(cuda::fp4_tc_use_gemv(4 * 256 + 1, 256, 0, 0, 8));
  EXPECT_TRUE(cuda::fp4_tc_use_gemv(4, 1, 0, 0, 8));           // one group (a dense FP4 linear) of 4 rows
  EXPECT_FALSE(cuda::fp4_tc_use_gemv(5, 1, 0, 0, 8));
  EXPECT_FALSE(cuda::fp4_tc_use_gemv(49152, 256, 0, 0, 8));    // prefill
  EXPECT_TRUE(cuda::fp4_tc_use_gemv(0, 256, 0, 0, 8));
  // The gate/up shape (k >= 2n) up to a mean of 6; the down shape not.
  EXPECT_EQ(cuda::kFp4GemvMaxMeanRowsWide, 6);
  EXPECT_TRUE(cuda::fp4_tc_use_gemv(1536, 256, 2048, 4096, 8));
  EXPECT_FALSE(cuda::fp4_tc_use_gemv(1536, 256, 4096, 2048, 8));
  EXPECT_FALSE(cuda::fp4_tc_use_gemv(6 * 256 + 1, 256, 2048, 4096, 8));
  EXPECT_EQ(cuda::fp4_gemv_shape(1536, 256, 4096, 8).rows, 8);
  // By default: both shapes at batch 256 (a mean of 6) in 16-row passes; 8-row passes up to 4.
  EXPECT_TRUE(cuda::fp4_tc_use_gemv(1536, 256, 4096, 2048));
  EXPECT_TRUE(cuda::fp4_tc_use_gemv(1536, 256, 2048, 4096));
  EXPECT_TRUE(cuda::fp4_tc_use_gemv(8 * 256, 256));
  EXPECT_FALSE(cuda::fp4_tc_use_gemv(8 * 256 + 1, 256));
  EXPECT_FALSE(cuda::fp4_tc_use_gemv(49152, 256));
  EXPECT_EQ(cuda::fp4_gemv_shape(1536, 256, 4096).rows, 16);
  EXPECT_EQ(cuda::fp4_gemv_shape(4 * 256, 256, 4096).rows, 8);
  EXPECT_EQ(cuda::fp4_gemv_shape(4 * 256 + 1, 256, 4096).rows, 16);
  // The k split: each warp at least kFp4GemvMinSteps steps of 128 inputs.
  EXPECT_EQ(cuda::fp4_gemv_shape(1536, 256, 4096).k_split, 4);   // Flash gate/up
  EXPECT_EQ(cuda::fp4_gemv_shape(1536, 256, 2048).k_split, 2);   // Flash down
  EXPECT_EQ(cuda::fp4_gemv_shape(1536, 256, 3072).k_split, 2);   // Pro down
  EXPECT_EQ(cuda::fp4_gemv_shape(1536, 256, 7168).k_split, 4);   // Pro gate/up
  EXPECT_EQ(cuda::fp4_gemv_shape(6, 256, 512).k_split, 1);
  EXPECT_EQ(cuda::fp4_gemv_shape(6, 256, 2048, 8, 4).k_split, 4);  // asked for
}

// One row in a few of 256 groups, the rest empty (the batch-1 decode step), some of the rows in
// groups without weights; n not a multiple of the GEMV's 32 channels; bf16 and fp32 outputs.
TEST(CudaW4a8Gemv, OneRowPerGroupMostEmpty) {
  V4RT_REQUIRE_GPU();
  Rng rng(81);
  for (int trial = 0; trial < 2; ++trial) {
    W4a8Case c{std::vector<int>(256, 0), std::vector<bool>(256, true), trial == 0 ? 328 : 77, trial == 0 ? 512 : 384,
               trial == 1};
    for (int e = 0; e < 8; ++e) c.rows[size_t(rng.integer(0, 255))] = 1;
    c.rows[0] = c.rows[255] = 1;  // the first and last groups
    c.has_w[255] = false;
    c.has_w[size_t(rng.integer(1, 254))] = false;
    run_case(c, rng);
  }
}

// Ragged rows {0, 1, 2, 3, 5, 17, 0, 300} (17 and 300 span 3 and 38 GEMV passes, the last partial),
// with and without a group lacking weights, odd n, fp32 outputs, scale rows not word aligned.
TEST(CudaW4a8Gemv, RaggedRows) {
  V4RT_REQUIRE_GPU();
  Rng rng(82);
  const std::vector<int> rows = {0, 1, 2, 3, 5, 17, 0, 300};
  const std::vector<bool> all(8, true), skip3 = {true, true, true, false, true, true, true, true};
  const std::vector<W4a8Case> cases = {
      {rows, all, 200, 640, false},        // n % 32 != 0, 5 steps over 4 warps
      {rows, skip3, 77, 384, true},        // odd n, fp32, 3 steps (a warp with none)
      {rows, all, 96, 256, false, 0, true},  // misaligned scale rows, 2 steps
  };
  for (const auto& c : cases) run_case(c, rng);
}

// The V4-Flash decode shapes (hidden 4096, moe_inter 2048) over 256 experts: gate/up (n 2048,
// k 4096) at batch 1 (6 experts with 1 row) in bf16, and down (n 4096, k 2048) at batch 4 (up to
// 24 rows, an expert with several) in bf16 and fp32.
TEST(CudaW4a8Gemv, FlashDecodeShapes) {
  V4RT_REQUIRE_GPU();
  Rng rng(83);
  for (int trial = 0; trial < 3; ++trial) {
    const int tokens = trial == 0 ? 1 : 4;
    W4a8Case c{std::vector<int>(256, 0), std::vector<bool>(256, true), trial == 0 ? 2048 : 4096,
               trial == 0 ? 4096 : 2048, trial == 2};
    for (int t = 0; t < tokens; ++t) {
      std::vector<int> chosen;
      while (chosen.size() < 6) {
        const int e = int(rng.integer(0, 255));
        if (std::find(chosen.begin(), chosen.end(), e) == chosen.end()) chosen.push_back(e);
      }
      for (int e : chosen) c.rows[size_t(e)]++;
    }
    if (tokens > 1) c.rows[7] += 3;  // an expert shared by several tokens
    run_case(c, rng);
  }
}

// The GEMV and the tile kernel forced on the same inputs where the dispatch takes the tile kernel
// (a mean of 9+ rows: the GEMV in several passes per group), and where it takes the GEMV.
TEST(CudaW4a8Gemv, ForcedGemvVsTileKernel) {
  V4RT_REQUIRE_GPU();
  Rng rng(84);
  const std::vector<W4a8Case> cases = {
      {{40, 33, 0, 64, 9}, {true, true, true, true, false}, 136, 896, false, 32},
      {{9, 16, 8, 7}, {true, true, true, true}, 264, 1152, true, 16},
      {{2, 0, 8, 1, 0, 4, 3, 0}, {true, true, true, true, true, false, true, true}, 160, 1024, false, 16},
  };
  EXPECT_FALSE(cuda::fp4_tc_use_gemv(146 + 3, 5));
  EXPECT_FALSE(cuda::fp4_tc_use_gemv(40 + 3, 4));
  EXPECT_TRUE(cuda::fp4_tc_use_gemv(18 + 3, 8));
  for (const auto& c : cases) run_case(c, rng);
}

// Far more row passes x 32 channels than the GPU holds blocks at once (16-row passes at this mean,
// fp4_gemv_shape): the V4-Flash batch-256 routing (1,536 rows over 256 experts, some with more
// than 8 rows, a few without weights) at
// narrower n (the host data of 256 full-size experts takes tens of seconds to make), gate/up's k
// in bf16 and down's k in fp32; and k of one 128-step (three of the four warps have no steps)
// over 64 groups. The fp64 reference covers every 8th row.
TEST(CudaW4a8Gemv, ManyPassesBatch256) {
  V4RT_REQUIRE_GPU();
  Rng rng(85);
  for (int trial = 0; trial < 3; ++trial) {
    const bool one_step = trial == 2;
    const int groups = one_step ? 64 : 256;
    W4a8Case c{std::vector<int>(size_t(groups), 0), std::vector<bool>(size_t(groups), true),
               one_step ? 1000 : (trial == 0 ? 256 : 512), one_step ? 128 : (trial == 0 ? 4096 : 2048),
               trial == 1};
    c.ref_row_stride = 8;
    for (int t = 0; t < (one_step ? 200 : 256); ++t)
      for (int e = 0; e < 6; ++e) c.rows[size_t(rng.integer(0, groups - 1))]++;
    c.has_w[3] = c.has_w[size_t(groups - 2)] = false;
    run_case(c, rng);
  }
}

// The gate/up pair in one GEMV launch (fp4_grouped_gemv_pair) against the single GEMV run on each
// projection alone, bit for bit: the V4-Flash gate/up shape at batch 1, and 512 x 4096 at the
// batch-256 mean of 6 rows (experts of 9+ rows take two passes), n not a multiple of 32 with k of 3 steps (a warp with none),
// fp32 outputs, scale rows of the second projection not word aligned. And the dispatching entry
// (fp4_grouped_gemm_pair) where it takes the pair GEMV and where it takes two tile-kernel GEMMs.
// Every launch shape (Fp4GemvShape: 8 or 16 rows a pass, k split 4, 2 or 1) on each case, with k of
// one 128-step (warps without steps) and groups of 30+ rows (several 16-row passes).
TEST(CudaW4a8Gemv, GateUpPairEqualsTwoLaunches) {
  V4RT_REQUIRE_GPU();
  Rng rng(86);
  struct PairCase { int groups, tokens; int64_t n, k; bool f32, misaligned; };
  for (const PairCase& c : {PairCase{256, 1, 2048, 4096, false, false}, PairCase{256, 256, 512, 4096, false, true},
                            PairCase{16, 5, 200, 384, true, false}, PairCase{8, 40, 136, 896, false, true},
                            PairCase{12, 3, 72, 128, true, true}}) {
    SCOPED_TRACE(std::to_string(c.groups) + " groups, " + std::to_string(c.tokens) + " tokens, n " + std::to_string(c.n));
    std::vector<int32_t> off(size_t(c.groups) + 1, 0);
    std::vector<int> rows(size_t(c.groups), 0);
    for (int t = 0; t < c.tokens; ++t)
      for (int e = 0; e < std::min(6, c.groups); ++e) rows[size_t(rng.integer(0, c.groups - 1))]++;
    for (int g = 0; g < c.groups; ++g) off[size_t(g) + 1] = off[size_t(g)] + rows[size_t(g)];
    const int64_t total = off.back(), n = c.n, k = c.k;
    std::vector<uint8_t> x8(size_t(total * k));
    for (auto& v : x8) {
      do v = uint8_t(rng.integer(0, 255));
      while ((v & 0x7f) == 0x7f);
    }
    std::vector<float> xs(size_t(total * (k / 128)));
    for (auto& v : xs) v = std::ldexp(1.f, int(rng.integer(-12, -4)));
    // Two projections' weights, one buffer each: slot 0 for the groups without rows (never read),
    // then a slot per group with rows.
    std::vector<int64_t> slot(size_t(c.groups), 0);
    int64_t slots = 1;
    for (int g = 0; g < c.groups; ++g) slot[size_t(g)] = rows[size_t(g)] > 0 ? slots++ : 0;
    std::vector<uint8_t> w[2], ws[2];
    std::vector<std::unique_ptr<Dev<uint8_t>>> dw, dws;
    std::vector<const uint8_t*> wp[2], wsp[2];
    for (int m = 0; m < 2; ++m) {
      w[m].resize(size_t(slots * n * k / 2));
      for (auto& b : w[m]) b = uint8_t(rng.integer(0, 255));
      const size_t pad = m == 1 && c.misaligned ? 1 : 0;
      ws[m].assign(pad, 0);
      for (int64_t i = 0; i < slots * n * k / 32; ++i) ws[m].push_back(uint8_t(rng.integer(118, 124)));
      dw.push_back(std::make_unique<Dev<uint8_t>>(w[m]));
      dws.push_back(std::make_unique<Dev<uint8_t>>(ws[m]));
      for (int g = 0; g < c.groups; ++g) {
        wp[m].push_back(dw.back()->p + slot[size_t(g)] * n * k / 2);
        wsp[m].push_back(dws.back()->p + pad + slot[size_t(g)] * n * k / 32);
      }
    }
    Dev<uint8_t> dx(x8);
    Dev<float> dxs(xs);
    Dev<int32_t> doff(off);
    Dev<const uint8_t*> dwp0(wp[0]), dwsp0(wsp[0]), dwp1(wp[1]), dwsp1(wsp[1]);
    const size_t outs = size_t(std::max<int64_t>(total * n, 1)) * (c.f32 ? 2 : 1);  // uint16 units
    auto params = [&](int m, Dev<uint16_t>& out) {
      cuda::Fp4GroupedGemmParams p;
      p.x8 = dx.p;
      p.x_scale = dxs.p;
      p.row_offsets = doff.p;
      p.w = m == 0 ? dwp0.p : dwp1.p;
      p.w_scale = m == 0 ? dwsp0.p : dwsp1.p;
      if (c.f32) {
        p.out_f32 = reinterpret_cast<float*>(out.p);
      } else {
        p.out = out.p;
      }
      p.num_groups = c.groups;
      p.n = n;
      p.k = k;
      p.tensor_cores = true;
      p.max_rows = total + 3;
      return p;
    };
    Dev<uint16_t> single0(outs), single1(outs), pair0(outs), pair1(outs), disp0(outs), disp1(outs);
    cuda::fp4_grouped_gemv(params(0, single0));
    cuda::fp4_grouped_gemv(params(1, single1));
    cuda::fp4_grouped_gemv_pair(params(0, pair0), params(1, pair1));
    cuda::fp4_grouped_gemm_pair(params(0, disp0), params(1, disp1));
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_TRUE(pair0.host() == single0.host()) << "gate differs from its single GEMV";
    EXPECT_TRUE(pair1.host() == single1.host()) << "up differs from its single GEMV";
    // Every launch shape, single and pair: the pair equals its two singles; shapes of one k split
    // equal each other bit for bit (8 or 16 rows a pass: the same MMAs and promotions per output);
    // the k splits of 2 and 1 (two partial sums or one instead of four) agree with the default
    // within the rounding of a different fp32 addition order.
    std::vector<uint16_t> split_ref[3][2];  // [k split 4 | 2 | 1][projection]
    for (const cuda::Fp4GemvShape g : {cuda::Fp4GemvShape{8, 4}, cuda::Fp4GemvShape{16, 4}, cuda::Fp4GemvShape{8, 2},
                                       cuda::Fp4GemvShape{16, 2}, cuda::Fp4GemvShape{8, 1}, cuda::Fp4GemvShape{16, 1}}) {
      SCOPED_TRACE("shape: " + std::to_string(g.rows) + " rows a pass, k split " + std::to_string(g.k_split));
      Dev<uint16_t> s0(outs), s1(outs), q0(outs), q1(outs);
      cuda::fp4_grouped_gemv(params(0, s0), g);
      cuda::fp4_grouped_gemv(params(1, s1), g);
      cuda::fp4_grouped_gemv_pair(params(0, q0), params(1, q1), g);
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      const std::vector<uint16_t> h[2] = {s0.host(), s1.host()};
      EXPECT_TRUE(q0.host() == h[0]) << "gate of the pair differs from its single GEMV";
      EXPECT_TRUE(q1.host() == h[1]) << "up of the pair differs from its single GEMV";
      const int split = g.k_split == 4 ? 0 : g.k_split == 2 ? 1 : 2;
      for (int m = 0; m < 2; ++m) {
        if (split_ref[split][m].empty()) {
          split_ref[split][m] = h[m];
        } else {
          EXPECT_TRUE(h[m] == split_ref[split][m]) << "projection " << m << " differs from the other shape of its k split";
        }
      }
      if (split == 0 && g.rows == 8 && cuda::fp4_gemv_shape(total + 3, c.groups, c.k).k_split == 4) {
        EXPECT_TRUE(h[0] == single0.host()) << "the default shape differs from its k split's";
      }
      if (split > 0) {  // against k split 4, over the rows written
        for (int m = 0; m < 2; ++m) {
          std::vector<float> a, b;
          const auto to_f = [&](const std::vector<uint16_t>& v, size_t i) {
            if (!c.f32) return bf16_to_f32(v[i]);
            uint32_t u = uint32_t(v[2 * i]) | uint32_t(v[2 * i + 1]) << 16;
            return std::bit_cast<float>(u);
          };
          for (size_t i = 0; i < size_t(total * n); ++i) {
            a.push_back(to_f(h[m], i));
            b.push_back(to_f(split_ref[0][m], i));
          }
          const Tolerance tol = c.f32 ? Tolerance{1e-3, 1e-3, 1e-6} : Tolerance{1e-2, 1e-2, 1e-4};
          EXPECT_TRUE(compare("k split " + std::to_string(g.k_split) + " vs 4, projection " + std::to_string(m), a, b, tol));
        }
      }
    }
    // The dispatch: the pair GEMV where fp4_tc_use_gemv takes the GEMV, else two tile-kernel GEMMs.
    const bool gemv = cuda::fp4_tc_use_gemv(total + 3, c.groups, n, k);
    Dev<uint16_t> ref0(outs), ref1(outs);
    if (!gemv) {
      cuda::fp4_grouped_gemm_tc(params(0, ref0));
      cuda::fp4_grouped_gemm_tc(params(1, ref1));
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    }
    EXPECT_TRUE(disp0.host() == (gemv ? single0 : ref0).host()) << "dispatched gate, gemv=" << gemv;
    EXPECT_TRUE(disp1.host() == (gemv ? single1 : ref1).host()) << "dispatched up, gemv=" << gemv;
  }
}

}  // namespace
}  // namespace v4rt::kernels::cuda_test
