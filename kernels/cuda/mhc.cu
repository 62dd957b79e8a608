// SPDX-License-Identifier: MIT
// Manifold-constrained hyper-connections (spec §4): hc_pre (mix GEMV, then Sinkhorn + collapse),
// hc_post (expand + residual mix) and hc_head (final collapse). The mix GEMV is split over blocks
// (columns of fn, about two waves of blocks in all, each thread keeping all (2+hc)*hc partial dot
// products); a second kernel, one block per token, sums the partials and finishes. From 32 tokens
// of fp32 x the mixes come from a cuBLASLt GEMM instead (CudaBackend::hc_pre) and a warp per token
// adds the sum of squares.
#include <algorithm>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/launch_geometry.h"
#include "kernels/cuda/ops.h"

namespace v4rt::kernels::cuda {

namespace {

constexpr int kHc = 4;  // hc_mult of both V4 models
constexpr int kThreads = 256;
constexpr int kFinishThreads = 512;  // threads per token of hc_pre / hc_head
constexpr int kFinishMaxVec = 4;     // chunks of 4 columns a thread keeps in registers (hidden to 8,192)
constexpr int kMaxSplits = 264;      // blocks per token of the mix GEMV, at most (mix_splits)

__device__ __forceinline__ float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

// The mix GEMV of hc_pre / hc_head (kNumMix = 24 / kHc rows of fn over len = hc * hidden inputs)
// split over blocks: block t * splits + split (one x dimension: any number of tokens) sums columns
// [split * cols, (split + 1) * cols) of token t into part[t][split][0, kNumMix) and the sum of
// squares of x into part[t][split][kNumMix].
template <int kNumMix>
__global__ void __launch_bounds__(kThreads) mix_partial_kernel(Act x, Act fn, int64_t len, int64_t cols, int splits,
                                                               float* part) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  __shared__ float red[kNumMix + 1][kThreads / 32];
  const int64_t b = blockIdx.x;
  const int64_t t = b / splits;
  const int64_t c0 = (b % splits) * cols, c1 = min(len, c0 + cols);
  float acc[kNumMix + 1];
#pragma unroll
  for (int m = 0; m <= kNumMix; ++m) acc[m] = 0.f;
  for (int64_t i = c0 + threadIdx.x; i < c1; i += blockDim.x) {
    const float v = x.ld(t, i);
    acc[kNumMix] = fmaf(v, v, acc[kNumMix]);
#pragma unroll
    for (int m = 0; m < kNumMix; ++m) acc[m] = fmaf(fn.ld(m, i), v, acc[m]);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int m = 0; m <= kNumMix; ++m) {
    const float sum = warp_sum(acc[m]);
    if (lane == 0) red[m][warp] = sum;
  }
  __syncthreads();
  if (threadIdx.x <= kNumMix) {
    float sum = 0.f;
    for (int w = 0; w < kThreads / 32; ++w) sum += red[threadIdx.x][w];
    part[b * (kNumMix + 1) + threadIdx.x] = sum;
  }
}

// mix_out[m] = (sum over splits of part[t][.][m]) * rsqrt(mean(x^2) + eps), in shared memory. The
// token's partials are staged in shared memory by coalesced loads, all in flight at once; a warp
// per sum then adds them in the order of a lane per split. sq_warps: the sum of squares as one
// partial per warp of the block in shared memory (written before the call) instead of entry
// kNumMix of the partials, which is then neither read nor summed.
template <int kNumMix>
__device__ void mix_finish(const float* part, int splits, int64_t t, int64_t len, float norm_eps, float* mix_out,
                           const float* sq_warps = nullptr) {
  constexpr int kUnroll = 8;
  __shared__ float stage[kMaxSplits * (kNumMix + 1)];
  __shared__ float total[kNumMix + 1];
  const int cnt = splits * (kNumMix + 1);
  const float* src = part + t * cnt;
  for (int i0 = 0; i0 < cnt; i0 += kUnroll * int(blockDim.x)) {
    float v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int i = i0 + u * int(blockDim.x) + int(threadIdx.x);
      v[u] = i < cnt && (!sq_warps || i % (kNumMix + 1) != kNumMix) ? src[i] : 0.f;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int i = i0 + u * int(blockDim.x) + int(threadIdx.x);
      if (i < cnt) stage[i] = v[u];
    }
  }
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  for (int m = warp; m <= (sq_warps ? kNumMix - 1 : kNumMix); m += nwarps) {  // a warp per sum, lanes over the splits
    float sum = 0.f;
    for (int sp = lane; sp < splits; sp += 32) sum += stage[sp * (kNumMix + 1) + m];
    sum = warp_sum(sum);
    if (lane == 0) total[m] = sum;
  }
  __syncthreads();
  if (threadIdx.x < kNumMix) {
    float sq = total[kNumMix];
    if (sq_warps) {
      sq = 0.f;
      for (int w = 0; w < nwarps; ++w) sq += sq_warps[w];
    }
    mix_out[threadIdx.x] = total[threadIdx.x] / sqrtf(sq / float(len) + norm_eps);
  }
  __syncthreads();
}

// Blocks per token for the mix GEMV: about two waves of blocks in all, at least 256 columns each.
int mix_splits(int64_t n, int64_t len) {
  const int64_t want = ceil_div(kMaxSplits, std::max<int64_t>(n, 1));
  return int(std::max<int64_t>(1, std::min(want, ceil_div(len, 256))));
}

template <int kNumMix>
float* launch_mix_partial(const Act& x, const Act& fn, int64_t n, int64_t len, int splits, cudaStream_t s) {
  CHECK_LE(splits, kMaxSplits) << "hc mix splits";  // mix_finish stages a token's partials in shared memory
  float* part = static_cast<float*>(stream_alloc(size_t(n * splits * (kNumMix + 1)) * 4, s));
  const int64_t cols = ceil_div(len, splits);
  launch(mix_partial_kernel<kNumMix>, grid_x(n * splits, "hc mix_partial"), kThreads, 0, s)(x, fn, len, cols, splits, part);
  launch_check("hc mix_partial", s);
  return part;
}

// part[t][kNumMix] = sum of squares of token t's x (the mix entries come from a GEMM): a warp per token.
template <int kNumMix>
__global__ void __launch_bounds__(kThreads) sum_squares_kernel(Act x, int64_t n, int64_t len, bool vec, float* part) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  const int64_t t = int64_t(blockIdx.x) * (kThreads / 32) + (threadIdx.x >> 5);
  if (t >= n) return;
  const int lane = threadIdx.x & 31;
  float acc = 0.f;
  if (vec) {
    for (int64_t i = int64_t(lane) * 4; i < len; i += 128) {
      const float4 v = x.ld4(t, i);
      acc = fmaf(v.x, v.x, fmaf(v.y, v.y, fmaf(v.z, v.z, fmaf(v.w, v.w, acc))));
    }
  } else {
    for (int64_t i = lane; i < len; i += 32) acc = fmaf(x.ld(t, i), x.ld(t, i), acc);
  }
  acc = warp_sum(acc);
  if (lane == 0) part[t * (kNumMix + 1) + kNumMix] = acc;
}

// Columns [4c, 4c + 4) of stream j of token t (zeros past hidden).
__device__ __forceinline__ float4 ld_chunk(const Act& x, int64_t t, int j, int64_t c, int64_t hidden, bool vec) {
  return x.ld4_part(t, j * hidden + 4 * c, hidden - 4 * c, vec);
}

// The collapse of chunk c: out[t][4c + e] = sum over j of pre[j] * x[t][j][4c + e] (j ascending).
__device__ __forceinline__ void collapse_chunk(const Act& out, int64_t t, int64_t c, int64_t hidden, const float4* xv,
                                               const float* pre, bool round, bool vec) {
  const int64_t d = 4 * c;
  if (d >= hidden) return;
  float4 o = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
  for (int j = 0; j < kHc; ++j) {
    o.x += pre[j] * xv[j].x;
    o.y += pre[j] * xv[j].y;
    o.z += pre[j] * xv[j].z;
    o.w += pre[j] * xv[j].w;
  }
  if (vec && out.bf16) {
    uint2 u;
    u.x = uint32_t(f32_to_bf16(o.x)) | (uint32_t(f32_to_bf16(o.y)) << 16);
    u.y = uint32_t(f32_to_bf16(o.z)) | (uint32_t(f32_to_bf16(o.w)) << 16);
    *reinterpret_cast<uint2*>(static_cast<uint16_t*>(out.data) + t * out.stride + d) = u;
  } else if (vec) {
    if (round) o = make_float4(round_bf16(o.x), round_bf16(o.y), round_bf16(o.z), round_bf16(o.w));
    *reinterpret_cast<float4*>(static_cast<float*>(out.data) + t * out.stride + d) = o;
  } else {
    out.st(t, d, o.x, round);
    if (d + 1 < hidden) out.st(t, d + 1, o.y, round);
    if (d + 2 < hidden) out.st(t, d + 2, o.z, round);
    if (d + 3 < hidden) out.st(t, d + 3, o.w, round);
  }
}

// The x of the collapse a thread owns: chunks c = threadIdx.x + k * blockDim.x of the 4 streams.
// The first kVec chunks are loaded before anything else, so the loads overlap the mix sums; wider
// rows (tail) read theirs in the collapse.
template <int kVec>
struct CollapseRegs {
  float4 x[kVec][kHc];
  __device__ __forceinline__ void load(const Act& xa, int64_t t, int64_t hidden, bool vec) {
#pragma unroll
    for (int k = 0; k < kVec; ++k)
#pragma unroll
      for (int j = 0; j < kHc; ++j) x[k][j] = ld_chunk(xa, t, j, threadIdx.x + int64_t(k) * blockDim.x, hidden, vec);
  }
  // Sum of the squares of this thread's chunks of the 4 streams (the tail's read here).
  __device__ __forceinline__ float sum_squares(const Act& xa, int64_t t, int64_t hidden, bool vec) const {
    float s = 0.f;
    auto add = [&s](const float4& v) { s = fmaf(v.x, v.x, fmaf(v.y, v.y, fmaf(v.z, v.z, fmaf(v.w, v.w, s)))); };
#pragma unroll
    for (int k = 0; k < kVec; ++k)
#pragma unroll
      for (int j = 0; j < kHc; ++j) add(x[k][j]);
    for (int64_t c = threadIdx.x + int64_t(kVec) * blockDim.x; 4 * c < hidden; c += blockDim.x)
#pragma unroll
      for (int j = 0; j < kHc; ++j) add(ld_chunk(xa, t, j, c, hidden, vec));
    return s;
  }
  __device__ __forceinline__ void collapse(const Act& xa, const Act& out, int64_t t, int64_t hidden, const float* pre,
                                           bool round, bool vec) const {
#pragma unroll
    for (int k = 0; k < kVec; ++k)
      collapse_chunk(out, t, threadIdx.x + int64_t(k) * blockDim.x, hidden, x[k], pre, round, vec);
    for (int64_t c = threadIdx.x + int64_t(kVec) * blockDim.x; 4 * c < hidden; c += blockDim.x) {
      float4 xv[kHc];
#pragma unroll
      for (int j = 0; j < kHc; ++j) xv[j] = ld_chunk(xa, t, j, c, hidden, vec);
      collapse_chunk(out, t, c, hidden, xv, pre, round, vec);
    }
  }
};

// Two blocks per SM up to 2 chunks a thread (a batch of 264 tokens in one wave).
constexpr int finish_min_blocks(int vec) { return vec <= 2 ? 2 : 1; }

// One block per token: the x of the collapse and the base / scale are loaded first, then the mix
// sums (with fused_sumsq the sum of squares of x from the loaded row, not from the partials); warp 0
// computes pre and post, every thread its columns of a, then warp 0 runs Sinkhorn (off the path of
// the collapse).
template <int kVec>
__global__ void __launch_bounds__(kFinishThreads, finish_min_blocks(kVec))
    hc_pre_kernel(Act x, const float* part, int splits, const float* base, const float* scale, Act a, float* post,
                  int64_t post_stride, float* comb, int64_t comb_stride, int64_t hidden, int iters, float hc_eps,
                  float norm_eps, bool out_round, bool vec, bool fused_sumsq) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  constexpr int kNumMix = (2 + kHc) * kHc;
  __shared__ float mix[kNumMix];
  __shared__ float pre[kHc];
  __shared__ float sq_warps[kFinishThreads / 32];
  const int64_t t = blockIdx.x;
  const int lane = threadIdx.x & 31, l = lane & 15;
  CollapseRegs<kVec> regs;
  regs.load(x, t, hidden, vec);
  float base_pp = 0.f, base_comb = 0.f, scale_pre = 0.f, scale_post = 0.f, scale_comb = 0.f;
  if (threadIdx.x < 32) {
    if (lane < 2 * kHc) base_pp = base[lane];
    base_comb = base[2 * kHc + l];
    scale_pre = scale[0];
    scale_post = scale[1];
    scale_comb = scale[2];
  }
  if (fused_sumsq) {  // read back after mix_finish's first barrier
    const float sq = warp_sum(regs.sum_squares(x, t, hidden, vec));
    if (lane == 0) sq_warps[threadIdx.x >> 5] = sq;
  }
  mix_finish<kNumMix>(part, splits, t, kHc * hidden, norm_eps, mix, fused_sumsq ? sq_warps : nullptr);
  if (threadIdx.x < 32) {
    if (lane < kHc) pre[lane] = sigmoidf(mix[lane] * scale_pre + base_pp) + hc_eps;
    if (lane >= kHc && lane < 2 * kHc)
      post[t * post_stride + lane - kHc] = 2.0f * sigmoidf(mix[lane] * scale_post + base_pp);
  }
  __syncthreads();
  regs.collapse(x, a, t, hidden, pre, out_round, vec);
  if (threadIdx.x < 32) {
    // Warp 0: lanes [0, 16) hold comb element (j, k) = (lane / 4, lane % 4); row sums over k are
    // shuffles across lanes ^1, ^2, column sums over j across lanes ^4, ^8 (lanes >= 16 mirror them).
    float c = mix[2 * kHc + l] * scale_comb + base_comb;
    auto row_sum = [](float v) {
      v += __shfl_xor_sync(0xffffffffu, v, 1);
      return v + __shfl_xor_sync(0xffffffffu, v, 2);
    };
    auto col_sum = [](float v) {
      v += __shfl_xor_sync(0xffffffffu, v, 4);
      return v + __shfl_xor_sync(0xffffffffu, v, 8);
    };
    float mx = fmaxf(c, __shfl_xor_sync(0xffffffffu, c, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    c = expf(c - mx);
    c = c / row_sum(c) + hc_eps;
    for (int it = 0; it < iters; ++it) {
      if (it > 0) c /= (row_sum(c) + hc_eps);  // rows (skipped on the first pass: softmax normalised them)
      c /= (col_sum(c) + hc_eps);              // columns
    }
    if (lane < kHc * kHc) comb[t * comb_stride + lane] = c;
  }
}

template <int kVec>
__global__ void __launch_bounds__(kFinishThreads, finish_min_blocks(kVec))
    hc_head_kernel(Act x, const float* part, int splits, const float* base, const float* scale, Act y, int64_t hidden,
                   float hc_eps, float norm_eps, bool out_round, bool vec) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  __shared__ float mix[kHc];
  __shared__ float pre[kHc];
  const int64_t t = blockIdx.x;
  CollapseRegs<kVec> regs;
  regs.load(x, t, hidden, vec);
  float base_pre = 0.f, scale_pre = 0.f;
  if (threadIdx.x < kHc) {
    base_pre = base[threadIdx.x];
    scale_pre = scale[0];
  }
  mix_finish<kHc>(part, splits, t, kHc * hidden, norm_eps, mix);
  if (threadIdx.x < kHc) pre[threadIdx.x] = sigmoidf(mix[threadIdx.x] * scale_pre + base_pre) + hc_eps;
  __syncthreads();
  regs.collapse(x, y, t, hidden, pre, out_round, vec);
}

__global__ void hc_post_kernel(Act o, Act x_old, const float* post, int64_t post_stride, const float* comb,
                               int64_t comb_stride, Act x_new, int64_t n, int64_t hidden, bool out_round) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n * hidden) return;
  const int64_t t = i / hidden, d = i % hidden;
  const float ov = o.ld(t, d);
  float xv[kHc];
#pragma unroll
  for (int j = 0; j < kHc; ++j) xv[j] = x_old.ld(t, j * hidden + d);
#pragma unroll
  for (int k = 0; k < kHc; ++k) {
    float s = post[t * post_stride + k] * ov;
#pragma unroll
    for (int j = 0; j < kHc; ++j) s += comb[t * comb_stride + j * kHc + k] * xv[j];
    x_new.st(t, k * hidden + d, s, out_round);
  }
}

const float* f32_device_weight(const WeightView& w, int64_t n, const char* what) {
  CHECK(w.dtype == DType::kF32 && w.data != nullptr) << what << ": F32 weight expected";
  CHECK_EQ(w.rows * w.cols, n) << what << " size";
  return static_cast<const float*>(w.data);
}

// Register chunks per thread of hc_pre / hc_head: 1, 2 or kFinishMaxVec (wider rows take a tail loop).
int finish_vec(int64_t hidden) {
  const int64_t v = ceil_div(ceil_div(hidden, 4), kFinishThreads);
  return v <= 1 ? 1 : v <= 2 ? 2 : kFinishMaxVec;
}

float* f32_view(const TensorView& v, int64_t width, const char* what, int64_t* stride) {
  CHECK(v.dtype == DType::kF32 && v.device == Device::kCuda && v.data) << what << ": F32 device view expected";
  CHECK_EQ(act_row_width(v), width) << what << " " << v.shape_str();
  *stride = v.stride[0];
  return static_cast<float*>(v.data);
}

}  // namespace

void launch_hc_pre(const HcPreParams& p, cudaStream_t s, float* mix, bool fused_sumsq) {
  const int64_t n = p.x.shape[0], hc = p.x.shape[1], hidden = p.x.shape[2];
  CHECK_EQ(hc, kHc) << "hc_pre: hc_mult " << hc << " (the CUDA kernel is built for " << kHc << ")";
  CHECK_EQ(p.fn.rows, (2 + hc) * hc);
  CHECK_EQ(p.fn.cols, hc * hidden);
  CHECK(p.sinkhorn_iters >= 1);
  int64_t post_stride = 0, comb_stride = 0;
  float* post = f32_view(p.post, hc, "hc_pre post", &post_stride);
  float* comb = f32_view(p.comb, hc * hc, "hc_pre comb", &comb_stride);
  const float* base = f32_device_weight(p.base, (2 + hc) * hc, "hc_pre base");
  const float* scale = f32_device_weight(p.scale, 3, "hc_pre scale");
  CHECK_EQ(act_row_width(p.a), hidden);
  if (n == 0) return;
  constexpr int kNumMix = (2 + kHc) * kHc;
  const Act x = make_act(p.x, "hc_pre x");
  int splits = 1;
  float* part = mix;
  fused_sumsq = fused_sumsq && mix != nullptr;
  if (mix && !fused_sumsq) {
    const bool vec = x.vec_ok() && hidden % 4 == 0;
    launch(sum_squares_kernel<kNumMix>, grid_x_for(n, kThreads / 32, "hc sum_squares"), kThreads, 0, s)(x, n, hc * hidden, vec,
                                                                                                    mix);
    launch_check("hc sum_squares", s);
  } else if (!mix) {
    splits = mix_splits(n, hc * hidden);
    part = launch_mix_partial<kNumMix>(x, make_weight_act(p.fn, "hc_pre fn"), n, hc * hidden, splits, s);
  }
  const Act a = make_act(p.a, "hc_pre a");
  const bool vec = hidden % 4 == 0 && x.vec_ok() && a.vec_ok();
  auto run = [&](auto kernel) {
    launch(kernel, grid_x(n, "hc_pre"), kFinishThreads, 0, s)(x, part, splits, base, scale, a, post, post_stride, comb,
                                                         comb_stride, hidden, p.sinkhorn_iters, p.hc_eps, p.norm_eps,
                                                         p.out_bf16, vec, fused_sumsq);
  };
  switch (finish_vec(hidden)) {
    case 1: run(hc_pre_kernel<1>); break;
    case 2: run(hc_pre_kernel<2>); break;
    default: run(hc_pre_kernel<kFinishMaxVec>); break;
  }
  launch_check("hc_pre", s);
  if (!mix) stream_free(part, s);
}

void launch_hc_head(const HcHeadParams& p, cudaStream_t s) {
  const int64_t n = p.x.shape[0], hc = p.x.shape[1], hidden = p.x.shape[2];
  CHECK_EQ(hc, kHc) << "hc_head: hc_mult " << hc;
  CHECK_EQ(p.fn.rows, hc);
  CHECK_EQ(p.fn.cols, hc * hidden);
  const float* base = f32_device_weight(p.base, hc, "hc_head base");
  const float* scale = f32_device_weight(p.scale, 1, "hc_head scale");
  CHECK_EQ(act_row_width(p.y), hidden);
  if (n == 0) return;
  const Act x = make_act(p.x, "hc_head x");
  const int splits = mix_splits(n, hc * hidden);
  float* part = launch_mix_partial<kHc>(x, make_weight_act(p.fn, "hc_head fn"), n, hc * hidden, splits, s);
  const Act y = make_act(p.y, "hc_head y");
  const bool vec = hidden % 4 == 0 && x.vec_ok() && y.vec_ok();
  auto run = [&](auto kernel) {
    launch(kernel, grid_x(n, "hc_head"), kFinishThreads, 0, s)(x, part, splits, base, scale, y, hidden, p.hc_eps,
                                                          p.norm_eps, p.out_bf16, vec);
  };
  switch (finish_vec(hidden)) {
    case 1: run(hc_head_kernel<1>); break;
    case 2: run(hc_head_kernel<2>); break;
    default: run(hc_head_kernel<kFinishMaxVec>); break;
  }
  launch_check("hc_head", s);
  stream_free(part, s);
}

void launch_hc_post(const HcPostParams& p, cudaStream_t s) {
  const int64_t n = p.x_old.shape[0], hc = p.x_old.shape[1], hidden = p.x_old.shape[2];
  CHECK_EQ(hc, kHc) << "hc_post: hc_mult " << hc;
  CHECK(p.x_new.data != p.x_old.data) << "hc_post x_new must not alias x_old";
  int64_t post_stride = 0, comb_stride = 0;
  const float* post = f32_view(p.post, hc, "hc_post post", &post_stride);
  const float* comb = f32_view(p.comb, hc * hc, "hc_post comb", &comb_stride);
  CHECK_EQ(act_row_width(p.o), hidden);
  CHECK_EQ(act_row_width(p.x_new), hc * hidden);
  if (n == 0) return;
  launch(hc_post_kernel, grid_x_for(n * hidden, 256, "hc_post"), 256, 0, s)(
      make_act(p.o, "hc_post o"), make_act(p.x_old, "hc_post x_old"), post, post_stride, comb, comb_stride,
      make_act(p.x_new, "hc_post x_new"), n, hidden, p.out_bf16);
  launch_check("hc_post", s);
}

}  // namespace v4rt::kernels::cuda
