// SPDX-License-Identifier: MIT
// The GEMM paths of the CUDA backend: act_quant (bit-exact against a host implementation of spec
// §2.2), the cuBLASLt FP8 block-scaled GEMM against an fp64 host reference (N > 128 so several
// weight block rows are exercised, odd M, K/128 not a multiple of 4, and every scale-layout
// variant reported so the validated one is on record), the grouped FP4 expert GEMM against an fp64
// host dequantization, and the backend's linear / grouped_linear / moe_experts against the CPU
// reference with the official numerics flags.
#include <cmath>
#include <cstring>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/fp4_gemm.h"
#include "kernels/cuda/fp8_gemm.h"
#include "kernels/cuda/gemv.h"
#include "tests/cuda/cuda_test_util.h"

namespace v4rt::kernels::cuda_test {
namespace {

using cuda::DeviceBuffer;

// Host act_quant: per row, per 128-block power-of-two scale and e4m3 codes.
void host_act_quant(const std::vector<float>& x, int64_t m, int64_t k, std::vector<uint8_t>* x8, std::vector<float>* s) {
  x8->resize(size_t(m * k));
  s->resize(size_t(m * (k / 128)));
  for (int64_t r = 0; r < m; ++r)
    for (int64_t b = 0; b < k / 128; ++b) {
      float amax = 0.f;
      for (int i = 0; i < 128; ++i) amax = std::max(amax, std::fabs(x[size_t(r * k + b * 128 + i)]));
      float v = std::max(amax, 1e-4f) * (1.0f / 448.0f);
      uint32_t u;
      std::memcpy(&u, &v, 4);
      const int e = int((u >> 23) & 0xff) - 127 + ((u & 0x7fffff) != 0);
      const float sc = std::ldexp(1.0f, e);
      (*s)[size_t(r * (k / 128) + b)] = sc;
      for (int i = 0; i < 128; ++i) (*x8)[size_t(r * k + b * 128 + i)] = f32_to_e4m3(x[size_t(r * k + b * 128 + i)] / sc);
    }
}

// fp64 FP8 block-scaled product, block by block as spec §2.2 states it: codes x8 [m][k] with
// scales xs [m][k/128], weights w8 [n][k] with ue8m0 scales ws [ceil(n/128)][k/128].
std::vector<double> fp8_block_scaled_ref(const std::vector<uint8_t>& x8, const std::vector<float>& xs,
                                         const std::vector<uint8_t>& w8, const std::vector<uint8_t>& ws, int64_t m,
                                         int64_t n, int64_t k) {
  const int64_t kb = k / 128;
  std::vector<double> ref(size_t(m * n));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double acc = 0;
      for (int64_t b = 0; b < kb; ++b) {
        double part = 0;
        for (int64_t t = b * 128; t < (b + 1) * 128; ++t)
          part += double(e4m3_to_f32(x8[size_t(i * k + t)])) * double(e4m3_to_f32(w8[size_t(j * k + t)]));
        acc += part * double(xs[size_t(i * kb + b)]) * double(e8m0_to_f32(ws[size_t((j / 128) * kb + b)]));
      }
      ref[size_t(i * n + j)] = acc;
    }
  return ref;
}

std::vector<uint16_t> to_bf16(const std::vector<float>& v) {
  std::vector<uint16_t> h(v.size());
  for (size_t i = 0; i < v.size(); ++i) h[i] = f32_to_bf16(v[i]);
  return h;
}

template <typename T>
DeviceBuffer to_device(const std::vector<T>& v) {
  DeviceBuffer b(std::max<size_t>(v.size() * sizeof(T), 1));
  b.copy_from_host(v.data(), v.size() * sizeof(T));
  return b;
}

std::vector<float> bf16_download(const DeviceBuffer& b, size_t n) {
  std::vector<uint16_t> h(n);
  b.copy_to_host(h.data(), n * 2);
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = bf16_to_f32(h[i]);
  return v;
}

uint8_t random_e4m3(Rng& rng) {
  for (;;) {
    const uint8_t c = uint8_t(rng.integer(0, 255));
    if ((c & 0x7f) != 0x7f) return c;
  }
}

TEST(CudaGemm, ActQuantBitExact) {
  V4RT_REQUIRE_GPU();
  gpu_backend();
  Rng rng(20);
  const int64_t m = 37, k = 1024;
  std::vector<float> x = rng.normals(m * k, 3.f);
  for (int i = 0; i < 128; ++i) x[size_t(128 + i)] = 0.f;  // an all-zero block: amax floor 1e-4
  x[7] = 1000.f;                                          // a block with a large outlier
  std::vector<uint8_t> ref8;
  std::vector<float> refs;
  host_act_quant(x, m, k, &ref8, &refs);
  DeviceBuffer dx = to_device(to_bf16(x)), d8(size_t(m * k)), ds(size_t(m * (k / 128)) * 4);
  cuda::ActQuantParams q;
  q.x = dx.data();
  q.x_stride = k;
  q.x8 = d8.as<uint8_t>();
  q.scale = ds.as<float>();
  q.scale_m_stride = k / 128;
  q.scale_kb_stride = 1;
  q.num_tokens = m;
  q.k = k;
  cuda::act_quant_fp8(q);
  (void)cudaDeviceSynchronize();
  std::vector<uint8_t> got8(static_cast<size_t>(m * k));
  std::vector<float> gots(static_cast<size_t>(m * (k / 128)));
  d8.copy_to_host(got8.data(), got8.size());
  ds.copy_to_host(gots.data(), gots.size() * 4);
  int64_t bad = 0;
  for (size_t i = 0; i < got8.size(); ++i) bad += got8[i] != ref8[i];
  for (size_t i = 0; i < gots.size(); ++i) bad += gots[i] != refs[i];
  std::printf("[compare] act_quant %lldx%lld mismatching codes+scales=%lld\n", (long long)m, (long long)k, (long long)bad);
  EXPECT_EQ(bad, 0);
}

struct Fp8Case { int64_t m, n, k; };

// Runs the FP8 GEMM with a given scale layout; returns max |err| / rms(ref) and prints it.
// path kCublasLt on a shape cuBLASLt does not support: prints that and reports *supported = false.
double fp8_gemm_error(const Fp8Case& c, const cuda::Fp8ScaleLayout& layout, bool* ok,
                      cuda::Fp8Gemm::Path path = cuda::Fp8Gemm::Path::kAuto, bool* supported = nullptr) {
  Rng rng(uint64_t(c.m * 1000003 + c.n * 31 + c.k));
  std::vector<float> x = rng.normals(c.m * c.k, 2.f);
  std::vector<uint8_t> x8;
  std::vector<float> xs;
  host_act_quant(x, c.m, c.k, &x8, &xs);
  const int64_t nb = (c.n + 127) / 128, kb = c.k / 128;
  std::vector<uint8_t> w8(static_cast<size_t>(c.n * c.k)), ws(size_t(nb * kb));
  for (auto& v : w8) v = random_e4m3(rng);
  for (auto& v : ws) v = uint8_t(rng.integer(118, 124));
  const std::vector<double> exact = fp8_block_scaled_ref(x8, xs, w8, ws, c.m, c.n, c.k);
  const std::vector<float> ref(exact.begin(), exact.end());
  // Device layouts.
  const int64_t act_ld = layout.act_ld(c.m), w_ld = layout.weight_ld(c.k);
  std::vector<float> xs_dev(size_t(kb * act_ld), 1.f), ws_dev(size_t(nb * w_ld), 1.f);
  for (int64_t i = 0; i < c.m; ++i)
    for (int64_t b = 0; b < kb; ++b) xs_dev[size_t(b * act_ld + i)] = xs[size_t(i * kb + b)];
  for (int64_t r = 0; r < nb; ++r)
    for (int64_t b = 0; b < kb; ++b) ws_dev[size_t(r * w_ld + b)] = e8m0_to_f32(ws[size_t(r * kb + b)]);
  DeviceBuffer dx8 = to_device(x8), dxs = to_device(xs_dev), dw8 = to_device(w8), dws = to_device(ws_dev);
  DeviceBuffer out(size_t(c.m * c.n) * 2);
  out.fill_bytes(0xff);  // poison: NaN bf16
  cuda::Fp8ScaleLayout saved = cuda::fp8_scale_layout();
  cuda::fp8_scale_layout() = layout;
  cuda::Fp8Gemm gemm;
  cuda::Fp8GemmParams p;
  p.x8 = dx8.as<uint8_t>();
  p.x_scale = dxs.as<float>();
  p.w8 = dw8.as<uint8_t>();
  p.w_scale = dws.as<float>();
  p.out = out.as<uint16_t>();
  p.m = c.m;
  p.n = c.n;
  p.k = c.k;
  if (supported) *supported = gemm.cublas_supports(p);
  if (path == cuda::Fp8Gemm::Path::kCublasLt && !gemm.cublas_supports(p)) {
    cuda::fp8_scale_layout() = saved;
    std::printf("[cublaslt] m=%lld n=%lld k=%lld act_align=%d w_align=%d: no algorithm\n", (long long)c.m,
                (long long)c.n, (long long)c.k, layout.act_m_align, layout.weight_kb_align);
    *ok = false;
    return 0;
  }
  const cuda::Fp8Gemm::Path taken = gemm.run(p, path);
  (void)cudaDeviceSynchronize();
  cuda::fp8_scale_layout() = saved;
  const std::vector<float> got = bf16_download(out, size_t(c.m * c.n));
  char name[160];
  std::snprintf(name, sizeof(name), "fp8_gemm %s m%lld n%lld k%lld act_al%d w_al%d",
                taken == cuda::Fp8Gemm::Path::kSimt ? "simt" : "cublaslt", (long long)c.m, (long long)c.n,
                (long long)c.k, layout.act_m_align, layout.weight_kb_align);
  const auto res = compare(name, got, ref, {8e-3, 2e-3, 2e-5});
  *ok = bool(res);
  double ss = 0, me = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    ss += double(ref[i]) * ref[i];
    me = std::max(me, std::fabs(double(got[i]) - ref[i]));
  }
  return me / std::sqrt(ss / double(ref.size()));
}

TEST(CudaGemm, Fp8BlockScaledVsFp64) {
  V4RT_REQUIRE_GPU();
  gpu_backend();
  const cuda::Fp8ScaleLayout def = cuda::fp8_scale_layout();
  for (const Fp8Case& c : {Fp8Case{1, 256, 512}, Fp8Case{7, 384, 1024}, Fp8Case{33, 1024, 384}, Fp8Case{128, 512, 640},
                           Fp8Case{200, 4096, 1024}, Fp8Case{64, 1024, 1024}}) {
    for (auto path : {cuda::Fp8Gemm::Path::kAuto, cuda::Fp8Gemm::Path::kSimt}) {
      bool ok = false;
      fp8_gemm_error(c, def, &ok, path);
      EXPECT_TRUE(ok) << "FP8 GEMM (default layout, path " << int(path) << ") fails for m=" << c.m << " n=" << c.n
                      << " k=" << c.k;
    }
  }
}

// The decode GEMV (gemv.h) on FP8 weights, both entries (fp8_gemm_simt on e4m3 codes; gemv on
// bf16/f32 rows it quantizes itself, with the output add fused), bit for bit the three launches it replaces: act_quant_fp8, the tiled
// CUDA-core kernel (fp8_gemm_simt at 9 rows, the first m of them the test's) and the add as
// launch_add_into does it (computed here on the host). Every channel-group shape (k <= 1024: 4
// channels a warp step, 2048: 2, 4096-8192: 1), m = 1..8, n not a multiple of the group, bf16 or
// f32 inputs and outputs, accumulate and round.
TEST(CudaGemm, Fp8GemvBitsMatchQuantTiledAdd) {
  V4RT_REQUIRE_GPU();
  gpu_backend();
  struct Case { int64_t m, n, k; bool x_bf16, y_bf16, acc, round; };
  const Case cases[] = {{1, 1024, 4096, true, true, false, false}, {1, 576, 4096, true, false, true, true},
                        {2, 8192, 1024, true, true, false, false}, {3, 1000, 8192, false, false, false, true},
                        {5, 4000, 2048, true, true, true, false},  {8, 384, 512, true, false, true, true},
                        {8, 2048, 4096, false, true, false, false}, {4, 130, 384, true, false, false, false}};
  const cuda::Fp8ScaleLayout& layout = cuda::fp8_scale_layout();
  for (const Case& c : cases) {
    Rng rng(uint64_t(c.m * 7919 + c.n * 31 + c.k));
    constexpr int64_t kTiledRows = 9;  // > the GEMV's 8: fp8_gemm_simt takes its tiled kernel
    std::vector<float> x = rng.normals(kTiledRows * c.k, 2.f);
    for (int64_t i = c.m * c.k; i < kTiledRows * c.k; ++i) x[size_t(i)] = 0.f;
    for (int i = 0; i < 128; ++i) x[size_t(i)] = 0.f;  // an all-zero block: the amax floor
    x[size_t(c.k / 2)] = 900.f;                        // an outlier block
    if (c.x_bf16)
      for (auto& v : x) v = bf16_to_f32(f32_to_bf16(v));
    const int64_t nb = (c.n + 127) / 128, kb = c.k / 128, w_ld = layout.weight_ld(c.k);
    std::vector<uint8_t> w8(size_t(c.n * c.k));
    for (auto& v : w8) v = random_e4m3(rng);
    std::vector<float> ws(size_t(nb * w_ld), 1.f);
    for (int64_t r = 0; r < nb; ++r)
      for (int64_t b = 0; b < kb; ++b) ws[size_t(r * w_ld + b)] = e8m0_to_f32(uint8_t(rng.integer(118, 124)));
    std::vector<float> y0 = rng.normals(c.m * c.n);
    if (c.y_bf16)
      for (auto& v : y0) v = bf16_to_f32(f32_to_bf16(v));
    DeviceBuffer dx = c.x_bf16 ? to_device(to_bf16(x)) : to_device(x), dw8 = to_device(w8), dws = to_device(ws);
    // The three launches: act_quant, the tiled kernel, the add (host).
    const int64_t act_ld = layout.act_ld(kTiledRows);
    DeviceBuffer d8(size_t(kTiledRows * c.k)), dxs(size_t(kb * act_ld) * 4), tiled(size_t(kTiledRows * c.n) * 2);
    cuda::ActQuantParams q;
    q.x = dx.data();
    q.x_stride = c.k;
    q.x_bf16 = c.x_bf16;
    q.x8 = d8.as<uint8_t>();
    q.scale = dxs.as<float>();
    q.scale_m_stride = 1;
    q.scale_kb_stride = act_ld;
    q.num_tokens = kTiledRows;
    q.k = c.k;
    cuda::act_quant_fp8(q);
    cuda::Fp8GemmParams g;
    g.x8 = d8.as<uint8_t>();
    g.x_scale = dxs.as<float>();
    g.w8 = dw8.as<uint8_t>();
    g.w_scale = dws.as<float>();
    g.out = tiled.as<uint16_t>();
    g.m = kTiledRows;
    g.n = c.n;
    g.k = c.k;
    cuda::fp8_gemm_simt(g);
    std::vector<uint16_t> tiled_h(size_t(kTiledRows * c.n));
    (void)cudaDeviceSynchronize();
    tiled.copy_to_host(tiled_h.data(), tiled_h.size() * 2);
    // fp8_gemm_simt at m rows (the GEMV on the same codes: its act_ld is act_ld(m)).
    const int64_t gemv_ld = layout.act_ld(c.m);
    std::vector<float> xs_h(size_t(kb * act_ld)), xs_m(size_t(kb * gemv_ld), 1.f);
    dxs.copy_to_host(xs_h.data(), xs_h.size() * 4);
    for (int64_t b = 0; b < kb; ++b)
      for (int64_t t = 0; t < c.m; ++t) xs_m[size_t(b * gemv_ld + t)] = xs_h[size_t(b * act_ld + t)];
    DeviceBuffer dxs_m = to_device(xs_m), gemv_out(size_t(c.m * c.n) * 2);
    g.x_scale = dxs_m.as<float>();
    g.out = gemv_out.as<uint16_t>();
    g.m = c.m;
    cuda::fp8_gemm_simt(g);
    // gemv on the rows, y holding y0.
    const size_t y_bytes = size_t(c.m * c.n) * (c.y_bf16 ? 2 : 4);
    DeviceBuffer dy = c.y_bf16 ? to_device(to_bf16(y0)) : to_device(y0);
    cuda::GemvParams f;
    f.input = cuda::GemvParams::Input::kQuant;
    f.x = dx.data();
    f.x_stride = c.k;
    f.x_bf16 = c.x_bf16;
    f.w = dw8.data();
    f.w_scale = dws.as<float>();
    f.w_ld = w_ld;
    f.y = dy.data();
    f.y_stride = c.n;
    f.y_bf16 = c.y_bf16;
    f.accumulate = c.acc;
    f.round = c.round;
    f.round_product = true;
    f.m = c.m;
    f.n = c.n;
    f.k = f.k_act = c.k;
    cuda::gemv(f);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    std::vector<uint16_t> gemv_h(size_t(c.m * c.n));
    gemv_out.copy_to_host(gemv_h.data(), gemv_h.size() * 2);
    std::vector<uint8_t> got(y_bytes);
    dy.copy_to_host(got.data(), y_bytes);
    int64_t bad_codes = 0, bad_fused = 0;
    for (int64_t t = 0; t < c.m; ++t)
      for (int64_t j = 0; j < c.n; ++j) {
        const size_t i = size_t(t * c.n + j);
        const uint16_t ref = tiled_h[i];
        bad_codes += gemv_h[i] != ref;
        const float v = bf16_to_f32(ref), sum = c.acc ? y0[i] + v : v;
        if (c.y_bf16) {
          uint16_t h;
          std::memcpy(&h, got.data() + 2 * i, 2);
          bad_fused += h != f32_to_bf16(sum);
        } else {
          const float want = c.round ? bf16_to_f32(f32_to_bf16(sum)) : sum;
          float h;
          std::memcpy(&h, got.data() + 4 * i, 4);
          bad_fused += std::memcmp(&h, &want, 4) != 0;
        }
      }
    std::printf("[compare] fp8 gemv m%lld n%lld k%lld %s->%s%s%s: %lld (codes) and %lld (fused) of %lld outputs differ "
                "from act_quant + tiled kernel + add\n",
                (long long)c.m, (long long)c.n, (long long)c.k, c.x_bf16 ? "bf16" : "f32", c.y_bf16 ? "bf16" : "f32",
                c.acc ? " acc" : "", c.round ? " round" : "", (long long)bad_codes, (long long)bad_fused,
                (long long)(c.m * c.n));
    EXPECT_EQ(bad_codes, 0);
    EXPECT_EQ(bad_fused, 0);
  }
}

// The decode GEMV on FP8 tensor cores (gemv_mma.cu) against an fp64 reference of the block-scaled
// product, as the cuBLASLt FP8 GEMM is held: both entries (e4m3 codes with their scales; bf16/f32
// rows quantized in the kernel, their codes then the host act_quant's), 1-8 rows, channels not a
// multiple of 16, k of 1 to 64 blocks (the k slices of a channel group: 1, 2, 4, 8), accumulate.
TEST(CudaGemm, Fp8GemvTensorCoresVsFp64) {
  V4RT_REQUIRE_GPU();
  gpu_backend();
  struct Case { int64_t m, n, k; bool quant, acc; };
  const Case cases[] = {{1, 1024, 4096, true, false}, {1, 32768, 1024, true, false}, {2, 100, 384, false, false},
                        {3, 4096, 8192, true, true},  {8, 576, 4096, true, false},   {5, 16, 128, false, true},
                        {7, 2048, 2048, false, false}, {4, 4000, 1024, true, true}};
  const cuda::Fp8ScaleLayout& layout = cuda::fp8_scale_layout();
  for (const Case& c : cases) {
    Rng rng(uint64_t(c.m * 131 + c.n * 7 + c.k));
    std::vector<float> x = rng.normals(c.m * c.k, 2.f);
    for (auto& v : x) v = bf16_to_f32(f32_to_bf16(v));
    x[size_t(c.k / 3)] = 700.f;  // one block with an outlier
    std::vector<uint8_t> x8;
    std::vector<float> xs;
    host_act_quant(x, c.m, c.k, &x8, &xs);
    const int64_t nb = (c.n + 127) / 128, kb = c.k / 128, w_ld = layout.weight_ld(c.k), act_ld = layout.act_ld(c.m);
    std::vector<uint8_t> w8(size_t(c.n * c.k)), ws(size_t(nb * kb));
    for (auto& v : w8) v = random_e4m3(rng);
    for (auto& v : ws) v = uint8_t(rng.integer(118, 124));
    std::vector<float> y0 = rng.normals(c.m * c.n), ref(size_t(c.m * c.n));
    const std::vector<double> exact = fp8_block_scaled_ref(x8, xs, w8, ws, c.m, c.n, c.k);
    for (size_t i = 0; i < ref.size(); ++i) {  // the GEMM's bf16 product, then the add into y (F32 here)
      const float prod = bf16_to_f32(f32_to_bf16(float(exact[i])));
      ref[i] = c.acc ? y0[i] + prod : prod;
    }
    std::vector<float> ws_dev(size_t(nb * w_ld), 1.f), xs_dev(size_t(kb * act_ld), 1.f);
    for (int64_t r = 0; r < nb; ++r)
      for (int64_t b = 0; b < kb; ++b) ws_dev[size_t(r * w_ld + b)] = e8m0_to_f32(ws[size_t(r * kb + b)]);
    for (int64_t i = 0; i < c.m; ++i)
      for (int64_t b = 0; b < kb; ++b) xs_dev[size_t(b * act_ld + i)] = xs[size_t(i * kb + b)];
    DeviceBuffer dx = to_device(to_bf16(x)), dx8 = to_device(x8), dxs = to_device(xs_dev), dw8 = to_device(w8),
                 dws = to_device(ws_dev), dy = to_device(y0);
    cuda::GemvParams g;
    g.input = c.quant ? cuda::GemvParams::Input::kQuant : cuda::GemvParams::Input::kCodes;
    g.x = dx.data();
    g.x_stride = c.k;
    g.x8 = dx8.as<uint8_t>();
    g.x_scale = dxs.as<float>();
    g.act_ld = act_ld;
    g.w = dw8.data();
    g.w_scale = dws.as<float>();
    g.w_ld = w_ld;
    g.y = dy.data();
    g.y_stride = c.n;
    g.y_bf16 = false;
    g.accumulate = c.acc;
    g.round_product = true;
    g.m = c.m;
    g.n = c.n;
    g.k = g.k_act = c.k;
    g.tensor_cores = true;
    ASSERT_TRUE(cuda::gemv_mma_serves(g));
    cuda::gemv(g);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    std::vector<float> got(size_t(c.m * c.n));
    dy.copy_to_host(got.data(), got.size() * 4);
    char name[160];
    std::snprintf(name, sizeof(name), "fp8 gemv tensor cores m%lld n%lld k%lld %s%s", (long long)c.m, (long long)c.n,
                  (long long)c.k, c.quant ? "rows" : "codes", c.acc ? " acc" : "");
    EXPECT_TRUE(compare(name, got, ref, {8e-3, 2e-3, 2e-5}));
  }
}

TEST(CudaGemm, Fp8CublasLtShapeSupport) {
  V4RT_REQUIRE_GPU();
  gpu_backend();
  // Which token counts cuBLASLt's block-scaled FP8 accepts (the rest take the CUDA-core path).
  for (int64_t m : {1, 2, 3, 4, 8, 16, 17, 32, 64, 128, 256}) {
    bool ok = false, supported = false;
    fp8_gemm_error({m, 1024, 1024}, cuda::fp8_scale_layout(), &ok, cuda::Fp8Gemm::Path::kAuto, &supported);
    std::printf("[cublaslt] m=%lld n=1024 k=1024 supported=%d result_ok=%d\n", (long long)m, int(supported), int(ok));
    EXPECT_TRUE(ok);
  }
}

TEST(CudaGemm, Fp8ScaleLayoutProbe) {
  V4RT_REQUIRE_GPU();
  gpu_backend();
  // Records which scale layouts give cuBLASLt's right answer for odd M and K/128 = 3 / 5
  // (informational: the default layout is asserted by Fp8BlockScaledVsFp64).
  for (const Fp8Case& c : {Fp8Case{5, 256, 384}, Fp8Case{13, 384, 640}, Fp8Case{64, 256, 384}}) {
    int good = 0;
    for (int am : {1, 4})
      for (int wk : {1, 4}) {
        cuda::Fp8ScaleLayout l;
        l.act_m_align = am;
        l.weight_kb_align = wk;
        bool ok = false;
        fp8_gemm_error(c, l, &ok, cuda::Fp8Gemm::Path::kCublasLt);
        std::printf("[layout] m=%lld k=%lld act_m_align=%d weight_kb_align=%d -> %s\n", (long long)c.m, (long long)c.k,
                    am, wk, ok ? "OK" : "WRONG");
        good += ok;
      }
    std::printf("[layout] m=%lld k=%lld: %d of 4 layouts correct\n", (long long)c.m, (long long)c.k, good);
  }
}

TEST(CudaGemm, Fp4GroupedVsHostDequant) {
  V4RT_REQUIRE_GPU();
  gpu_backend();
  Rng rng(21);
  const int64_t n = 288, k = 512;
  const std::vector<int32_t> counts = {0, 1, 3, 9, 20, 2};
  const int groups = int(counts.size());
  std::vector<int32_t> offsets(size_t(groups) + 1, 0);
  for (int g = 0; g < groups; ++g) offsets[size_t(g) + 1] = offsets[size_t(g)] + counts[size_t(g)];
  const int64_t rows = offsets.back();
  std::vector<float> x = rng.normals(rows * k, 1.5f);
  std::vector<uint8_t> x8;
  std::vector<float> xs;
  host_act_quant(x, rows, k, &x8, &xs);
  std::vector<std::vector<uint8_t>> w(static_cast<size_t>(groups)), ws(static_cast<size_t>(groups));
  std::vector<DeviceBuffer> dw, dws;
  std::vector<const uint8_t*> pw, pws;
  for (int g = 0; g < groups; ++g) {
    w[size_t(g)].resize(size_t(n * k / 2));
    ws[size_t(g)].resize(size_t(n * k / 32));
    for (auto& b : w[size_t(g)]) b = uint8_t(rng.integer(0, 255));
    for (auto& s : ws[size_t(g)]) s = uint8_t(rng.integer(120, 130));
    dw.push_back(to_device(w[size_t(g)]));
    dws.push_back(to_device(ws[size_t(g)]));
    pw.push_back(dw.back().as<uint8_t>());
    pws.push_back(dws.back().as<uint8_t>());
  }
  std::vector<float> ref(static_cast<size_t>(rows * n));
  for (int g = 0; g < groups; ++g)
    for (int64_t r = offsets[size_t(g)]; r < offsets[size_t(g) + 1]; ++r)
      for (int64_t j = 0; j < n; ++j) {
        double acc = 0;
        for (int64_t t = 0; t < k; ++t) {
          const double wv = double(fp4_to_f32(fp4_unpack(&w[size_t(g)][size_t(j * k / 2)], t))) *
                            double(e8m0_to_f32(ws[size_t(g)][size_t(j * (k / 32) + t / 32)]));
          acc += wv * double(e4m3_to_f32(x8[size_t(r * k + t)])) * double(xs[size_t(r * (k / 128) + t / 128)]);
        }
        ref[size_t(r * n + j)] = float(acc);
      }
  DeviceBuffer dx8 = to_device(x8), dxs = to_device(xs), doff = to_device(offsets), dpw = to_device(pw),
               dpws = to_device(pws), out(size_t(rows * n) * 2);
  out.fill_bytes(0xff);
  cuda::Fp4GroupedGemmParams p;
  p.x8 = dx8.as<uint8_t>();
  p.x_scale = dxs.as<float>();
  p.row_offsets = doff.as<int32_t>();
  p.w = dpw.as<const uint8_t*>();
  p.w_scale = dpws.as<const uint8_t*>();
  p.out = out.as<uint16_t>();
  p.num_groups = groups;
  p.n = n;
  p.k = k;
  cuda::fp4_grouped_gemm(p);
  (void)cudaDeviceSynchronize();
  EXPECT_TRUE(compare("fp4_grouped_gemm 6 groups n288 k512", bf16_download(out, size_t(rows * n)), ref, {8e-3, 2e-3, 2e-5}));
}

// --- backend projections vs the CPU reference ------------------------------------------------------

// Up to 8 rows with bf16 weights: the decode GEMV (gemv.h); more rows or F32 weights: cuBLASLt.
TEST(CudaGemm, LinearDenseBf16AndF32) {
  V4RT_REQUIRE_GPU();
  Rng rng(22);
  struct Case { int m, n, k; DType wdt, ydt; bool acc; };
  for (const Case& c : {Case{1, 256, 4096, DType::kBF16, DType::kF32, false}, Case{17, 300, 512, DType::kBF16, DType::kBF16, false},
                        Case{64, 129, 256, DType::kBF16, DType::kF32, true}, Case{5, 24, 1024, DType::kF32, DType::kF32, false},
                        Case{3, 40, 256, DType::kF32, DType::kBF16, true}, Case{2, 576, 1024, DType::kBF16, DType::kF32, true},
                        Case{8, 1000, 2048, DType::kBF16, DType::kBF16, true}, Case{4, 64, 8192, DType::kBF16, DType::kF32, false}}) {
    std::vector<uint16_t> keep;
    DualWeight w = upload_f32(rng.normals(int64_t(c.n) * c.k, 0.05f), c.n, c.k, c.wdt, &keep);
    Dual x = make_dual({c.m, c.k}, rng.normals(int64_t(c.m) * c.k));
    Dual y = make_dual({c.m, c.n}, rng.normals(int64_t(c.m) * c.n), c.ydt);
    LinearParams p;
    p.accumulate = c.acc;
    p.x = x.cpu; p.w = w.cpu; p.y = y.cpu;
    cpu_backend().linear(p);
    p.x = x.gpu; p.w = w.gpu; p.y = y.gpu;
    gpu_backend().linear(p);
    char name[128];
    std::snprintf(name, sizeof(name), "linear %s m%d n%d k%d y%s%s", std::string(dtype_name(c.wdt)).c_str(), c.m, c.n, c.k,
                  std::string(dtype_name(c.ydt)).c_str(), c.acc ? " acc" : "");
    EXPECT_TRUE(compare(name, y.gpu_values(), y.cpu_values(), Tolerance{1e-2, 1e-2, 1e-4}));
  }
}

}  // namespace
}  // namespace v4rt::kernels::cuda_test
