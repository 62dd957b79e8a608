// SPDX-License-Identifier: MIT
// CPU reference ops against values computed independently here (hand-worked or in double):
// rms_norm, rope (and at per-row positions, and in runs), hc_pre/hc_post/hc_head, linear, grouped_linear, swiglu,
// embedding, add, the quantize-dequantize rounding ops, weight dequantization at upload and batched
// row copies.
#include <cmath>
#include <cstring>

#include "common/dtype.h"
#include "kernels/backend.h"
#include "tests/kernels/cpu_test_util.h"

namespace v4rt::kernels {
namespace {

TEST(CpuRmsNorm, HandExampleWeighted) {
  auto be = make_cpu_backend();
  std::vector<float> x = {3, 4, 0, 0};
  std::vector<float> w = {2, 0.5f};
  std::vector<float> y(4);
  RmsNormParams p;
  p.x = tv(x, {2, 2});
  p.y = tv(y, {2, 2});
  p.weight = upload_f32(*be, w, 1, 2);
  p.eps = 1e-6f;
  be->rms_norm(p);
  const double s = 1.0 / std::sqrt(12.5 + 1e-6);
  EXPECT_NEAR(y[0], 3 * s * 2, 1e-6);
  EXPECT_NEAR(y[1], 4 * s * 0.5, 1e-6);
  EXPECT_NEAR(y[2], 0.0, 1e-12);  // zero row stays finite: 0 * rsqrt(eps)
}

TEST(CpuRmsNorm, Bf16PerHeadArithmetic) {
  // sq = 9, 16; m = bf16(25/2) = 12.5; v = bf16(12.5 + 1e-6) = 12.5; r = bf16(rsqrt 12.5)
  // = 0.283203125; y = bf16(3 r) = bf16(0.849609375) = 0.8515625 (tie to even); bf16(4 r) = 1.1328125.
  auto be = make_cpu_backend();
  std::vector<float> x = {3, 4};
  RmsNormParams p;
  p.x = p.y = tv(x, {1, 2});
  p.bf16_arith = true;
  be->rms_norm(p);
  EXPECT_EQ(x[0], 0.8515625f);
  EXPECT_EQ(x[1], 1.1328125f);
}

TEST(CpuRope, KnownAnglesAndInverse) {
  auto be = make_cpu_backend();
  // 2 rows x 2 heads x head_dim 6, rope on the last 4 dims (2 pairs), positions 3 and 5 (step 2).
  std::vector<float> x = randn(24, 1);
  const std::vector<float> orig = x;
  const std::vector<float> inv_freq = {0.5f, 0.125f};
  RopeParams p;
  p.x = tv(x, {2, 2, 6});
  p.inv_freq = inv_freq.data();
  p.rope_dim = 4;
  p.pos_begin = 3;
  p.pos_step = 2;
  be->rope(p);
  for (int r = 0; r < 2; ++r)
    for (int h = 0; h < 2; ++h) {
      const float* o = &orig[size_t((r * 2 + h) * 6)];
      const float* y = &x[size_t((r * 2 + h) * 6)];
      EXPECT_EQ(y[0], o[0]);  // nope dims untouched
      EXPECT_EQ(y[1], o[1]);
      for (int i = 0; i < 2; ++i) {
        const double th = (3 + 2 * r) * double(inv_freq[size_t(i)]);
        const double a = o[2 + 2 * i], b = o[3 + 2 * i];
        EXPECT_NEAR(y[2 + 2 * i], a * std::cos(th) - b * std::sin(th), 1e-5);
        EXPECT_NEAR(y[3 + 2 * i], b * std::cos(th) + a * std::sin(th), 1e-5);
      }
    }
  p.inverse = true;
  be->rope(p);
  for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(x[i], orig[i], 1e-5);
}

// RoPE of the last 6 of 10 dims at the given frequencies: the two batched-position tests below.
RopeParams rope_case(const std::vector<float>& inv_freq, bool inverse, bool out_bf16) {
  RopeParams p;
  p.inv_freq = inv_freq.data();
  p.rope_dim = 6;
  p.inverse = inverse;
  p.out_bf16 = out_bf16;
  return p;
}

TEST(CpuRope, PerRowPositionsEqualRowByRowCalls) {
  // Rows of several sequences in one call (positions out of order, one past 2^20) against one
  // pos_begin call per row: bit for bit, forward and inverse, with and without bf16 rounding.
  auto be = make_cpu_backend();
  const std::vector<int32_t> positions = {7, 8, 0, 1048583, 3, 4, 5};
  const int64_t rows = int64_t(positions.size()), heads = 3, head_dim = 10;
  std::vector<float> inv_freq = {1.0f, 0.3f, 0.01f};
  for (bool inverse : {false, true}) {
    for (bool out_bf16 : {false, true}) {
      std::vector<float> x = randn(size_t(rows * heads * head_dim), 2);
      std::vector<float> ref = x;
      RopeParams p = rope_case(inv_freq, inverse, out_bf16);
      p.x = tv(x, {rows, heads, head_dim});
      p.pos_begin = 99;  // ignored with positions
      p.positions = positions.data();
      be->rope(p);
      p.positions = nullptr;
      for (int64_t r = 0; r < rows; ++r) {
        p.x = view_rows(tv(ref, {rows, heads, head_dim}), r, r + 1);
        p.pos_begin = positions[size_t(r)];
        be->rope(p);
      }
      EXPECT_EQ(0, std::memcmp(x.data(), ref.data(), x.size() * sizeof(float))) << "inverse " << inverse << " bf16 " << out_bf16;
    }
  }
}

TEST(CpuRope, RunsEqualPerRunCalls) {
  // The new compressed entries of several sequences in one call: runs at their own positions and
  // steps (an empty run, one past 2^20) against one pos_begin / pos_step call per run and against
  // per-row positions, bit for bit, forward and inverse, with and without bf16 rounding.
  auto be = make_cpu_backend();
  const std::vector<RopeRun> runs = {{0, 3, 0, 4}, {3, 1, 28, 4}, {4, 0, 12, 4}, {4, 2, 1048576, 128}, {6, 1, 5, 1}};
  const int64_t rows = 7, heads = 2, head_dim = 10;
  std::vector<int32_t> positions;
  for (const RopeRun& r : runs)
    for (int64_t i = 0; i < r.num_rows; ++i) positions.push_back(int32_t(r.pos_begin + i * r.pos_step));
  std::vector<float> inv_freq = {1.0f, 0.3f, 0.01f};
  for (bool inverse : {false, true}) {
    for (bool out_bf16 : {false, true}) {
      std::vector<float> x = randn(size_t(rows * heads * head_dim), 3);
      std::vector<float> per_run = x, per_row = x;
      RopeParams p = rope_case(inv_freq, inverse, out_bf16);
      p.x = tv(x, {rows, heads, head_dim});
      p.pos_begin = 99;  // ignored with runs
      p.runs = runs.data();
      p.num_runs = int64_t(runs.size());
      be->rope(p);
      p.runs = nullptr;
      p.num_runs = 0;
      for (const RopeRun& r : runs) {
        p.x = view_rows(tv(per_run, {rows, heads, head_dim}), r.row_begin, r.row_begin + r.num_rows);
        p.pos_begin = r.pos_begin;
        p.pos_step = r.pos_step;
        if (r.num_rows > 0) be->rope(p);
      }
      p.x = tv(per_row, {rows, heads, head_dim});
      p.positions = positions.data();
      be->rope(p);
      EXPECT_EQ(0, std::memcmp(x.data(), per_run.data(), x.size() * sizeof(float))) << "inverse " << inverse << " bf16 " << out_bf16;
      EXPECT_EQ(0, std::memcmp(x.data(), per_row.data(), x.size() * sizeof(float))) << "inverse " << inverse << " bf16 " << out_bf16;
    }
  }
}

TEST(CpuHc, PreSinkhornPostAndHead) {
  auto be = make_cpu_backend();
  const int n = 3, hc = 4, d = 8, nmix = (2 + hc) * hc;
  std::vector<float> x = randn(size_t(n * hc * d), 2);
  std::vector<float> fn = randn(size_t(nmix * hc * d), 3, 0.3f), base = randn(size_t(nmix), 4, 0.5f);
  std::vector<float> scale = {0.7f, 1.1f, 0.9f};
  std::vector<float> a(static_cast<size_t>(n * d)), post(size_t(n * hc)), comb(size_t(n * hc * hc));
  HcPreParams p;
  p.x = tv(x, {n, hc, d});
  p.fn = upload_f32(*be, fn, nmix, hc * d);
  p.base = upload_f32(*be, base, 1, nmix);
  p.scale = upload_f32(*be, scale, 1, 3);
  p.a = tv(a, {n, d});
  p.post = tv(post, {n, hc});
  p.comb = tv(comb, {n, hc, hc});
  be->hc_pre(p);
  for (int t = 0; t < n; ++t) {
    const float* xt = &x[size_t(t * hc * d)];
    double ss = 0;
    for (int i = 0; i < hc * d; ++i) ss += double(xt[i]) * xt[i];
    const double rs = 1.0 / std::sqrt(ss / (hc * d) + 1e-6);
    std::vector<double> mix(static_cast<size_t>(nmix));
    for (int m = 0; m < nmix; ++m) {
      double s = 0;
      for (int i = 0; i < hc * d; ++i) s += double(fn[size_t(m * hc * d + i)]) * xt[i];
      mix[size_t(m)] = s * rs;
    }
    for (int j = 0; j < hc; ++j) {
      const double pre = 1 / (1 + std::exp(-(mix[size_t(j)] * scale[0] + base[size_t(j)]))) + 1e-6;
      const double pst = 2 / (1 + std::exp(-(mix[size_t(hc + j)] * scale[1] + base[size_t(hc + j)])));
      EXPECT_NEAR(post[size_t(t * hc + j)], pst, 1e-5);
      for (int k = 0; k < d; ++k) {
        double av = 0;
        for (int jj = 0; jj < hc; ++jj) {
          const double pj = 1 / (1 + std::exp(-(mix[size_t(jj)] * scale[0] + base[size_t(jj)]))) + 1e-6;
          av += pj * xt[jj * d + k];
        }
        EXPECT_NEAR(a[size_t(t * d + k)], av, 1e-4);
      }
      (void)pre;
    }
    // Sinkhorn: columns sum to 1 after the last (column) step, rows to ~1.
    for (int k = 0; k < hc; ++k) {
      double col = 0, row = 0;
      for (int j = 0; j < hc; ++j) {
        col += comb[size_t(t * 16 + j * hc + k)];
        row += comb[size_t(t * 16 + k * hc + j)];
        EXPECT_GT(comb[size_t(t * 16 + j * hc + k)], 0.0f);
      }
      EXPECT_NEAR(col, 1.0, 1e-5);
      EXPECT_NEAR(row, 1.0, 1e-3);
    }
  }
  // hc_post: x_new[k] = post[k] o + Σ_j comb[j][k] x[j]
  std::vector<float> o = randn(size_t(n * d), 5), xn(size_t(n * hc * d));
  HcPostParams q;
  q.o = tv(o, {n, d});
  q.x_old = p.x;
  q.post = p.post;
  q.comb = p.comb;
  q.x_new = tv(xn, {n, hc, d});
  be->hc_post(q);
  for (int t = 0; t < n; ++t)
    for (int k = 0; k < hc; ++k)
      for (int i = 0; i < d; ++i) {
        double v = double(post[size_t(t * hc + k)]) * o[size_t(t * d + i)];
        for (int j = 0; j < hc; ++j) v += double(comb[size_t(t * 16 + j * hc + k)]) * x[size_t((t * hc + j) * d + i)];
        EXPECT_NEAR(xn[size_t((t * hc + k) * d + i)], v, 1e-5);
      }
  // hc_head with its own fn [hc, hc*d]: y = Σ_j (sigmoid(mix_j * scale + base_j) + eps) x_j
  std::vector<float> hfn(fn.begin(), fn.begin() + hc * hc * d), hbase(base.begin(), base.begin() + hc), hs = {1.3f};
  std::vector<float> y(static_cast<size_t>(n * d));
  HcHeadParams h;
  h.x = p.x;
  h.fn = upload_f32(*be, hfn, hc, hc * d);
  h.base = upload_f32(*be, hbase, 1, hc);
  h.scale = upload_f32(*be, hs, 1, 1);
  h.y = tv(y, {n, d});
  be->hc_head(h);
  for (int t = 0; t < n; ++t) {
    const float* xt = &x[size_t(t * hc * d)];
    double ss = 0;
    for (int i = 0; i < hc * d; ++i) ss += double(xt[i]) * xt[i];
    const double rs = 1.0 / std::sqrt(ss / (hc * d) + 1e-6);
    for (int i = 0; i < d; ++i) {
      double v = 0;
      for (int j = 0; j < hc; ++j) {
        double m = 0;
        for (int c = 0; c < hc * d; ++c) m += double(hfn[size_t(j * hc * d + c)]) * xt[c];
        v += (1 / (1 + std::exp(-(m * rs * 1.3 + hbase[size_t(j)]))) + 1e-6) * xt[j * d + i];
      }
      EXPECT_NEAR(y[size_t(t * d + i)], v, 1e-5);
    }
  }
}

TEST(CpuLinear, DenseGroupedAndStrided) {
  auto be = make_cpu_backend();
  std::vector<float> x = {1, 2, 3, 4, 5, 6};   // [2, 3]
  std::vector<float> w = {1, 0, -1, 2, 1, 0};  // [2, 3]
  std::vector<float> y = {100, 100, 100, 100, 100, 100};  // [2, 3] buffer, write cols 1..2
  LinearParams p;
  p.x = tv(x, {2, 3});
  p.w = upload_f32(*be, w, 2, 3);
  p.y = view_cols(tv(y, {2, 3}), 1, 3);
  be->linear(p);
  EXPECT_EQ(y, (std::vector<float>{100, -2, 4, 100, -2, 13}));
  p.accumulate = true;
  be->linear(p);
  EXPECT_EQ(y, (std::vector<float>{100, -4, 8, 100, -4, 26}));
  // grouped: 2 groups, in 2, out 1: y[g] = x[g] . w[g]
  std::vector<float> gx = {1, 2, 3, 4}, gw = {1, 1, 2, -1}, gy(2);
  GroupedLinearParams g;
  g.x = tv(gx, {1, 2, 2});
  g.w = upload_f32(*be, gw, 2, 2);
  g.y = tv(gy, {1, 2, 1});
  be->grouped_linear(g);
  EXPECT_EQ(gy, (std::vector<float>{3, 2}));
}

TEST(CpuLinear, Fp8ActivationQuantization) {
  // One 128-block with amax 1000: s = 2^ceil(log2(1000/448)) = 4; 0.3/4 = 0.075 -> e4m3 0.078125
  // -> 0.3125; -1000/4 = -250 -> -256 -> -1024. Weight = unit row picks the element.
  auto be = make_cpu_backend();
  std::vector<float> x(128, 0.0f);
  x[0] = 0.3f;
  x[1] = -1000.0f;
  std::vector<float> w(256, 0.0f);
  w[0] = 1;
  w[128 + 1] = 1;
  std::vector<float> y(2);
  LinearParams p;
  p.x = tv(x, {1, 128});
  p.w = upload_f32(*be, w, 2, 128);
  p.y = tv(y, {1, 2});
  p.act_quant_fp8 = true;
  be->linear(p);
  EXPECT_EQ(y[0], 0.3125f);
  EXPECT_EQ(y[1], -1024.0f);
}

TEST(CpuQdq, HandWorkedFp8Fp4Bf16) {
  auto be = make_cpu_backend();
  {  // fp8 block 64 over 64 values, amax 1000 -> scale 4 (as above); all-zero block stays zero
    std::vector<float> x(128, 0.0f);
    x[0] = 0.3f;
    x[1] = -1000.0f;
    x[2] = 8.0f;  // 8/4 = 2 exact
    QdqParams p;
    p.x = tv(x, {1, 128});
    p.format = QdqFormat::kFp8E4M3;
    p.block = 64;
    be->qdq(p);
    EXPECT_EQ(x[0], 0.3125f);
    EXPECT_EQ(x[1], -1024.0f);
    EXPECT_EQ(x[2], 8.0f);
    EXPECT_EQ(x[64], 0.0f);
  }
  {  // fp4 block 32 with amax 6 -> scale 1: ties to even code (spec §2.3)
    std::vector<float> x(32, 0.0f);
    const float in[] = {6, 2.5f, 5, 0.25f, 0.75f, 1.25f, 3.5f, -2.5f, -7.0f};
    const float out[] = {6, 2, 4, 0, 1, 1, 4, -2, -6};
    for (int i = 0; i < 9; ++i) x[size_t(i)] = in[i];
    x[8] = -6.0f;  // keep amax 6
    QdqParams p;
    p.x = tv(x, {1, 32});
    p.format = QdqFormat::kFp4E2M1;
    p.block = 32;
    be->qdq(p);
    for (int i = 0; i < 8; ++i) EXPECT_EQ(x[size_t(i)], out[i]) << "element " << i;
  }
  {  // fp4 with amax 12 -> scale 2: 5 -> 2.5 -> 2 -> 4; 7 -> 3.5 -> 4 -> 8
    std::vector<float> x(32, 0.0f);
    x[0] = 12;
    x[1] = 5;
    x[2] = 7;
    QdqParams p;
    p.x = tv(x, {1, 32});
    p.format = QdqFormat::kFp4E2M1;
    p.block = 32;
    be->qdq(p);
    EXPECT_EQ(x[0], 12.0f);
    EXPECT_EQ(x[1], 4.0f);
    EXPECT_EQ(x[2], 8.0f);
  }
  {  // bf16: 1 + 2^-8 is half an ulp -> ties to even (1); 1 + 3*2^-8 -> 1 + 2^-6
    std::vector<float> x = {1.0f + std::ldexp(1.0f, -8), 1.0f + 3 * std::ldexp(1.0f, -8)};
    QdqParams p;
    p.x = tv(x, {1, 2});
    p.format = QdqFormat::kBf16;
    be->qdq(p);
    EXPECT_EQ(x[0], 1.0f);
    EXPECT_EQ(x[1], 1.0f + std::ldexp(1.0f, -6));
  }
}

TEST(CpuUpload, DequantizesFp8AndFp4) {
  auto be = make_cpu_backend();
  // FP8 [2, 130]: two column blocks with scales 2^1 and 2^-2 (e8m0 128 and 125).
  std::vector<uint8_t> w8(260);
  for (int r = 0; r < 2; ++r)
    for (int c = 0; c < 130; ++c) w8[size_t(r * 130 + c)] = f32_to_e4m3(float((c % 7) - 3) * 0.5f);
  const uint8_t s8[] = {128, 125};
  WeightSource s;
  s.name = "fp8";
  s.dtype = DType::kF8E4M3;
  s.rows = 2;
  s.cols = 130;
  s.data = w8.data();
  s.scale = s8;
  WeightView w = be->upload_weight(s);
  const float* f = static_cast<const float*>(w.data);
  EXPECT_EQ(f[5], float((5 % 7) - 3) * 0.5f * 2.0f);
  EXPECT_EQ(f[130 + 129], float((129 % 7) - 3) * 0.5f * 0.25f);
  // FP4 [1, 64]: low nibble = even element; codes 3 (1.5) and 0xA (-1); scales 2^0, 2^3.
  std::vector<uint8_t> w4(32, 0xA3);
  const uint8_t s4[] = {127, 130};
  s.name = "fp4";
  s.dtype = DType::kFP4;
  s.rows = 1;
  s.cols = 64;
  s.data = w4.data();
  s.scale = s4;
  w = be->upload_weight(s);
  f = static_cast<const float*>(w.data);
  EXPECT_EQ(f[0], 1.5f);
  EXPECT_EQ(f[1], -1.0f);
  EXPECT_EQ(f[32], 12.0f);
  EXPECT_EQ(f[33], -8.0f);
}

TEST(CpuElementwise, SwigluEmbeddingAdd) {
  auto be = make_cpu_backend();
  std::vector<float> g = {20, -1, 0.5f}, u = {-30, 2, 0.25f}, h(3), rw = {2};
  SwigluParams p;
  p.gate = tv(g, {1, 3});
  p.up = tv(u, {1, 3});
  p.h = tv(h, {1, 3});
  p.row_weight = tv(rw, {1});
  p.limit = 10;
  be->swiglu(p);
  auto silu = [](double v) { return v / (1 + std::exp(-v)); };
  EXPECT_NEAR(h[0], silu(10) * -10 * 2, 1e-4);  // gate clamped to 10, up to -10
  EXPECT_NEAR(h[1], silu(-1) * 2 * 2, 1e-6);
  EXPECT_NEAR(h[2], silu(0.5) * 0.25 * 2, 1e-6);
  std::vector<float> table = {0, 1, 10, 11, 20, 21};
  std::vector<int32_t> ids = {2, 0};
  std::vector<float> out(8);
  EmbeddingParams e;
  e.table = upload_f32(*be, table, 3, 2);
  e.ids = tvi(ids, {2});
  e.out = tv(out, {2, 2, 2});
  be->embedding(e);
  EXPECT_EQ(out, (std::vector<float>{20, 21, 20, 21, 0, 1, 0, 1}));
  std::vector<float> a = {1, 2}, b = {3, 4};
  AddParams ap;
  ap.a = tv(a, {1, 2});
  ap.b = tv(b, {1, 2});
  ap.out = ap.a;
  be->add(ap);
  EXPECT_EQ(a, (std::vector<float>{4, 6}));
}

// --- batched row copies --------------------------------------------------------------------------

// Copies of every dtype between column slices of wider tables (strided rows, odd byte offsets),
// row counts from 0 to 37: copy_rows_batch leaves every buffer exactly as one copy_rows per copy
// does, and each destination holds its source rows, byte for byte, with nothing else touched.
TEST(CpuCopyRowsBatch, EqualsCopyRowsPerCopy) {
  auto be = make_cpu_backend();
  struct Case {
    DType dtype;
    int64_t rows, src_width, src_col, dst_width, dst_col, cols;
  };
  const std::vector<Case> cases = {
      {DType::kF32, 5, 8, 0, 8, 0, 8},  {DType::kF32, 1, 12, 3, 7, 2, 4},    {DType::kBF16, 37, 9, 1, 11, 5, 6},
      {DType::kU8, 3, 23, 5, 31, 7, 17}, {DType::kI32, 0, 4, 0, 4, 0, 4},    {DType::kU8, 2, 584, 0, 600, 3, 584},
      {DType::kI32, 9, 6, 1, 3, 0, 3},  {DType::kBF16, 0, 5, 0, 5, 1, 3},
  };
  std::vector<std::vector<uint8_t>> src(cases.size()), batched(cases.size()), each(cases.size());
  std::vector<RowCopy> copies, copies_each;
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    const size_t es = dtype_size(c.dtype);
    std::mt19937_64 rng(100 + i);
    src[i].resize(size_t(c.rows * c.src_width) * es + 1);
    for (uint8_t& b : src[i]) b = uint8_t(rng());
    batched[i].assign(size_t(c.rows * c.dst_width) * es + 1, uint8_t(0xA5));
    each[i] = batched[i];
    auto cols = [&](std::vector<uint8_t>& buf, int64_t width, int64_t col) {
      return view_cols(TensorView(buf.data(), c.dtype, {c.rows, width}), col, col + c.cols);
    };
    copies.push_back({cols(batched[i], c.dst_width, c.dst_col), cols(src[i], c.src_width, c.src_col)});
    copies_each.push_back({cols(each[i], c.dst_width, c.dst_col), cols(src[i], c.src_width, c.src_col)});
  }
  be->copy_rows_batch(copies.data(), copies.size());
  for (const RowCopy& c : copies_each) be->copy_rows(c.dst, c.src);
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    const size_t es = dtype_size(c.dtype);
    EXPECT_EQ(batched[i], each[i]) << "copy " << i;
    std::vector<uint8_t> expect(batched[i].size(), uint8_t(0xA5));
    for (int64_t r = 0; r < c.rows; ++r)
      std::memcpy(&expect[size_t(r * c.dst_width + c.dst_col) * es], &src[i][size_t(r * c.src_width + c.src_col) * es],
                  size_t(c.cols) * es);
    EXPECT_EQ(batched[i], expect) << "copy " << i;
  }
  be->copy_rows_batch(nullptr, 0);  // an empty batch is no copy at all
}

}  // namespace
}  // namespace v4rt::kernels
