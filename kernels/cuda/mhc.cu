// SPDX-License-Identifier: MIT
// Manifold-constrained hyper-connections (spec §4): hc_pre (mix GEMV + Sinkhorn + collapse, one
// block per token in one kernel), hc_post (expand + residual mix) and hc_head (final collapse).
// The mix GEMV reads fn once per token, each thread keeping all (2+hc)*hc partial dot products.
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/ops.h"

namespace v4rt::kernels::cuda {

namespace {

constexpr int kHc = 4;  // hc_mult of both V4 models
constexpr int kThreads = 256;

__device__ __forceinline__ float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

// kNumMix = 24 for hc_pre, kHc for hc_head. Outputs: mix (times rs) in shared memory.
template <int kNumMix>
__device__ void mix_gemv(const Act& x, int64_t t, const Act& fn, int64_t len, float norm_eps, float* mix_out) {
  __shared__ float red[kNumMix + 1][kThreads / 32];
  float part[kNumMix + 1];
#pragma unroll
  for (int m = 0; m <= kNumMix; ++m) part[m] = 0.f;
  for (int64_t i = threadIdx.x; i < len; i += blockDim.x) {
    const float v = x.ld(t, i);
    part[kNumMix] += v * v;
#pragma unroll
    for (int m = 0; m < kNumMix; ++m) part[m] = fmaf(fn.ld(m, i), v, part[m]);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int m = 0; m <= kNumMix; ++m) {
    const float s = warp_sum(part[m]);
    if (lane == 0) red[m][warp] = s;
  }
  __syncthreads();
  if (threadIdx.x <= kNumMix) {
    float s = 0.f;
    for (int w = 0; w < kThreads / 32; ++w) s += red[threadIdx.x][w];
    red[threadIdx.x][0] = s;
  }
  __syncthreads();
  if (threadIdx.x < kNumMix) {
    const float rs = 1.0f / sqrtf(red[kNumMix][0] / float(len) + norm_eps);
    mix_out[threadIdx.x] = red[threadIdx.x][0] * rs;
  }
  __syncthreads();
}

__global__ void __launch_bounds__(kThreads) hc_pre_kernel(Act x, Act fn, const float* base, const float* scale,
                                                           Act a, float* post, int64_t post_stride, float* comb,
                                                           int64_t comb_stride, int64_t hidden, int iters,
                                                           float hc_eps, float norm_eps, bool out_round) {
  constexpr int kNumMix = (2 + kHc) * kHc;
  __shared__ float mix[kNumMix];
  __shared__ float pre[kHc];
  const int64_t t = blockIdx.x;
  mix_gemv<kNumMix>(x, t, fn, kHc * hidden, norm_eps, mix);
  if (threadIdx.x == 0) {
    float c[kHc][kHc];
    for (int j = 0; j < kHc; ++j) {
      pre[j] = sigmoidf(mix[j] * scale[0] + base[j]) + hc_eps;
      post[t * post_stride + j] = 2.0f * sigmoidf(mix[kHc + j] * scale[1] + base[kHc + j]);
    }
    for (int j = 0; j < kHc; ++j) {
      float mx = -INFINITY;
      for (int k = 0; k < kHc; ++k) {
        c[j][k] = mix[2 * kHc + j * kHc + k] * scale[2] + base[2 * kHc + j * kHc + k];
        mx = fmaxf(mx, c[j][k]);
      }
      float sum = 0.f;
      for (int k = 0; k < kHc; ++k) sum += (c[j][k] = expf(c[j][k] - mx));
      for (int k = 0; k < kHc; ++k) c[j][k] = c[j][k] / sum + hc_eps;
    }
    for (int it = 0; it < iters; ++it) {
      if (it > 0) {  // rows (skipped on the first pass: softmax already normalised them)
        for (int j = 0; j < kHc; ++j) {
          float sum = 0.f;
          for (int k = 0; k < kHc; ++k) sum += c[j][k];
          for (int k = 0; k < kHc; ++k) c[j][k] /= (sum + hc_eps);
        }
      }
      for (int k = 0; k < kHc; ++k) {  // columns
        float sum = 0.f;
        for (int j = 0; j < kHc; ++j) sum += c[j][k];
        for (int j = 0; j < kHc; ++j) c[j][k] /= (sum + hc_eps);
      }
    }
    for (int j = 0; j < kHc; ++j)
      for (int k = 0; k < kHc; ++k) comb[t * comb_stride + j * kHc + k] = c[j][k];
  }
  __syncthreads();
  for (int64_t d = threadIdx.x; d < hidden; d += blockDim.x) {
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < kHc; ++j) s += pre[j] * x.ld(t, j * hidden + d);
    a.st(t, d, s, out_round);
  }
}

__global__ void __launch_bounds__(kThreads) hc_head_kernel(Act x, Act fn, const float* base, const float* scale,
                                                            Act y, int64_t hidden, float hc_eps, float norm_eps,
                                                            bool out_round) {
  __shared__ float mix[kHc];
  __shared__ float pre[kHc];
  const int64_t t = blockIdx.x;
  mix_gemv<kHc>(x, t, fn, kHc * hidden, norm_eps, mix);
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

void launch_hc_pre(const HcPreParams& p, cudaStream_t s) {
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
  hc_pre_kernel<<<unsigned(n), kThreads, 0, s>>>(make_act(p.x, "hc_pre x"), make_weight_act(p.fn, "hc_pre fn"), base,
                                                 scale, make_act(p.a, "hc_pre a"), post, post_stride, comb, comb_stride,
                                                 hidden, p.sinkhorn_iters, p.hc_eps, p.norm_eps, p.out_bf16);
  launch_check("hc_pre", s);
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
  hc_head_kernel<<<unsigned(n), kThreads, 0, s>>>(make_act(p.x, "hc_head x"), make_weight_act(p.fn, "hc_head fn"),
                                                  base, scale, make_act(p.y, "hc_head y"), hidden, p.hc_eps,
                                                  p.norm_eps, p.out_bf16);
  launch_check("hc_head", s);
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
  hc_post_kernel<<<unsigned(ceil_div(n * hidden, 256)), 256, 0, s>>>(
      make_act(p.o, "hc_post o"), make_act(p.x_old, "hc_post x_old"), post, post_stride, comb, comb_stride,
      make_act(p.x_new, "hc_post x_new"), n, hidden, p.out_bf16);
  launch_check("hc_post", s);
}

}  // namespace v4rt::kernels::cuda
