// SPDX-License-Identifier: MIT
// Elementwise ops of the CUDA backend: fill, dtype conversion, add, embedding lookup, the
// quantize-dequantize ops of the official numerics (spec §2.2/§2.3) and the clamped SwiGLU (§6);
// plus the Act view builders shared by every launcher.
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/launch_geometry.h"
#include "kernels/cuda/ops.h"

namespace v4rt::kernels::cuda {

int64_t act_row_width(const TensorView& v) {
  CHECK_GE(v.ndim, 1);
  int64_t w = 1;
  for (int d = v.ndim - 1; d >= 1; --d) {
    CHECK_EQ(v.stride[size_t(d)], w) << "row of " << v.shape_str() << " is not contiguous";
    w *= v.shape[size_t(d)];
  }
  return w;
}

Act make_act(const TensorView& v, const char* what) {
  CHECK(v.data != nullptr) << what << ": no data";
  CHECK(v.device == Device::kCuda) << what << ": the cuda backend needs device views";
  CHECK(v.dtype == DType::kBF16 || v.dtype == DType::kF32) << what << ": dtype " << dtype_name(v.dtype)
                                                           << " (BF16 or F32 expected)";
  Act a;
  a.data = v.data;
  a.stride = v.ndim == 1 ? 1 : v.stride[0];
  if (v.ndim > 1) act_row_width(v);
  a.bf16 = v.dtype == DType::kBF16;
  return a;
}

Act make_weight_act(const WeightView& w, const char* what) {
  CHECK(w.data != nullptr) << what << ": empty weight";
  CHECK(w.dtype == DType::kBF16 || w.dtype == DType::kF32) << what << ": weight dtype " << dtype_name(w.dtype)
                                                           << " (BF16 or F32 expected)";
  Act a;
  a.data = const_cast<void*>(w.data);
  a.stride = w.cols;
  a.bf16 = w.dtype == DType::kBF16;
  return a;
}

namespace {

constexpr int kThreads = 256;
unsigned blocks_for(int64_t n) { return grid_x_for(n, kThreads, "elementwise"); }

__global__ void fill_kernel(Act dst, int64_t rows, int64_t cols, float value) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < rows * cols) dst.st(i / cols, i % cols, value);
}

__global__ void convert_kernel(Act src, Act dst, int64_t rows, int64_t cols, bool round) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < rows * cols) dst.st(i / cols, i % cols, src.ld(i / cols, i % cols), round);
}

__global__ void add_into_kernel(Act src, Act dst, int64_t rows, int64_t cols, bool accumulate, bool round) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * cols) return;
  const int64_t r = i / cols, c = i % cols;
  const float v = src.ld(r, c);
  dst.st(r, c, accumulate ? dst.ld(r, c) + v : v, round);
}

__global__ void split_bf16_kernel(Act src, uint16_t* dst, int64_t rows, int64_t cols) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * cols) return;
  const int64_t r = i / cols, c = i % cols;
  const float v = src.ld(r, c);
  const uint16_t hi = f32_to_bf16(v);
  dst[i] = hi;
  dst[rows * cols + i] = f32_to_bf16(v - bf16_to_f32(hi));
}

__global__ void add_split_kernel(const float* y2, int64_t ld, Act dst, int64_t rows, int64_t cols, bool accumulate,
                                 bool round) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * cols) return;
  const int64_t r = i / cols, c = i % cols;
  const float v = y2[r * ld + c] + y2[(rows + r) * ld + c];
  dst.st(r, c, accumulate ? dst.ld(r, c) + v : v, round);
}

__global__ void add_kernel(Act a, Act b, Act out, int64_t rows, int64_t cols, bool round) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * cols) return;
  const int64_t r = i / cols, c = i % cols;
  out.st(r, c, a.ld(r, c) + b.ld(r, c), round);
}

__global__ void embedding_kernel(Act table, int64_t vocab, const int32_t* ids, Act out, int64_t n,
                                 int64_t replicas, int64_t hidden) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n * replicas * hidden) return;
  const int64_t t = i / (replicas * hidden), c = i % (replicas * hidden);
  const int32_t id = ids[t];
  if (id < 0 || id >= vocab) {
    out.st(t, c, __uint_as_float(0x7fc00000u));  // out-of-vocabulary ids poison the row
    return;
  }
  out.st(t, c, table.ld(id, c % hidden));
}

// One thread per (row, block): the same loop as the reference's qdq.
// A partial last block (cols % block != 0) is its own block, as in the op table.
__global__ void qdq_kernel(Act x, int64_t rows, int64_t cols, int format, int full_block) {
  const int64_t nb = (cols + full_block - 1) / full_block;
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * nb) return;
  const int64_t r = i / nb, c0 = (i % nb) * full_block;
  const int block = int(min(int64_t(full_block), cols - c0));
  float amax = 0.f;
  for (int j = 0; j < block; ++j) amax = fmaxf(amax, fabsf(x.ld(r, c0 + j)));
  if (format == int(QdqFormat::kFp8E4M3)) {
    const float s = act_quant_scale(amax, 448.f);
    for (int j = 0; j < block; ++j) {
      const float v = fminf(fmaxf(x.ld(r, c0 + j) / s, -448.f), 448.f);
      x.st(r, c0 + j, e4m3_to_f32(f32_to_e4m3(v)) * s);
    }
  } else {
    // fp4: s = 2^ceil(log2(max(amax, 6 * 2^-126) / 6)); e2m1 RNE on the grid 0,.5,1,1.5,2,3,4,6.
    amax = fmaxf(amax, 6.0f * 1.17549435e-38f);
    const float v6 = amax / 6.0f;
    const uint32_t u = __float_as_uint(v6);
    const int e = int((u >> 23) & 0xff) - 127 + ((u & 0x7fffff) != 0 ? 1 : 0);
    const float s = ldexpf(1.0f, e);
    for (int j = 0; j < block; ++j) {
      const float v = fminf(fmaxf(x.ld(r, c0 + j) / s, -6.f), 6.f);
      const float a = fabsf(v);
      // Round to nearest on the grid; a tie goes to the even code (codes 0,2,4,6 = 0,1,2,4).
      float q;
      if (a <= 0.25f) q = 0.f;          // tie 0.25 -> 0 (code 0)
      else if (a < 0.75f) q = 0.5f;
      else if (a <= 1.25f) q = 1.f;     // tie 0.75 -> 1, 1.25 -> 1
      else if (a < 1.75f) q = 1.5f;
      else if (a <= 2.5f) q = 2.f;      // tie 1.75 -> 2, 2.5 -> 2
      else if (a < 3.5f) q = 3.f;
      else if (a <= 5.f) q = 4.f;       // tie 3.5 -> 4, 5 -> 4
      else q = 6.f;
      x.st(r, c0 + j, copysignf(q, v) * s);
    }
  }
}

__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }

__global__ void swiglu_kernel(Act g, Act u, Act h, const float* row_weight, int64_t rows, int64_t cols,
                              float limit, bool round) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * cols) return;
  const int64_t r = i / cols, c = i % cols;
  float v = silu(fminf(g.ld(r, c), limit)) * fminf(fmaxf(u.ld(r, c), -limit), limit);
  if (row_weight) v *= row_weight[r];
  h.st(r, c, v, round);
}

}  // namespace

void launch_fill(const Act& dst, int64_t rows, int64_t cols, float value, cudaStream_t s) {
  if (rows * cols == 0) return;
  fill_kernel<<<blocks_for(rows * cols), kThreads, 0, s>>>(dst, rows, cols, value);
  launch_check("fill", s);
}

void launch_convert(const Act& src, const Act& dst, int64_t rows, int64_t cols, bool round, cudaStream_t s) {
  if (rows * cols == 0) return;
  convert_kernel<<<blocks_for(rows * cols), kThreads, 0, s>>>(src, dst, rows, cols, round);
  launch_check("convert", s);
}

void launch_add_into(const Act& src, const Act& dst, int64_t rows, int64_t cols, bool accumulate, bool round,
                     cudaStream_t s) {
  if (rows * cols == 0) return;
  add_into_kernel<<<blocks_for(rows * cols), kThreads, 0, s>>>(src, dst, rows, cols, accumulate, round);
  launch_check("add_into", s);
}

void launch_split_bf16(const Act& src, uint16_t* dst, int64_t rows, int64_t cols, cudaStream_t s) {
  if (rows * cols == 0) return;
  split_bf16_kernel<<<blocks_for(rows * cols), kThreads, 0, s>>>(src, dst, rows, cols);
  launch_check("split_bf16", s);
}

void launch_add_split(const float* y2, int64_t ld, const Act& dst, int64_t rows, int64_t cols, bool accumulate,
                      bool round, cudaStream_t s) {
  if (rows * cols == 0) return;
  add_split_kernel<<<blocks_for(rows * cols), kThreads, 0, s>>>(y2, ld, dst, rows, cols, accumulate, round);
  launch_check("add_split", s);
}

void launch_add(const AddParams& p, cudaStream_t s) {
  const int64_t rows = p.a.shape[0], cols = act_row_width(p.a);
  CHECK_EQ(act_row_width(p.b), cols);
  CHECK_EQ(act_row_width(p.out), cols);
  if (rows * cols == 0) return;
  add_kernel<<<blocks_for(rows * cols), kThreads, 0, s>>>(make_act(p.a, "add a"), make_act(p.b, "add b"),
                                                          make_act(p.out, "add out"), rows, cols, p.out_bf16);
  launch_check("add", s);
}

void launch_embedding(const EmbeddingParams& p, cudaStream_t s) {
  const int64_t n = p.ids.shape[0], hidden = p.table.cols;
  const int64_t replicas = p.out.ndim == 3 ? p.out.shape[1] : 1;
  CHECK(p.ids.dtype == DType::kI32 && p.ids.device == Device::kCuda) << "embedding ids: I32 device view expected";
  CHECK_EQ(act_row_width(p.out), replicas * hidden);
  if (n == 0) return;
  embedding_kernel<<<blocks_for(n * replicas * hidden), kThreads, 0, s>>>(
      make_weight_act(p.table, "embedding table"), p.table.rows, static_cast<const int32_t*>(p.ids.data),
      make_act(p.out, "embedding out"), n, replicas, hidden);
  launch_check("embedding", s);
}

void launch_qdq(const QdqParams& p, cudaStream_t s) {
  const int64_t rows = p.x.shape[0], cols = act_row_width(p.x);
  const Act x = make_act(p.x, "qdq x");
  if (p.format == QdqFormat::kBf16) {
    launch_convert(x, x, rows, cols, true, s);
    return;
  }
  CHECK_GT(p.block, 0) << "qdq block";
  const int64_t n = rows * ((cols + p.block - 1) / p.block);
  if (n == 0) return;
  qdq_kernel<<<blocks_for(n), kThreads, 0, s>>>(x, rows, cols, int(p.format), p.block);
  launch_check("qdq", s);
}

void launch_swiglu(const SwigluParams& p, cudaStream_t s) {
  const int64_t rows = p.gate.shape[0], cols = act_row_width(p.gate);
  CHECK_EQ(act_row_width(p.up), cols);
  CHECK_EQ(act_row_width(p.h), cols);
  const float* rw = nullptr;
  if (p.row_weight.data) {
    CHECK(p.row_weight.dtype == DType::kF32 && p.row_weight.device == Device::kCuda) << "swiglu row_weight";
    rw = static_cast<const float*>(p.row_weight.data);
  }
  if (rows * cols == 0) return;
  swiglu_kernel<<<blocks_for(rows * cols), kThreads, 0, s>>>(make_act(p.gate, "swiglu gate"), make_act(p.up, "swiglu up"),
                                                             make_act(p.h, "swiglu h"), rw, rows, cols, p.limit, p.out_bf16);
  launch_check("swiglu", s);
}

}  // namespace v4rt::kernels::cuda
