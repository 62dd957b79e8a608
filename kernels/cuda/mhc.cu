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
#include "kernels/cuda/launch_geometry.h"
#include "kernels/cuda/ops.h"

namespace v4rt::kernels::cuda {

namespace {

constexpr int kHc = 4;  // hc_mult of both V4 models
constexpr int kThreads = 256;

__device__ __forceinline__ float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

// The mix GEMV of hc_pre / hc_head (kNumMix = 24 / kHc rows of fn over len = hc * hidden inputs)
// split over blocks: block t * splits + split (one x dimension: any number of tokens) sums columns
// [split * cols, (split + 1) * cols) of token t into part[t][split][0, kNumMix) and the sum of
// squares of x into part[t][split][kNumMix].
template <int kNumMix>
__global__ void __launch_bounds__(kThreads) mix_partial_kernel(Act x, Act fn, int64_t len, int64_t cols, int splits,
                                                               float* part) {
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

// mix_out[m] = (sum over splits of part[t][.][m]) * rsqrt(mean(x^2) + eps), in shared memory.
template <int kNumMix>
__device__ void mix_finish(const float* part, int splits, int64_t t, int64_t len, float norm_eps, float* mix_out) {
  __shared__ float total[kNumMix + 1];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int m = warp; m <= kNumMix; m += kThreads / 32) {  // a warp per sum, lanes over the splits
    float sum = 0.f;
    for (int sp = lane; sp < splits; sp += 32) sum += part[(t * splits + sp) * (kNumMix + 1) + m];
    sum = warp_sum(sum);
    if (lane == 0) total[m] = sum;
  }
  __syncthreads();
  if (threadIdx.x < kNumMix) mix_out[threadIdx.x] = total[threadIdx.x] / sqrtf(total[kNumMix] / float(len) + norm_eps);
  __syncthreads();
}

// Blocks per token for the mix GEMV: about two waves of blocks in all, at least 256 columns each.
int mix_splits(int64_t n, int64_t len) {
  const int64_t want = ceil_div(264, std::max<int64_t>(n, 1));
  return int(std::max<int64_t>(1, std::min(want, ceil_div(len, 256))));
}

template <int kNumMix>
float* launch_mix_partial(const Act& x, const Act& fn, int64_t n, int64_t len, int splits, cudaStream_t s) {
  float* part = static_cast<float*>(stream_alloc(size_t(n * splits * (kNumMix + 1)) * 4, s));
  const int64_t cols = ceil_div(len, splits);
  mix_partial_kernel<kNumMix><<<grid_x(n * splits, "hc mix_partial"), kThreads, 0, s>>>(x, fn, len, cols, splits, part);
  launch_check("hc mix_partial", s);
  return part;
}

// part[t][kNumMix] = sum of squares of token t's x (the mix entries come from a GEMM): a warp per token.
template <int kNumMix>
__global__ void __launch_bounds__(kThreads) sum_squares_kernel(Act x, int64_t n, int64_t len, bool vec, float* part) {
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

__global__ void __launch_bounds__(kThreads) hc_pre_kernel(Act x, const float* part, int splits, const float* base,
                                                           const float* scale, Act a, float* post, int64_t post_stride,
                                                           float* comb, int64_t comb_stride, int64_t hidden, int iters,
                                                           float hc_eps, float norm_eps, bool out_round) {
  constexpr int kNumMix = (2 + kHc) * kHc;
  __shared__ float mix[kNumMix];
  __shared__ float pre[kHc];
  const int64_t t = blockIdx.x;
  mix_finish<kNumMix>(part, splits, t, kHc * hidden, norm_eps, mix);
  if (threadIdx.x < 32) {
    // Warp 0: lanes [0, 16) hold comb element (j, k) = (lane / 4, lane % 4); row sums over k are
    // shuffles across lanes ^1, ^2, column sums over j across lanes ^4, ^8 (lanes >= 16 mirror them).
    const int lane = threadIdx.x, l = lane & 15;
    if (lane < kHc) pre[lane] = sigmoidf(mix[lane] * scale[0] + base[lane]) + hc_eps;
    if (lane >= kHc && lane < 2 * kHc)
      post[t * post_stride + lane - kHc] = 2.0f * sigmoidf(mix[lane] * scale[1] + base[lane]);
    float c = mix[2 * kHc + l] * scale[2] + base[2 * kHc + l];
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
  __syncthreads();
  for (int64_t d = threadIdx.x; d < hidden; d += blockDim.x) {
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < kHc; ++j) s += pre[j] * x.ld(t, j * hidden + d);
    a.st(t, d, s, out_round);
  }
}

__global__ void __launch_bounds__(kThreads) hc_head_kernel(Act x, const float* part, int splits, const float* base,
                                                            const float* scale, Act y, int64_t hidden, float hc_eps,
                                                            float norm_eps, bool out_round) {
  __shared__ float mix[kHc];
  __shared__ float pre[kHc];
  const int64_t t = blockIdx.x;
  mix_finish<kHc>(part, splits, t, kHc * hidden, norm_eps, mix);
  if (threadIdx.x < kHc) pre[threadIdx.x] = sigmoidf(mix[threadIdx.x] * scale[0] + base[threadIdx.x]) + hc_eps;
  __syncthreads();
  for (int64_t d = threadIdx.x; d < hidden; d += blockDim.x) {
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < kHc; ++j) s += pre[j] * x.ld(t, j * hidden + d);
    y.st(t, d, s, out_round);
  }
}

__global__ void hc_post_kernel(Act o, Act x_old, const float* post, int64_t post_stride, const float* comb,
                               int64_t comb_stride, Act x_new, int64_t n, int64_t hidden, bool out_round) {
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

float* f32_view(const TensorView& v, int64_t width, const char* what, int64_t* stride) {
  CHECK(v.dtype == DType::kF32 && v.device == Device::kCuda && v.data) << what << ": F32 device view expected";
  CHECK_EQ(act_row_width(v), width) << what << " " << v.shape_str();
  *stride = v.stride[0];
  return static_cast<float*>(v.data);
}

}  // namespace

void launch_hc_pre(const HcPreParams& p, cudaStream_t s, float* mix) {
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
  if (mix) {
    const bool vec = x.vec_ok() && hidden % 4 == 0;
    sum_squares_kernel<kNumMix><<<grid_x_for(n, kThreads / 32, "hc sum_squares"), kThreads, 0, s>>>(x, n, hc * hidden, vec,
                                                                                                    mix);
    launch_check("hc sum_squares", s);
  } else {
    splits = mix_splits(n, hc * hidden);
    part = launch_mix_partial<kNumMix>(x, make_weight_act(p.fn, "hc_pre fn"), n, hc * hidden, splits, s);
  }
  hc_pre_kernel<<<grid_x(n, "hc_pre"), kThreads, 0, s>>>(x, part, splits, base, scale, make_act(p.a, "hc_pre a"), post,
                                                 post_stride, comb, comb_stride, hidden, p.sinkhorn_iters, p.hc_eps,
                                                 p.norm_eps, p.out_bf16);
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
  hc_head_kernel<<<grid_x(n, "hc_head"), kThreads, 0, s>>>(x, part, splits, base, scale, make_act(p.y, "hc_head y"), hidden,
                                                  p.hc_eps, p.norm_eps, p.out_bf16);
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
  hc_post_kernel<<<grid_x_for(n * hidden, 256, "hc_post"), 256, 0, s>>>(
      make_act(p.o, "hc_post o"), make_act(p.x_old, "hc_post x_old"), post, post_stride, comb, comb_stride,
      make_act(p.x_new, "hc_post x_new"), n, hidden, p.out_bf16);
  launch_check("hc_post", s);
}

}  // namespace v4rt::kernels::cuda
