// SPDX-License-Identifier: MIT
// Elementwise ops of the CUDA backend: fill, dtype conversion, add, embedding lookup, the
// quantize-dequantize ops of the official numerics (spec §2.2/§2.3) and the clamped SwiGLU (§6);
// plus the Act view builders shared by every launcher.
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/launch.cuh"
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
  pdl_enter();  // launch.cuh: programmatic dependent launch
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < rows * cols) dst.st(i / cols, i % cols, value);
}

__global__ void convert_kernel(Act src, Act dst, int64_t rows, int64_t cols, bool round) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < rows * cols) dst.st(i / cols, i % cols, src.ld(i / cols, i % cols), round);
}

__global__ void add_into_kernel(Act src, Act dst, int64_t rows, int64_t cols, bool accumulate, bool round) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * cols) return;
  const int64_t r = i / cols, c = i % cols;
  const float v = src.ld(r, c);
  dst.st(r, c, accumulate ? dst.ld(r, c) + v : v, round);
}

__global__ void split_bf16_kernel(Act src, uint16_t* dst, int64_t rows, int64_t cols) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
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
  pdl_enter();  // launch.cuh: programmatic dependent launch
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * cols) return;
  const int64_t r = i / cols, c = i % cols;
  const float v = y2[r * ld + c] + y2[(rows + r) * ld + c];
  dst.st(r, c, accumulate ? dst.ld(r, c) + v : v, round);
}

__global__ void add_kernel(Act a, Act b, Act out, int64_t rows, int64_t cols, bool round) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * cols) return;
  const int64_t r = i / cols, c = i % cols;
  out.st(r, c, a.ld(r, c) + b.ld(r, c), round);
}

__global__ void embedding_kernel(Act table, int64_t vocab, const int32_t* ids, Act out, int64_t n,
                                 int64_t replicas, int64_t hidden) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
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

// Chunk c (elements [4c, 4c + 4)) of the run of n elements from column c0 of row r.
__device__ __forceinline__ float4 ld_chunk(const Act& a, int64_t r, int64_t c0, int64_t c, int64_t n, bool vec) {
  return a.ld4_part(r, c0 + 4 * c, n - 4 * c, vec);
}
__device__ __forceinline__ void st_chunk(const Act& a, int64_t r, int64_t c0, int64_t c, int64_t n, float4 v,
                                         bool vec) {
  a.st4_part(r, c0 + 4 * c, n - 4 * c, v, false, vec);
}

__device__ __forceinline__ float amax_chunk(float amax, float4 v) {
  return fmaxf(fmaxf(fmaxf(fmaxf(amax, fabsf(v.x)), fabsf(v.y)), fabsf(v.z)), fabsf(v.w));
}

// fp4: s = 2^ceil(log2(max(amax, 6 * 2^-126) / 6)).
__device__ __forceinline__ float fp4_scale(float amax) {
  amax = fmaxf(amax, 6.0f * 1.17549435e-38f);
  const float v6 = amax / 6.0f;
  const uint32_t u = __float_as_uint(v6);
  const int e = int((u >> 23) & 0xff) - 127 + ((u & 0x7fffff) != 0 ? 1 : 0);
  return ldexpf(1.0f, e);
}

__device__ __forceinline__ float qdq_fp8(float x, float s) {
  const float v = fminf(fmaxf(x / s, -448.f), 448.f);
  return e4m3_to_f32(f32_to_e4m3(v)) * s;
}

// e2m1 RNE on the grid 0,.5,1,1.5,2,3,4,6.
__device__ __forceinline__ float qdq_fp4(float x, float s) {
  const float v = fminf(fmaxf(x / s, -6.f), 6.f);
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
  return copysignf(q, v) * s;
}

__device__ __forceinline__ float4 qdq4(float4 v, float s, bool fp8) {
  if (fp8) return make_float4(qdq_fp8(v.x, s), qdq_fp8(v.y, s), qdq_fp8(v.z, s), qdq_fp8(v.w, s));
  return make_float4(qdq_fp4(v.x, s), qdq_fp4(v.y, s), qdq_fp4(v.z, s), qdq_fp4(v.w, s));
}

constexpr int kQdqChunks = 4;  // chunks of 4 elements a lane keeps in registers

// A group of `lanes` lanes (a power of two, at most 32) per (row, block): lane i of the group owns
// the chunks c = i + k * lanes of the block, loaded at once and kept in registers between the amax
// and the stores (blocks past kQdqChunks * 4 * lanes elements read the rest twice); the amax is
// reduced by shuffles inside the group (max: the same value in any order). Per element the same
// formulas as the reference's qdq. A partial last block (cols % block != 0) is its own block, as
// in the op table.
__global__ void qdq_kernel(Act x, int64_t rows, int64_t cols, int format, int full_block, int lanes, bool vec) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  const int64_t nb = ceil_div(cols, full_block);
  const int64_t g = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / lanes;
  const int li = int(threadIdx.x) & (lanes - 1);
  const bool active = g < rows * nb;  // idle lanes still take part in the shuffles
  const int64_t r = active ? g / nb : 0, c0 = active ? (g % nb) * full_block : 0;
  const int64_t block = active ? min(int64_t(full_block), cols - c0) : 0;
  float4 v[kQdqChunks];
  float amax = 0.f;  // zeros past the block leave it as it is
#pragma unroll
  for (int k = 0; k < kQdqChunks; ++k) v[k] = ld_chunk(x, r, c0, li + int64_t(k) * lanes, block, vec);
#pragma unroll
  for (int k = 0; k < kQdqChunks; ++k) amax = amax_chunk(amax, v[k]);
  const int64_t tail = li + int64_t(kQdqChunks) * lanes;
  for (int64_t c = tail; 4 * c < block; c += lanes) amax = amax_chunk(amax, ld_chunk(x, r, c0, c, block, vec));
  for (int o = lanes >> 1; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  const bool fp8 = format == int(QdqFormat::kFp8E4M3);
  const float s = fp8 ? act_quant_scale(amax, 448.f) : fp4_scale(amax);
#pragma unroll
  for (int k = 0; k < kQdqChunks; ++k) st_chunk(x, r, c0, li + int64_t(k) * lanes, block, qdq4(v[k], s, fp8), vec);
  for (int64_t c = tail; 4 * c < block; c += lanes)
    st_chunk(x, r, c0, c, block, qdq4(ld_chunk(x, r, c0, c, block, vec), s, fp8), vec);
}

__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }

__global__ void swiglu_kernel(Act g, Act u, Act h, const float* row_weight, int64_t rows, int64_t cols,
                              float limit, bool round) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
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
  launch(fill_kernel, blocks_for(rows * cols), kThreads, 0, s)(dst, rows, cols, value);
  launch_check("fill", s);
}

void launch_convert(const Act& src, const Act& dst, int64_t rows, int64_t cols, bool round, cudaStream_t s) {
  if (rows * cols == 0) return;
  launch(convert_kernel, blocks_for(rows * cols), kThreads, 0, s)(src, dst, rows, cols, round);
  launch_check("convert", s);
}

void launch_add_into(const Act& src, const Act& dst, int64_t rows, int64_t cols, bool accumulate, bool round,
                     cudaStream_t s) {
  if (rows * cols == 0) return;
  launch(add_into_kernel, blocks_for(rows * cols), kThreads, 0, s)(src, dst, rows, cols, accumulate, round);
  launch_check("add_into", s);
}

void launch_split_bf16(const Act& src, uint16_t* dst, int64_t rows, int64_t cols, cudaStream_t s) {
  if (rows * cols == 0) return;
  launch(split_bf16_kernel, blocks_for(rows * cols), kThreads, 0, s)(src, dst, rows, cols);
  launch_check("split_bf16", s);
}

void launch_add_split(const float* y2, int64_t ld, const Act& dst, int64_t rows, int64_t cols, bool accumulate,
                      bool round, cudaStream_t s) {
  if (rows * cols == 0) return;
  launch(add_split_kernel, blocks_for(rows * cols), kThreads, 0, s)(y2, ld, dst, rows, cols, accumulate, round);
  launch_check("add_split", s);
}

void launch_add(const AddParams& p, cudaStream_t s) {
  const int64_t rows = p.a.shape[0], cols = act_row_width(p.a);
  CHECK_EQ(act_row_width(p.b), cols);
  CHECK_EQ(act_row_width(p.out), cols);
  if (rows * cols == 0) return;
  launch(add_kernel, blocks_for(rows * cols), kThreads, 0, s)(make_act(p.a, "add a"), make_act(p.b, "add b"),
                                                          make_act(p.out, "add out"), rows, cols, p.out_bf16);
  launch_check("add", s);
}

void launch_embedding(const EmbeddingParams& p, cudaStream_t s) {
  const int64_t n = p.ids.shape[0], hidden = p.table.cols;
  const int64_t replicas = p.out.ndim == 3 ? p.out.shape[1] : 1;
  CHECK(p.ids.dtype == DType::kI32 && p.ids.device == Device::kCuda) << "embedding ids: I32 device view expected";
  CHECK_EQ(act_row_width(p.out), replicas * hidden);
  if (n == 0) return;
  launch(embedding_kernel, blocks_for(n * replicas * hidden), kThreads, 0, s)(
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
  int lanes = 1;  // per (row, block): a chunk of 4 elements each, up to a warp
  while (lanes < 32 && 4 * lanes < p.block) lanes *= 2;
  const bool vec = p.block % 4 == 0 && cols % 4 == 0 && x.vec_ok();
  launch(qdq_kernel, blocks_for(n * lanes), kThreads, 0, s)(x, rows, cols, int(p.format), p.block, lanes, vec);
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
  launch(swiglu_kernel, blocks_for(rows * cols), kThreads, 0, s)(make_act(p.gate, "swiglu gate"), make_act(p.up, "swiglu up"),
                                                             make_act(p.h, "swiglu h"), rw, rows, cols, p.limit, p.out_bf16);
  launch_check("swiglu", s);
}

}  // namespace v4rt::kernels::cuda
