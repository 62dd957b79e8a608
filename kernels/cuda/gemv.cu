// SPDX-License-Identifier: MIT
// The decode GEMV (gemv.h). A token's projection reads every weight byte once and does two FLOPs
// per weight, so it is bound by how many of those bytes are in flight. The grid is at most two
// blocks per SM; each warp walks groups of RPW output channels, keeping the RPW x NC 16-byte weight
// loads of its next step in flight while it computes the current one (8 loads a lane: 4 KB a
// warp), the first issued before the block stages its activations. The activations (m rows) are
// staged once per block in shared memory as bf16, with all of a thread's loads issued at once.
//
// FP8 weights: lane l takes 16-input chunks l, l + 32, ... in that order, each chunk's dot with the
// bf16 activations (fp8_dot.cuh) times its 128x128 block scale added into an fp32 accumulator, then
// the warp sum: fp8_gemm_simt's tiled kernel's arithmetic, so the two give the same bits. bf16
// weights: lane l takes 8-input units l, l + 32, ..., each weight times its activation added into
// the accumulator in input order.
#include <atomic>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/fp8_dot.cuh"
#include "kernels/cuda/gemv_args.cuh"
#include "kernels/cuda/launch.cuh"

namespace v4rt::kernels::cuda {

namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kMaxTok = 8;
constexpr int kSmemBytes = 160 * 1024;

// Stages activation rows [0, m) as bf16 in act [m][k_act]: 16 inputs per thread per step (8
// consecutive threads hold one 128-block), two steps' loads issued before the first is converted.
__device__ __forceinline__ void stage(const GemvArgs& a, uint16_t* act) {
  const int kc = a.k_act / 16, total = a.m * kc;
  constexpr int kUnroll = 2;
  for (int base = 0; base < total; base += kThreads * kUnroll) {
    float v[kUnroll][16];
    float s8[kUnroll];
    uint4 q8[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int q = base + u * kThreads + int(threadIdx.x);
      const bool ok = q < total;
      const int t = ok ? q / kc : 0, c = ok ? q % kc : 0;
      if (a.input == GemvParams::Input::kCodes) {
        q8[u] = ok ? __ldg(reinterpret_cast<const uint4*>(a.x8 + int64_t(t) * a.k_act + c * 16)) : make_uint4(0, 0, 0, 0);
        s8[u] = ok ? a.x_scale[(c / 8) * a.act_ld + t] : 0.f;
      } else if (a.x_vec) {
#pragma unroll
        for (int j = 0; j < 16; j += 4) {
          const float4 f = ok ? a.x.ld4(t, c * 16 + j) : make_float4(0.f, 0.f, 0.f, 0.f);
          v[u][j] = f.x, v[u][j + 1] = f.y, v[u][j + 2] = f.z, v[u][j + 3] = f.w;
        }
      } else {
#pragma unroll
        for (int j = 0; j < 16; ++j) v[u][j] = ok ? a.x.ld(t, c * 16 + j) : 0.f;
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int q = base + u * kThreads + int(threadIdx.x);
      uint32_t packed[8];
      if (a.input == GemvParams::Input::kCodes) {  // fp8_simt.cu's staging: code times scale (exact)
        const uint32_t w[4] = {q8[u].x, q8[u].y, q8[u].z, q8[u].w};
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const uint32_t pair = w[j / 2] >> (16 * (j % 2));
          packed[j] = uint32_t(f32_to_bf16(e4m3_to_f32(uint8_t(pair)) * s8[u])) |
                      uint32_t(f32_to_bf16(e4m3_to_f32(uint8_t(pair >> 8)) * s8[u])) << 16;
        }
      } else if (a.input == GemvParams::Input::kQuant) {
        // act_quant of the 128-block held by 8 lanes (act_quant_fp8_kernel's amax, scale and
        // codes), then each code times the scale.
        float amax = 0.f;
#pragma unroll
        for (int j = 0; j < 16; ++j) amax = fmaxf(amax, fabsf(v[u][j]));
        amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
        amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
        amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 4));
        const float s = act_quant_scale(amax, 448.f);
        const float inv = 1.0f / s;
#pragma unroll
        for (int j = 0; j < 8; ++j)
          packed[j] = uint32_t(f32_to_bf16(e4m3_to_f32(f32_to_e4m3(v[u][2 * j] * inv)) * s)) |
                      uint32_t(f32_to_bf16(e4m3_to_f32(f32_to_e4m3(v[u][2 * j + 1] * inv)) * s)) << 16;
      } else {
#pragma unroll
        for (int j = 0; j < 8; ++j)
          packed[j] = uint32_t(f32_to_bf16(v[u][2 * j])) | uint32_t(f32_to_bf16(v[u][2 * j + 1])) << 16;
      }
      if (q < total) {
        uint4* dst = reinterpret_cast<uint4*>(act + (q / kc) * a.k_act + (q % kc) * 16);
        dst[0] = make_uint4(packed[0], packed[1], packed[2], packed[3]);
        dst[1] = make_uint4(packed[4], packed[5], packed[6], packed[7]);
      }
    }
  }
}

// One 16-byte weight load of channel row `act_row` (its activation columns) into acc[0..MT).
template <bool kFp8, int MT>
__device__ __forceinline__ void unit_dot(const uint4& wv, float scale, const uint16_t* act_row, int k_act, int c,
                                         int m, float (&acc)[MT]) {
  if constexpr (kFp8) {
    float wf[16];
    decode_e4m3x16(wv, wf);
#pragma unroll
    for (int t = 0; t < MT; ++t)
      if (t < m) acc[t] = fmaf(dot16_bf16(wf, act_row + t * k_act + c * 16), scale, acc[t]);
  } else {
    const uint32_t ww[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
    for (int t = 0; t < MT; ++t) {
      if (t >= m) continue;
      const uint4 av = *reinterpret_cast<const uint4*>(act_row + t * k_act + c * 8);
      const uint32_t aw[4] = {av.x, av.y, av.z, av.w};
      float s = acc[t];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        s = fmaf(__uint_as_float(ww[j] << 16), __uint_as_float(aw[j] << 16), s);
        s = fmaf(__uint_as_float(ww[j] & 0xffff0000u), __uint_as_float(aw[j] & 0xffff0000u), s);
      }
      acc[t] = s;
    }
  }
}

// RPW output channels per warp step, NC 16-byte loads of each per lane per step, MT >= m.
template <bool kFp8, int RPW, int NC, int MT>
__global__ void __launch_bounds__(kThreads, 2) gemv_kernel(const __grid_constant__ GemvArgs a) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  extern __shared__ uint16_t act[];  // [m][k_act] bf16
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int k = a.k, units = k / (kFp8 ? 16 : 8);  // 16-byte weight loads per channel
  const int steps = (units + 32 * NC - 1) / (32 * NC);
  const int groups = (a.n + RPW - 1) / RPW, warps = int(gridDim.x) * kWarps;
  const int first = int(blockIdx.x) * kWarps + warp;
  const int tasks = first < groups ? (groups - first + warps - 1) / warps * steps : 0;
  // Task i: channels [g * RPW, g * RPW + RPW) of group g = first + (i / steps) * warps, loads
  // lane + 32 * (s * NC + j) of step s = i % steps.
  // A step's weights and (FP8) their block scales, all issued before any is used.
  auto load = [&](int i, uint4 (&buf)[RPW][NC], float (&scl)[RPW][NC]) {
    const int g = first + (i / steps) * warps, s = i % steps;
#pragma unroll
    for (int r = 0; r < RPW; ++r)
#pragma unroll
      for (int j = 0; j < NC; ++j) {
        const int n = g * RPW + r, c = lane + 32 * (s * NC + j);
        const bool ok = n < a.n && c < units;
        buf[r][j] = ok ? __ldg(reinterpret_cast<const uint4*>(a.w + (int64_t(n) * k + c * (kFp8 ? 16 : 8)) * (kFp8 ? 1 : 2)))
                       : make_uint4(0, 0, 0, 0);
        if constexpr (kFp8) scl[r][j] = ok ? __ldg(a.w_scale + (n / 128) * a.w_ld + c / 8) : 0.f;
      }
  };
  uint4 cur[RPW][NC], nxt[RPW][NC];
  float cur_s[RPW][NC], nxt_s[RPW][NC];
  if (tasks > 0) load(0, cur, cur_s);
  stage(a, act);
  __syncthreads();
  float acc[RPW][MT];
#pragma unroll
  for (int r = 0; r < RPW; ++r)
#pragma unroll
    for (int t = 0; t < MT; ++t) acc[r][t] = 0.f;
  for (int i = 0; i < tasks; ++i) {
    if (i + 1 < tasks) load(i + 1, nxt, nxt_s);
    const int g = first + (i / steps) * warps, s = i % steps;
#pragma unroll
    for (int r = 0; r < RPW; ++r) {
      const int n = g * RPW + r;
      const uint16_t* act_row = act + (a.out_group ? (min(n, a.n - 1) / a.out_group) * k : 0);
#pragma unroll
      for (int j = 0; j < NC; ++j) {
        const int c = lane + 32 * (s * NC + j);
        if (n >= a.n || c >= units) continue;
        unit_dot<kFp8, MT>(cur[r][j], cur_s[r][j], act_row, a.k_act, c, a.m, acc[r]);
      }
    }
    if (s == steps - 1) {
#pragma unroll
      for (int r = 0; r < RPW; ++r)
#pragma unroll
        for (int t = 0; t < MT; ++t) {
          float v = warp_sum(acc[r][t]);
          acc[r][t] = 0.f;
          const int n = g * RPW + r;
          if (t < a.m && n < a.n && lane == (r * MT + t) % 32) {
            if (a.round_product) v = round_bf16(v);
            a.y.st(t, n, a.accumulate ? a.y.ld(t, n) + v : v, a.round);
          }
        }
    }
#pragma unroll
    for (int r = 0; r < RPW; ++r)
#pragma unroll
      for (int j = 0; j < NC; ++j) {
        cur[r][j] = nxt[r][j];
        cur_s[r][j] = nxt_s[r][j];
      }
  }
}

template <bool kFp8, int RPW, int NC>
void launch_rows(const GemvArgs& a, cudaStream_t stream) {
  static_assert(RPW * NC == 8, "eight 16-byte loads a lane per step");
  const size_t smem = size_t(a.m) * size_t(a.k_act) * 2;
  const int64_t groups = ceil_div(a.n, RPW);
  const unsigned blocks = unsigned(std::min<int64_t>(ceil_div(groups, kWarps), 2 * int64_t(num_sms())));
  static std::atomic<uint64_t> attr_set[4];  // per <kFp8, RPW, NC>: its four kernels
  int i = 0;
  for (auto* kernel : {gemv_kernel<kFp8, RPW, NC, 1>, gemv_kernel<kFp8, RPW, NC, 2>, gemv_kernel<kFp8, RPW, NC, 4>,
                       gemv_kernel<kFp8, RPW, NC, 8>})
    set_smem_once(kernel, kSmemBytes, false, &attr_set[i++]);
  auto* kernel = a.m == 1 ? gemv_kernel<kFp8, RPW, NC, 1>
                 : a.m == 2 ? gemv_kernel<kFp8, RPW, NC, 2>
                 : a.m <= 4 ? gemv_kernel<kFp8, RPW, NC, 4>
                            : gemv_kernel<kFp8, RPW, NC, 8>;
  launch(kernel, blocks, kThreads, smem, stream)(a);
  launch_check("gemv", stream);
}

// Channels per warp step by 16-byte loads per lane: 4 channels up to 2 loads, 2 up to 4, else 1.
template <bool kFp8>
void launch_gemv(const GemvArgs& a, cudaStream_t stream) {
  const int64_t per_lane = ceil_div(a.k / (kFp8 ? 16 : 8), 32);
  if (per_lane <= 2) launch_rows<kFp8, 4, 2>(a, stream);
  else if (per_lane <= 4) launch_rows<kFp8, 2, 4>(a, stream);
  else launch_rows<kFp8, 1, 8>(a, stream);
}

}  // namespace

int64_t gemv_max_tokens(int64_t k_act) { return std::min<int64_t>(kMaxTok, kSmemBytes / (2 * std::max<int64_t>(k_act, 1))); }

void gemv(const GemvParams& p) {
  if (p.m == 0 || p.n == 0) return;
  if (p.tensor_cores && gemv_mma_serves(p)) {
    gemv_mma(p);
    return;
  }
  CHECK(p.m <= gemv_max_tokens(p.k_act)) << "gemv: m=" << p.m << " rows of " << p.k_act << " do not fit";
  CHECK(p.k % 16 == 0 && p.k_act % 16 == 0) << "gemv: k=" << p.k << " k_act=" << p.k_act;
  CHECK(p.input == GemvParams::Input::kBf16 || p.k_act % 128 == 0) << "gemv: FP8 activations need k_act % 128 == 0";
  CHECK(p.out_group ? p.k_act == ceil_div(p.n, p.out_group) * p.k : p.k_act == p.k)
      << "gemv: k_act=" << p.k_act << " for n=" << p.n << " k=" << p.k << " out_group=" << p.out_group;
  CHECK(p.n < (int64_t(1) << 31) && p.k_act < (int64_t(1) << 24)) << "gemv: n=" << p.n << " k_act=" << p.k_act;
  const GemvArgs a = gemv_args(p);
  if (p.w_scale) launch_gemv<true>(a, p.stream);
  else launch_gemv<false>(a, p.stream);
}

}  // namespace v4rt::kernels::cuda
