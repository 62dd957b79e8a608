// SPDX-License-Identifier: MIT
// RMSNorm (weighted, unweighted, and the bf16-arithmetic per-head query norm of spec §2.4),
// interleaved partial RoPE (§2.5, accurate sinf/cosf of fp32(pos) * inv_freq) and the Walsh-Hadamard
// rotation of the indexer (§2.7, same butterfly order as the reference).
#include <algorithm>
#include <cstring>

#include "kernels/cuda/batch_params.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/launch_geometry.h"
#include "kernels/cuda/ops.h"

namespace v4rt::kernels::cuda {

namespace {

constexpr int kMaxRopePairs = 64;

constexpr int kNormMaxThreads = 512;
constexpr int kNormMaxVec = 8;  // chunks of 4 a thread keeps in registers (rows to 16,384 at 512 threads)

// Chunk c (elements [4c, 4c + 4)) of row r of n elements.
__device__ __forceinline__ float4 ld_chunk(const Act& a, int64_t r, int64_t c, int64_t n, bool vec) {
  return a.ld4_part(r, 4 * c, n - 4 * c, vec);
}
__device__ __forceinline__ void st_chunk(const Act& a, int64_t r, int64_t c, int64_t n, float4 v, bool round,
                                         bool vec) {
  a.st4_part(r, 4 * c, n - 4 * c, v, round, vec);
}

__device__ __forceinline__ float norm_sq(float v, bool bf16_arith) { return bf16_arith ? round_bf16(v * v) : v * v; }

__device__ __forceinline__ float norm_out(float v, float s, float w, bool has_w, bool bf16_arith) {
  float o = v * s;
  if (bf16_arith) {
    o = round_bf16(o);
    if (has_w) o = round_bf16(o * w);
  } else if (has_w) {
    o *= w;
  }
  return o;
}

__device__ __forceinline__ float4 norm_out4(float4 v, float s, float4 w, bool has_w, bool bf16_arith) {
  return make_float4(norm_out(v.x, s, w.x, has_w, bf16_arith), norm_out(v.y, s, w.y, has_w, bf16_arith),
                     norm_out(v.z, s, w.z, has_w, bf16_arith), norm_out(v.w, s, w.w, has_w, bf16_arith));
}

// The scale of a row from its sum of squares.
__device__ __forceinline__ float norm_scale(float sum, int64_t dim, float eps, bool bf16_arith) {
  if (!bf16_arith) return 1.0f / sqrtf(sum / float(dim) + eps);
  const float m = round_bf16(sum / float(dim));
  const float v = round_bf16(m + eps);
  return round_bf16(1.0f / sqrtf(v));
}

// Row r by a group of `width` threads (a block or a warp), thread t of it owning the 4-element
// chunks c = t + k * width. The first kVec chunks (and their weights) are loaded at once and kept in
// registers for the output pass; wider rows read the rest twice. The sum of squares adds a thread's
// chunks in order, then `reduce` over the group: the order depends on dim only (norm_threads,
// kNormWarpMaxDim), never on the batch or on vec.
template <int kVec, typename Reduce>
__device__ __forceinline__ void rms_norm_row(const Act& x, const Act& y, const Act& w, bool has_w, int64_t dim,
                                             float eps, bool out_round, bool bf16_arith, bool vec, int64_t r, int t,
                                             int width, Reduce reduce) {
  const int64_t nchunks = ceil_div(dim, 4), tail = t + int64_t(kVec) * width;
  float4 xv[kVec], wv[kVec];
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const int64_t c = t + int64_t(k) * width;
    xv[k] = ld_chunk(x, r, c, dim, vec);
    wv[k] = has_w ? ld_chunk(w, 0, c, dim, vec) : make_float4(1.f, 1.f, 1.f, 1.f);
  }
  float sum = 0.f;  // chunks past the row hold zeros, which leave the sum as it is
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    sum += norm_sq(xv[k].x, bf16_arith);
    sum += norm_sq(xv[k].y, bf16_arith);
    sum += norm_sq(xv[k].z, bf16_arith);
    sum += norm_sq(xv[k].w, bf16_arith);
  }
  for (int64_t c = tail; c < nchunks; c += width) {
    const float4 v = ld_chunk(x, r, c, dim, vec);
    sum += norm_sq(v.x, bf16_arith);
    sum += norm_sq(v.y, bf16_arith);
    sum += norm_sq(v.z, bf16_arith);
    sum += norm_sq(v.w, bf16_arith);
  }
  const float s = norm_scale(reduce(sum), dim, eps, bf16_arith);
  const bool round = out_round && !bf16_arith;  // bf16_arith values are bf16 already
#pragma unroll
  for (int k = 0; k < kVec; ++k)
    st_chunk(y, r, t + int64_t(k) * width, dim, norm_out4(xv[k], s, wv[k], has_w, bf16_arith), round, vec);
  for (int64_t c = tail; c < nchunks; c += width) {
    const float4 wc = has_w ? ld_chunk(w, 0, c, dim, vec) : make_float4(1.f, 1.f, 1.f, 1.f);
    st_chunk(y, r, c, dim, norm_out4(ld_chunk(x, r, c, dim, vec), s, wc, has_w, bf16_arith), round, vec);
  }
}

// Rows wider than kNormWarpMaxDim: one block per row, the sum by block_sum.
template <int kVec>
__global__ void __launch_bounds__(kNormMaxThreads) rms_norm_kernel(Act x, Act y, Act w, bool has_w, int64_t dim,
                                                                   float eps, bool out_round, bool bf16_arith,
                                                                   bool vec) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  __shared__ float scratch[32];
  rms_norm_row<kVec>(x, y, w, has_w, dim, eps, out_round, bf16_arith, vec, blockIdx.x, threadIdx.x, blockDim.x,
                     [&](float v) { return block_sum(v, scratch); });
}

// Rows to kNormWarpMaxDim (the per-head query norm's 512 over tokens x heads rows, the latent's 512,
// q_lora's 1,024): one warp per row, kNormRowsPerBlock rows a block, the sum by warp_sum, no barrier.
constexpr int64_t kNormWarpMaxDim = 1024;
constexpr int kNormRowsPerBlock = 8;

template <int kVec>
__global__ void __launch_bounds__(32 * kNormRowsPerBlock) rms_norm_warp_kernel(Act x, Act y, Act w, bool has_w,
                                                                               int64_t dim, int64_t rows, float eps,
                                                                               bool out_round, bool bf16_arith,
                                                                               bool vec) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  const int64_t r = int64_t(blockIdx.x) * kNormRowsPerBlock + (threadIdx.x >> 5);
  if (r >= rows) return;  // warp-uniform
  rms_norm_row<kVec>(x, y, w, has_w, dim, eps, out_round, bf16_arith, vec, r, threadIdx.x & 31, 32,
                     [](float v) { return warp_sum(v); });
}

// Threads per row of rms_norm: a chunk of 4 elements each, 32 to kNormMaxThreads (a function of dim
// only, so a row gives the same bits whatever the batch).
int norm_threads(int64_t dim) {
  return int(std::clamp<int64_t>(ceil_div(ceil_div(dim, 4), 32) * 32, 32, kNormMaxThreads));
}

struct RopeArgs {
  float inv_freq[kMaxRopePairs];
};

// Rotates pair j of head h of row r by fp32(pos) * inv_freq[j].
__device__ __forceinline__ void rope_pair(const Act& x, int64_t r, int64_t h, int j, int64_t head_dim, int half,
                                          float pos, float inv_freq, bool inverse, bool out_round) {
  const float theta = pos * inv_freq;
  const float cs = cosf(theta);
  const float sn = inverse ? -sinf(theta) : sinf(theta);
  const int64_t c = h * head_dim + (head_dim - 2 * half) + 2 * j;
  const float a = x.ld(r, c), b = x.ld(r, c + 1);
  x.st(r, c, a * cs - b * sn, out_round);
  x.st(r, c + 1, b * cs + a * sn, out_round);
}

// One thread per (row, head, pair). positions: [rows] or nullptr (pos_begin + r * pos_step).
__global__ void rope_kernel(Act x, int64_t rows, int64_t heads, int64_t head_dim, int half, int64_t pos_begin,
                            int64_t pos_step, const int32_t* positions, bool inverse, bool out_round, RopeArgs args) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * heads * half) return;
  const int64_t r = i / (heads * half);
  const int64_t h = (i / half) % heads;
  const int j = int(i % half);
  const float pos = positions ? float(positions[r]) : float(pos_begin + r * pos_step);
  rope_pair(x, r, h, j, head_dim, half, pos, args.inv_freq[j], inverse, out_round);
}

// RopeParams::runs: a group of runs travels by value in the kernel parameters (no position upload,
// capturable in a CUDA graph); (kMaxKernelParamBytes - 256 - 16) / 32 bytes.
constexpr int kMaxRopeRuns = 1000;
struct RopeRunArgs {
  float inv_freq[kMaxRopePairs];
  int64_t row0;  // first row of the group's first run
  int num_runs;
  RopeRun runs[kMaxRopeRuns];
};
static_assert(sizeof(RopeRunArgs) <= kMaxKernelParamBytes, "rope kernel parameters");

// One thread per (row, head, pair) of the group's rows [row0, row0 + rows); the row's run by binary
// search over the runs' first rows.
__global__ void rope_runs_kernel(Act x, int64_t rows, int64_t heads, int64_t head_dim, int half, bool inverse,
                                 bool out_round, const __grid_constant__ RopeRunArgs a) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * heads * half) return;
  const int64_t r = a.row0 + i / (heads * half);
  const int64_t h = (i / half) % heads;
  const int j = int(i % half);
  const RopeRun& run = a.runs[part_holding(a.num_runs, r, [&](int k) { return a.runs[k].row_begin; })];
  const float pos = float(run.pos_begin + (r - run.row_begin) * run.pos_step);
  rope_pair(x, r, h, j, head_dim, half, pos, a.inv_freq[j], inverse, out_round);
}

// One block per row; the row lives in shared memory.
__global__ void hadamard_kernel(Act x, int64_t dim, bool out_round) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  extern __shared__ float v[];
  const int64_t r = blockIdx.x;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) v[i] = x.ld(r, i);
  __syncthreads();
  for (int64_t h = 1; h < dim; h *= 2) {
    for (int64_t p = threadIdx.x; p < dim / 2; p += blockDim.x) {
      const int64_t j = (p / h) * 2 * h + (p % h);
      const float a = v[j], b = v[j + h];
      v[j] = a + b;
      v[j + h] = a - b;
    }
    __syncthreads();
  }
  const float scale = 1.0f / sqrtf(float(dim));
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) x.st(r, i, v[i] * scale, out_round);
}

// Dims 32 to 1,024 (the indexer's 128): a warp per row, eight rows a block, lane l holding elements
// [kPer l, kPer l + kPer). The stages h < kPer run in the lane's registers, the others between lanes
// by shuffles (partner lane l ^ h / kPer): every element takes the same a + b or a - b of the same
// two values, stage by stage, as hadamard_kernel's (the bits of the CPU op).
constexpr int kHadamardRowsPerBlock = 8;

template <int kPer>
__global__ void __launch_bounds__(32 * kHadamardRowsPerBlock) hadamard_warp_kernel(Act x, int64_t rows,
                                                                                   bool out_round, bool vec) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  constexpr int kDim = 32 * kPer;
  const int64_t r = int64_t(blockIdx.x) * kHadamardRowsPerBlock + (threadIdx.x >> 5);
  if (r >= rows) return;  // warp-uniform
  const int lane = threadIdx.x & 31;
  const int64_t c0 = int64_t(lane) * kPer;
  float v[kPer];
  if constexpr (kPer % 4 == 0) {
#pragma unroll
    for (int j = 0; j < kPer; j += 4) {
      const float4 q = x.ld4_part(r, c0 + j, kDim - (c0 + j), vec);
      v[j] = q.x, v[j + 1] = q.y, v[j + 2] = q.z, v[j + 3] = q.w;
    }
  } else {
#pragma unroll
    for (int j = 0; j < kPer; ++j) v[j] = x.ld(r, c0 + j);
  }
#pragma unroll
  for (int h = 1; h < kPer; h *= 2) {
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      if ((j & h) != 0) continue;
      const float a = v[j], b = v[j + h];
      v[j] = a + b;
      v[j + h] = a - b;
    }
  }
#pragma unroll
  for (int h = kPer; h < kDim; h *= 2) {
    const int m = h / kPer;
    const bool hi = (lane & m) != 0;  // this lane holds the j + h side of its pairs
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const float other = __shfl_xor_sync(0xffffffffu, v[j], m);
      v[j] = hi ? other - v[j] : v[j] + other;
    }
  }
  const float scale = 1.0f / sqrtf(float(kDim));
  if constexpr (kPer % 4 == 0) {
#pragma unroll
    for (int j = 0; j < kPer; j += 4) {
      x.st4_part(r, c0 + j, kDim - (c0 + j), make_float4(v[j] * scale, v[j + 1] * scale, v[j + 2] * scale,
                                                         v[j + 3] * scale), out_round, vec);
    }
  } else {
#pragma unroll
    for (int j = 0; j < kPer; ++j) x.st(r, c0 + j, v[j] * scale, out_round);
  }
}

// RopeParams::runs, one launch per group of kMaxRopeRuns runs (empty runs skipped).
void launch_rope_runs(const RopeParams& p, int64_t heads, int64_t head_dim, int half, cudaStream_t s) {
  const Act x = make_act(p.x, "rope x");
  RopeRunArgs a;
  if (LaunchLog::active_for(s)) std::memset(&a, 0, sizeof(a));  // logged parameters compare bytewise
  for (int i = 0; i < half; ++i) a.inv_freq[i] = p.inv_freq[i];
  a.num_runs = 0;
  int64_t rows = 0;  // of the group
  auto flush = [&] {
    if (a.num_runs > 0) {
      const int64_t n = rows * heads * half;
      launch(rope_runs_kernel, grid_x_for(n, 256, "rope"), 256, 0, s)(x, rows, heads, head_dim, half, p.inverse,
                                                                  p.out_bf16, a);
      launch_check("rope (runs)", s);
    }
    a.num_runs = 0;
    rows = 0;
  };
  int64_t next = 0;
  for (int64_t k = 0; k < p.num_runs; ++k) {
    const RopeRun& run = p.runs[k];
    CHECK(run.row_begin == next && run.num_rows >= 0) << "rope runs must tile the rows in order";
    next += run.num_rows;
    if (run.num_rows == 0) continue;
    if (a.num_runs == 0) a.row0 = run.row_begin;
    a.runs[a.num_runs++] = run;
    rows += run.num_rows;
    if (a.num_runs == kMaxRopeRuns) flush();
  }
  CHECK_EQ(next, p.x.shape[0]) << "rope runs cover " << next << " of " << p.x.shape[0] << " rows";
  flush();
}

}  // namespace

void launch_rms_norm(const RmsNormParams& p, cudaStream_t s) {
  const int64_t rows = p.x.shape[0], dim = act_row_width(p.x);
  CHECK_EQ(act_row_width(p.y), dim) << "rms_norm y";
  const bool has_w = !p.weight.empty();
  Act w;
  if (has_w) {
    CHECK_EQ(p.weight.rows * p.weight.cols, dim) << "rms_norm weight size";
    w = make_weight_act(p.weight, "rms_norm weight");
    w.stride = 0;
  }
  if (rows == 0) return;
  const Act x = make_act(p.x, "rms_norm x"), y = make_act(p.y, "rms_norm y");
  const bool vec = dim % 4 == 0 && x.vec_ok() && y.vec_ok() && (!has_w || w.vec_ok());
  if (dim <= kNormWarpMaxDim) {
    const int64_t per_lane = ceil_div(ceil_div(dim, 4), 32);
    const unsigned grid = grid_x(ceil_div(rows, kNormRowsPerBlock), "rms_norm");
    auto run = [&](auto kernel) {
      launch(kernel, grid, 32 * kNormRowsPerBlock, 0, s)(x, y, w, has_w, dim, rows, p.eps, p.out_bf16,
                                                         p.bf16_arith, vec);
    };
    if (per_lane <= 1) run(rms_norm_warp_kernel<1>);
    else if (per_lane <= 2) run(rms_norm_warp_kernel<2>);
    else if (per_lane <= 4) run(rms_norm_warp_kernel<4>);
    else run(rms_norm_warp_kernel<kNormMaxVec>);
    launch_check("rms_norm (warp per row)", s);
    return;
  }
  const int threads = norm_threads(dim);
  const int64_t per_thread = ceil_div(ceil_div(dim, 4), threads);
  const unsigned grid = grid_x(rows, "rms_norm");
  auto run = [&](auto kernel) {
    launch(kernel, grid, threads, 0, s)(x, y, w, has_w, dim, p.eps, p.out_bf16, p.bf16_arith, vec);
  };
  if (per_thread <= 1) run(rms_norm_kernel<1>);
  else if (per_thread <= 2) run(rms_norm_kernel<2>);
  else if (per_thread <= 4) run(rms_norm_kernel<4>);
  else run(rms_norm_kernel<kNormMaxVec>);
  launch_check("rms_norm", s);
}

void launch_rope(const RopeParams& p, cudaStream_t s) {
  const int64_t rows = p.x.shape[0];
  const int64_t heads = p.x.ndim == 3 ? p.x.shape[1] : 1;
  const int64_t head_dim = p.x.shape[size_t(p.x.ndim - 1)];
  CHECK_EQ(act_row_width(p.x), heads * head_dim);
  CHECK(p.rope_dim > 0 && p.rope_dim % 2 == 0 && p.rope_dim <= head_dim) << "rope_dim " << p.rope_dim;
  const int half = p.rope_dim / 2;
  CHECK_LE(half, kMaxRopePairs) << "rope_dim " << p.rope_dim << " too large";
  CHECK(p.inv_freq != nullptr) << "rope: inv_freq missing";
  if (p.runs) {
    launch_rope_runs(p, heads, head_dim, half, s);
    return;
  }
  RopeArgs args{};
  for (int i = 0; i < half; ++i) args.inv_freq[i] = p.inv_freq[i];
  const int64_t n = rows * heads * half;
  if (n == 0) return;
  launch(rope_kernel, grid_x_for(n, 256, "rope"), 256, 0, s)(make_act(p.x, "rope x"), rows, heads, head_dim, half,
                                                         p.pos_begin, p.pos_step, p.positions, p.inverse, p.out_bf16,
                                                         args);
  launch_check("rope", s);
}

void launch_hadamard(const HadamardParams& p, cudaStream_t s) {
  const int64_t rows = p.x.shape[0], dim = act_row_width(p.x);
  CHECK(dim > 0 && (dim & (dim - 1)) == 0 && dim <= 16384) << "hadamard dim " << dim;
  if (rows == 0) return;
  const Act x = make_act(p.x, "hadamard x");
  if (dim >= 32 && dim <= 1024) {  // a warp per row
    const bool vec = x.vec_ok();
    const unsigned grid = grid_x(ceil_div(rows, int64_t(kHadamardRowsPerBlock)), "hadamard");
    auto run = [&](auto kernel) {
      launch(kernel, grid, 32 * kHadamardRowsPerBlock, 0, s)(x, rows, p.out_bf16, vec);
    };
    switch (dim) {
      case 32: run(hadamard_warp_kernel<1>); break;
      case 64: run(hadamard_warp_kernel<2>); break;
      case 128: run(hadamard_warp_kernel<4>); break;
      case 256: run(hadamard_warp_kernel<8>); break;
      case 512: run(hadamard_warp_kernel<16>); break;
      default: run(hadamard_warp_kernel<32>); break;
    }
    launch_check("hadamard", s);
    return;
  }
  // Else a block per row, the row in shared memory: past 12,288 dims it exceeds the 48 KB a launch
  // gets without opting in. The opt-in is per device, so it is made at every such launch.
  const size_t smem = size_t(dim) * 4;
  if (smem > 48 * 1024)
    CUDA_CHECK(cudaFuncSetAttribute(hadamard_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  launch(hadamard_kernel, grid_x(rows, "hadamard"), 128, smem, s)(x, dim, p.out_bf16);
  launch_check("hadamard", s);
}

}  // namespace v4rt::kernels::cuda
