// SPDX-License-Identifier: MIT
// FP4 routed-expert GEMM (spec §2.2 fp4_gemm), grouped over the experts of one step.
// Weights stay packed e2m1 in device memory (I8 [n, k/2], low nibble = even element) with ue8m0
// scales per 32 inputs ([n, k/32]); they are dequantized in registers, never expanded in memory.
// Activations arrive FP8-quantized (act_quant_fp8, scales [rows][k/128] row-major), as bf16 or as
// fp32 (reference numerics), grouped so the rows of expert g are [row_offsets[g], row_offsets[g+1]).
//   out[r, n] = bf16( sum over 32-blocks b of (sum_{k in b} x8[r,k] s_x[r,k/128] * fp4(w[n,k])) * 2^(S[n,b]-127) )
// Two kernels. The CUDA-core kernel serves bf16 / fp32 activations (reference numerics) and FP8
// ones when the tensor-core kernel is switched off: a block owns 32 output channels of one expert
// and walks that expert's rows in tiles of 8. The
// tensor-core kernel (fp4_gemm_mma.cu; FP8 activations only, Fp4GroupedGemmParams::tensor_cores)
// serves prefill and, by default, decode: weights re-encoded to e4m3 and both operands converted
// to f16 on chip (exact), mma.sync f16 with fp32 promotion per 32-block, 16, 32, 64 or 128 rows x
// 128 channels per block (fp4_tc_rows_per_tile). At decode sizes (a mean of at most
// kFp4GemvMaxMeanRows rows per expert) it hands over to a GEMV on the same MMAs with the roles
// swapped (fp4_gemv.cu: channels on the m16 side, up to 8 rows of an expert on the n8 side or 16
// on two, each weight byte read once), bound by the weight bytes. The caller picks the kernel by
// rows per expert.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace v4rt::kernels::cuda {

struct Fp4GroupedGemmParams {
  const uint8_t* x8 = nullptr;           // [num_rows, k] e4m3
  const float* x_scale = nullptr;        // [num_rows, k/128]
  const uint16_t* x_bf16 = nullptr;      // [num_rows, k] bf16 instead of x8/x_scale (no act quant), or nullptr
  const float* x_f32 = nullptr;          // [num_rows, k] fp32 instead of x8/x_scale (no act quant), or nullptr
  const int32_t* row_offsets = nullptr;  // device [num_groups + 1]
  const uint8_t* const* w = nullptr;     // device [num_groups] of [n, k/2] packed e2m1 (nullptr: group skipped)
  const uint8_t* const* w_scale = nullptr;  // device [num_groups] of [n, k/32] ue8m0
  uint16_t* out = nullptr;               // [num_rows, n] bf16, or
  float* out_f32 = nullptr;              // [num_rows, n] fp32 (no rounding) when set
  int num_groups = 0;
  // Optional compaction of sparse groups (decode: a few of many experts have rows): block row y
  // serves group group_list[y] (< 0: none) for y < list_len, instead of group y of all num_groups.
  const int32_t* group_list = nullptr;   // device [list_len]
  int list_len = 0;
  int64_t n = 0, k = 0;                  // k % 128 == 0
  // Tensor-core kernels, tile and GEMV (need x8/x_scale; group_list is not used: every group with
  // rows and weights is served). max_rows bounds row_offsets[num_groups] and sizes their grids.
  bool tensor_cores = false;
  int64_t max_rows = 0;
  // With tensor_cores: the 128-row tile case (prefill) on FP8 wgmma (fp4_gemm_wgmma.cu) instead
  // of the mma.sync tile kernel.
  bool wgmma = false;
  // With tensor_cores: the 128-row tile case on the warp-specialized FP8 wgmma kernel
  // (fp4_gemm_wgmma_ws.cu; producer warpgroup copies and decodes, two consumer warpgroups
  // multiply), taken before the wgmma one.
  bool wgmma_ws = false;
  // The warp-specialized kernel persistent (one block per SM walking the items, its stage ring
  // running on across them) instead of one block per item (debug.cuda_expert_ws_persistent).
  bool ws_persistent = true;
  // How that kernel's activation tiles arrive (debug.cuda_expert_ws_a_copy): 0 by its producers'
  // cp.async, 1 by one tensor-map copy (TMA) a step, 2 by TMA in clusters of two blocks that take
  // adjacent channel tiles of one row tile, each block's half multicast into both (one L2 read of
  // the tile for two blocks; an odd channel-tile count runs as 1).
  // With 1 or 2 (or ws_weight_ring) x8 must hold max_rows rows: the tensor-map copies read whole
  // 64-row boxes, up to max_rows, where the cp.async copies read only the group's rows.
  int ws_a_copy = 0;
  // That kernel's raw weights through a ring of their own, each producer warp's copies running seven
  // steps ahead of its decode without waiting on the consumers (the activations by TMA: ws_a_copy
  // 0 runs as 1; debug.cuda_expert_ws_weight_ring).
  bool ws_weight_ring = false;
  // With tensor_cores: the decode GEMV's rows a pass. 0: by the mean rows per group (8, or 16 above
  // a mean of kFp4GemvMaxMeanRows, and the GEMV up to a mean of kFp4GemvMaxMeanRows16); 8: passes
  // of 8 rows and the GEMV up to the 8-row limits alone (debug.cuda_fp4_gemv_rows).
  int gemv_rows = 0;
  // With tensor_cores: the decode GEMV's k split (Fp4GemvShape::k_split; 0: fp4_gemv_shape's;
  // debug.cuda_fp4_gemv_k_split).
  int gemv_k_split = 0;
  // With tensor_cores: the GEMV's weight copies ask the L2 to fetch the aligned 128 or 256 bytes
  // around each 64-byte piece (0: no hint; debug.cuda_fp4_gemv_l2_prefetch).
  int gemv_l2_prefetch = 0;
  cudaStream_t stream = nullptr;
};

void fp4_grouped_gemm(const Fp4GroupedGemmParams& p);

// The tensor-core kernels directly (fp4_grouped_gemm calls it when p.tensor_cores is set): the
// GEMV when fp4_tc_use_gemv(p.max_rows, p.num_groups, p.n, p.k); else, for the 128-row tile case with bf16
// outputs, the warp-specialized or the plain wgmma kernel when p.wgmma_ws or p.wgmma is set; else
// the mma.sync tile kernel.
void fp4_grouped_gemm_tc(const Fp4GroupedGemmParams& p);
// The tile kernel alone, whatever the rows per group (fp4_gemm_mma.cu).
void fp4_grouped_gemm_mma(const Fp4GroupedGemmParams& p);
// The FP8 wgmma kernel alone, whatever the rows per group (fp4_gemm_wgmma.cu): 128-row tiles,
// one fp32 promotion per 128-k step (weights re-expressed as e4m3 times a power of two per
// channel and step: exact while a step's four weight scales span at most 14 binades).
void fp4_grouped_gemm_wgmma(const Fp4GroupedGemmParams& p);
// The warp-specialized FP8 wgmma kernel alone, whatever the rows per group (fp4_gemm_wgmma_ws.cu):
// the same tiles, numerics and outputs as fp4_grouped_gemm_wgmma.
void fp4_grouped_gemm_wgmma_ws(const Fp4GroupedGemmParams& p);
// Rows of one expert per wgmma block; fp4_grouped_gemm_tc takes a wgmma kernel (with
// Fp4GroupedGemmParams::wgmma or wgmma_ws, bf16 outputs) when fp4_tc_rows_per_tile picks this tile.
inline constexpr int kFp4WgmmaRowsPerTile = 128;
// The GEMV's launch shape: rows a pass (8 or 16; 0: fp4_gemv_shape picks by the mean rows) and
// how many ranges the block's 4 warps split k into (4, 2 or 1; the rest split the channels).
// Shapes of the same k split give the same outputs bit for bit.
struct Fp4GemvShape {
  int rows = 0;
  int k_split = 4;
};
// The shape fp4_grouped_gemv takes for max_rows rows over num_groups groups of k inputs
// (gemv_rows, gemv_k_split as Fp4GroupedGemmParams'): by default the largest k split that leaves
// each warp kFp4GemvMinSteps steps of 128 inputs.
inline constexpr int kFp4GemvMinSteps = 8;
Fp4GemvShape fp4_gemv_shape(int64_t max_rows, int64_t num_groups, int64_t k, int gemv_rows = 0, int gemv_k_split = 0);
// The GEMV alone, whatever the rows per group (fp4_gemv.cu): one launch, no scratch; an expert's
// rows go in passes of shape.rows, each pass reading the expert's weights again.
void fp4_grouped_gemv(const Fp4GroupedGemmParams& p, Fp4GemvShape shape = {});
// Two projections of the same rows in one GEMV launch (the experts' gate and up): p and q share
// the activations, row offsets, groups, n, k, max_rows and stream and differ in weights and
// outputs; q's weights are present for exactly the groups p's are. A block computes 32 channels of
// each from the same staged activations; every output is bit for bit the single GEMV's.
void fp4_grouped_gemv_pair(const Fp4GroupedGemmParams& p, const Fp4GroupedGemmParams& q, Fp4GemvShape shape = {});
// fp4_grouped_gemm(p) and fp4_grouped_gemm(q) for such a pair: one fp4_grouped_gemv_pair launch
// where the tensor-core dispatch takes the GEMV, else the two GEMMs.
void fp4_grouped_gemm_pair(const Fp4GroupedGemmParams& p, const Fp4GroupedGemmParams& q);
// Mean rows per group, rounded up (max_rows when there are no groups): what the tensor-core dispatch
// and the GEMV's shape go by. All groups count (which have weights is known only on the device),
// so with skipped groups the mean reads low.
inline int64_t fp4_mean_rows(int64_t max_rows, int64_t num_groups) {
  return num_groups > 0 ? (max_rows + num_groups - 1) / num_groups : max_rows;
}
// The largest mean rows per group (fp4_mean_rows) that takes the GEMV; the
// reasons are at fp4_tc_use_gemv in fp4_gemv.cu. In passes of 8 rows: kFp4GemvMaxMeanRows, and
// kFp4GemvMaxMeanRowsWide for projections with k >= 2n (the experts' gate/up); in passes of 16
// (gemv_rows 0): kFp4GemvMaxMeanRows16 for every shape.
inline constexpr int kFp4GemvMaxMeanRows = 4;
inline constexpr int kFp4GemvMaxMeanRowsWide = 6;
inline constexpr int kFp4GemvMaxMeanRows16 = 8;
bool fp4_tc_use_gemv(int64_t max_rows, int64_t num_groups, int64_t n = 0, int64_t k = 0, int gemv_rows = 0);
// Rows of one expert per tensor-core block in the 64-row shape.
inline constexpr int kFp4TcRowsPerTile = 64;
// The rows per tensor-core block (16, 32, 64 or 128) fp4_grouped_gemm_tc takes for max_rows rows
// over num_groups groups (by the mean rows per group).
int fp4_tc_rows_per_tile(int64_t max_rows, int64_t num_groups);

}  // namespace v4rt::kernels::cuda
