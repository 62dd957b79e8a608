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
void launch_add(const AddParams& p, cudaStream_t s);
void launch_embedding(const EmbeddingParams& p, cudaStream_t s);
void launch_qdq(const QdqParams& p, cudaStream_t s);
void launch_swiglu(const SwigluParams& p, cudaStream_t s);

// --- norm_rope.cu --------------------------------------------------------------------------------
void launch_rms_norm(const RmsNormParams& p, cudaStream_t s);
void launch_rope(const RopeParams& p, cudaStream_t s);
void launch_hadamard(const HadamardParams& p, cudaStream_t s);

// --- mhc.cu --------------------------------------------------------------------------------------
void launch_hc_pre(const HcPreParams& p, cudaStream_t s);
void launch_hc_post(const HcPostParams& p, cudaStream_t s);
void launch_hc_head(const HcHeadParams& p, cudaStream_t s);

// --- compressor.cu -------------------------------------------------------------------------------
void launch_compressor_pool(const CompressorPoolParams& p, cudaStream_t s);

// --- indexer.cu ----------------------------------------------------------------------------------
void launch_indexer_scores(const IndexerScoresParams& p, cudaStream_t s);
void launch_topk(const TopkParams& p, cudaStream_t s);

// --- attention.cu --------------------------------------------------------------------------------
void launch_sparse_attention(const SparseAttentionParams& p, cudaStream_t s);

// --- moe.cu --------------------------------------------------------------------------------------
void launch_moe_gate(const MoeGateParams& p, cudaStream_t s);

// Routing layout of one moe_experts call for local experts [e_begin, e_end): rows grouped by expert
// (ascending), tokens in ascending order inside an expert. All device buffers, sized by the caller
// for num_tokens * topk rows.
struct MoeRouting {
  int32_t* counts = nullptr;       // [num_local]
  int32_t* row_offsets = nullptr;  // [num_local + 1]
  int32_t* row_token = nullptr;    // [num_tokens * topk] token of each grouped row
  float* row_weight = nullptr;     // [num_tokens * topk] routing weight of each grouped row
  int32_t* slot_row = nullptr;     // [num_tokens, topk] grouped row of (t, k), -1 = not local
};
void launch_moe_route(const TensorView& idx, const TensorView& weight, int e_begin, int e_end,
                      const MoeRouting& r, cudaStream_t s);
// x8/scale of grouped rows: x row = row_token[r] (rows >= row_offsets[num_local] are skipped).
void launch_moe_gather_quant(const Act& x, int64_t hidden, const MoeRouting& r, int num_local,
                             int64_t max_rows, uint8_t* x8, float* scale, cudaStream_t s);
// bf16 rows of x for the grouped rows (no quantization): xb [max_rows, hidden].
void launch_moe_gather_bf16(const Act& x, int64_t hidden, const MoeRouting& r, int num_local,
                            int64_t max_rows, uint16_t* xb, cudaStream_t s);
// h = bf16(swiglu(g, u) * row_weight) then act_quant -> h8, scale [rows][inter/128]; with
// `bf16_out`, h8 is instead bf16 [rows, inter] (scale unused).
void launch_moe_swiglu_quant(const uint16_t* g, const uint16_t* u, int64_t inter, float limit,
                             const MoeRouting& r, int num_local, int64_t max_rows, uint8_t* h8,
                             float* scale, bool bf16_out, cudaStream_t s);
// out[t] += Σ over local slots in ascending expert id of y[slot_row[t, k]] (fp32 accumulate).
void launch_moe_combine(const uint16_t* y, int64_t hidden, const TensorView& idx, const MoeRouting& r,
                        const Act& out, int64_t num_tokens, int topk, cudaStream_t s);

}  // namespace v4rt::kernels::cuda
