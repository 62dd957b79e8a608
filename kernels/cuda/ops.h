// SPDX-License-Identifier: MIT
// Launchers of the CUDA op kernels, one op family per .cu file, plus the small device-side view
// types they share. Activation views may be BF16 (the production dtype) or F32; every kernel reads
// and writes through Act, which converts at the edge and computes in fp32 inside. Included only by
// .cu files of this folder (cuda_backend.cu dispatches to these launchers).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/check.h"
#include "kernels/backend.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/factory.h"

namespace v4rt::kernels::cuda {

// A row-major activation (or F32 weight) view: element (r, c) at data[r * stride + c].
struct Act {
  void* data = nullptr;
  int64_t stride = 0;
  bool bf16 = false;
  __device__ __forceinline__ float ld(int64_t r, int64_t c) const {
    return bf16 ? bf16_to_f32(static_cast<const uint16_t*>(data)[r * stride + c])
                : static_cast<const float*>(data)[r * stride + c];
  }
  // Elements (r, c..c+3); needs c % 4 == 0 and aligned rows (vec_ok).
  __device__ __forceinline__ float4 ld4(int64_t r, int64_t c) const {
    if (bf16) {
      const uint2 u = *reinterpret_cast<const uint2*>(static_cast<const uint16_t*>(data) + r * stride + c);
      return make_float4(__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u), __uint_as_float(u.y << 16),
                         __uint_as_float(u.y & 0xffff0000u));
    }
    return *reinterpret_cast<const float4*>(static_cast<const float*>(data) + r * stride + c);
  }
  // Whether ld4 may be used: 16-byte aligned base and a row stride of a multiple of 4 elements.
  bool vec_ok() const { return stride % 4 == 0 && reinterpret_cast<uintptr_t>(data) % 16 == 0; }
  // Elements (r, c .. c + 3) of a run with `left` elements from c on (zeros past its end): one 8- or
  // 16-byte load when vec (c % 4 == 0, vec_ok(), runs of a multiple of 4), else scalar loads.
  __device__ __forceinline__ float4 ld4_part(int64_t r, int64_t c, int64_t left, bool vec) const {
    if (vec) return left > 0 ? ld4(r, c) : make_float4(0.f, 0.f, 0.f, 0.f);
    return make_float4(left > 0 ? ld(r, c) : 0.f, left > 1 ? ld(r, c + 1) : 0.f, left > 2 ? ld(r, c + 2) : 0.f,
                       left > 3 ? ld(r, c + 3) : 0.f);
  }
  // Stores what ld4_part loads (as st: `round` rounds F32 storage to bf16).
  __device__ __forceinline__ void st4_part(int64_t r, int64_t c, int64_t left, float4 v, bool round, bool vec) const {
    if (left <= 0) return;
    if (vec && bf16) {
      uint2 u;
      u.x = uint32_t(f32_to_bf16(v.x)) | (uint32_t(f32_to_bf16(v.y)) << 16);
      u.y = uint32_t(f32_to_bf16(v.z)) | (uint32_t(f32_to_bf16(v.w)) << 16);
      *reinterpret_cast<uint2*>(static_cast<uint16_t*>(data) + r * stride + c) = u;
    } else if (vec) {
      if (round) v = make_float4(round_bf16(v.x), round_bf16(v.y), round_bf16(v.z), round_bf16(v.w));
      *reinterpret_cast<float4*>(static_cast<float*>(data) + r * stride + c) = v;
    } else {
      st(r, c, v.x, round);
      if (left > 1) st(r, c + 1, v.y, round);
      if (left > 2) st(r, c + 2, v.z, round);
      if (left > 3) st(r, c + 3, v.w, round);
    }
  }
  // round: round the value to bf16 also when the storage is F32 (official out_bf16).
  __device__ __forceinline__ void st(int64_t r, int64_t c, float v, bool round = false) const {
    if (bf16) {
      static_cast<uint16_t*>(data)[r * stride + c] = f32_to_bf16(v);
    } else {
      static_cast<float*>(data)[r * stride + c] = round ? round_bf16(v) : v;
    }
  }
};

// Builds an Act from a device view (BF16 or F32, rows contiguous inside). `what` names the view.
Act make_act(const TensorView& v, const char* what);
// Same for a weight (F32 or BF16 on the device).
Act make_weight_act(const WeightView& w, const char* what);
// Elements per row of a view (product of the non-row dims), checking the row is contiguous.
int64_t act_row_width(const TensorView& v);

// --- elementwise.cu ------------------------------------------------------------------------------
void launch_fill(const Act& dst, int64_t rows, int64_t cols, float value, cudaStream_t s);
// dst = convert(src) (dtype change allowed), optional bf16 rounding.
void launch_convert(const Act& src, const Act& dst, int64_t rows, int64_t cols, bool round_bf16, cudaStream_t s);
// dst = (accumulate ? dst : 0) + src.
void launch_add_into(const Act& src, const Act& dst, int64_t rows, int64_t cols, bool accumulate,
                     bool round_bf16, cudaStream_t s);
// Two-term bf16 split of an [rows, cols] view: dst [2 * rows, cols] contiguous, rows [0, rows) hold
// hi = bf16(x), rows [rows, 2 * rows) hold lo = bf16(x - hi).
void launch_split_bf16(const Act& src, uint16_t* dst, int64_t rows, int64_t cols, cudaStream_t s);
// dst = (accumulate ? dst : 0) + y2[r] + y2[rows + r] for y2 fp32 [2 * rows, ld] (the GEMM of a split).
void launch_add_split(const float* y2, int64_t ld, const Act& dst, int64_t rows, int64_t cols, bool accumulate,
                      bool round_bf16, cudaStream_t s);
void launch_add(const AddParams& p, cudaStream_t s);
void launch_embedding(const EmbeddingParams& p, cudaStream_t s);
void launch_qdq(const QdqParams& p, cudaStream_t s);
void launch_swiglu(const SwigluParams& p, cudaStream_t s);

// --- copy_rows.cu --------------------------------------------------------------------------------
// Backend::copy_rows_batch: one launch per group of up to 640 copies (device views only).
void launch_copy_rows_batch(const RowCopy* copies, size_t num_copies, cudaStream_t s);

// --- norm_rope.cu --------------------------------------------------------------------------------
void launch_rms_norm(const RmsNormParams& p, cudaStream_t s);
void launch_rope(const RopeParams& p, cudaStream_t s);
void launch_hadamard(const HadamardParams& p, cudaStream_t s);

// --- mhc.cu --------------------------------------------------------------------------------------
// mix: x . fn^T of every token already in a device [n][25] F32 buffer (entries 0..23 of each row;
// a GEMM of prefill-sized calls); the sum of squares goes to entry 24, or with fused_sumsq is taken
// by the finishing kernel from the x it holds (no pass of its own). nullptr: split GEMV kernels.
void launch_hc_pre(const HcPreParams& p, cudaStream_t s, float* mix = nullptr, bool fused_sumsq = false);
void launch_hc_post(const HcPostParams& p, cudaStream_t s);
void launch_hc_head(const HcHeadParams& p, cudaStream_t s);

// --- compressor.cu -------------------------------------------------------------------------------
void launch_compressor_pool(const CompressorPoolParams& p, cudaStream_t s);
// Backend::compressor_pool_batch: one launch per group of parts (device views only).
void launch_compressor_pool_batch(const CompressorPoolBatchParams& p, cudaStream_t s);

// --- indexer.cu ----------------------------------------------------------------------------------
// `k` (factory.h) picks the kernels: the CUDA-core one, the bf16 tensor-core one for prefill shapes
// (bit for bit the reference), the FP8 wgmma ones for compact FP4 keys (indexer_fp8.cu for prefill,
// indexer_fp8_decode.cu for decode batches).
void launch_indexer_scores(const IndexerScoresParams& p, cudaStream_t s, const IndexerKernels& k);
// The parts in groups of as many as fit in the kernel parameters, one launch per group (a single
// part may take the tensor-core kernel); the parts must share what IndexerScoresBatchParams says.
void launch_indexer_scores_batch(const IndexerScoresBatchParams& p, cudaStream_t s, const IndexerKernels& k);
// --- topk.cu -------------------------------------------------------------------------------------
void launch_topk(const TopkParams& p, cudaStream_t s);

// --- sample.cu ---------------------------------------------------------------------------------
void launch_sample(const SampleParams& p, cudaStream_t s);

// --- attention.cu --------------------------------------------------------------------------------
// k: the kernels the launch may take (factory.h, AttentionKernels).
void launch_sparse_attention(const SparseAttentionParams& p, cudaStream_t s, const AttentionKernels& k = {});
// The parts in groups of as many as fit in the kernel parameters, one launch (plus the split merge)
// per group; the parts must share what SparseAttentionBatchParams says they share.
void launch_sparse_attention_batch(const SparseAttentionBatchParams& p, cudaStream_t s, const AttentionKernels& k = {});

// --- kv_pack.cu ---------------------------------------------------------------------------------
void launch_kv_pack(const KvPackParams& p, cudaStream_t s);

// --- moe.cu --------------------------------------------------------------------------------------
// logits: gate . x of every token and expert already in a device [n, experts] F32 buffer (a GEMM
// of prefill-sized calls); activated there in place. nullptr: the router's own fp32 kernels.
void launch_moe_gate(const MoeGateParams& p, cudaStream_t s, float* logits = nullptr);

// Routing layout of one moe_experts call for local experts [e_begin, e_end): rows grouped by expert
// (ascending), tokens in ascending order inside an expert. All device buffers, sized by the caller
// for num_tokens * topk rows.
struct MoeRouting {
  int32_t* counts = nullptr;       // [num_local]
  int32_t* row_offsets = nullptr;  // [num_local + 1]
  int32_t* row_token = nullptr;    // [num_tokens * topk] token of each grouped row
  float* row_weight = nullptr;     // [num_tokens * topk] routing weight of each grouped row
  int32_t* slot_row = nullptr;     // [num_tokens, topk] grouped row of (t, k), -1 = not local
  int32_t* active = nullptr;       // [num_local] local experts with rows, ascending, then -1
};
// Up to 1,024 (t, k) entries in one single-block launch (small_ok), else count, offsets and fill
// launches; the same arrays either way.
void launch_moe_route(const TensorView& idx, const TensorView& weight, int e_begin, int e_end,
                      const MoeRouting& r, cudaStream_t s, bool small_ok = false);
// x8/scale of grouped rows: x row = row_token[r] (rows >= row_offsets[num_local] are skipped).
void launch_moe_gather_quant(const Act& x, int64_t hidden, const MoeRouting& r, int num_local,
                             int64_t max_rows, uint8_t* x8, float* scale, cudaStream_t s);
// Rows of x for the grouped rows without quantization: x_bf16 or x_f32 [max_rows, hidden].
void launch_moe_gather(const Act& x, int64_t hidden, const MoeRouting& r, int num_local, int64_t max_rows,
                       uint16_t* x_bf16, float* x_f32, cudaStream_t s);
// h = swiglu(g, u) * row_weight for the grouped rows. Inputs g/u bf16 or g32/u32 fp32 [rows, inter];
// output one of: h_f32 (fp32), h_bf16 (bf16), h8 + h_scale (h rounded to bf16, then FP8 act_quant,
// scales [rows][inter/128]: the official pipeline).
struct MoeSwigluIo {
  const uint16_t* g = nullptr;
  const uint16_t* u = nullptr;
  const float* g32 = nullptr;
  const float* u32 = nullptr;
  uint8_t* h8 = nullptr;
  float* h_scale = nullptr;
  uint16_t* h_bf16 = nullptr;
  float* h_f32 = nullptr;
};
void launch_moe_swiglu(const MoeSwigluIo& io, int64_t inter, float limit, const MoeRouting& r, int num_local,
                       int64_t max_rows, cudaStream_t s);
// out[t] += Σ over local slots in ascending expert id of y[slot_row[t, k]] (fp32 accumulate), or
// out[t] = that sum added onto 0 when !accumulate; y is bf16, or fp32 when y_f32 is set.
void launch_moe_combine(const uint16_t* y, const float* y_f32, int64_t hidden, const TensorView& idx,
                        const MoeRouting& r, const Act& out, int64_t num_tokens, int topk, bool accumulate,
                        cudaStream_t s);

}  // namespace v4rt::kernels::cuda
