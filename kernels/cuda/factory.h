// SPDX-License-Identifier: MIT
// The CUDA backend's constructor function, declared without any CUDA header so host-only code
// (kernels/backend_factory.cpp) can call it.
#pragma once

#include <cstdint>
#include <memory>

#include "kernels/backend.h"

namespace v4rt::kernels::cuda {

// How projections and routed experts compute under the reference numerics (no official flags:
// LinearParams::act_quant_fp8 and MoeExpertsParams::official false) with F32 activations.
enum class ReferencePrecision : uint8_t {
  // Default. BF16 weights (FP8 weights dequantized exactly to bf16) on bf16 tensor cores with fp32
  // accumulate; each F32 input row enters as two bf16 terms, hi = bf16(x) and lo = bf16(x - hi),
  // stacked in one GEMM of 2M rows (weights read once), so the input keeps ~16 mantissa bits.
  // Routed experts (CUDA-core FP4 kernel) keep fp32 activations and intermediates.
  kBf16Split,
  // One bf16 rounding of every GEMM input and of the expert intermediates (g, u, h, y). On
  // golden/tiny-a this flips MoE routing choices and lands at ~5e-2 from the fp32 golden.
  kBf16,
  // fp32 GEMMs on F32 copies of the BF16/FP8 weights (twice their memory) and fp32 experts: the
  // validation path, within 1e-4 of the fp32 golden.
  kF32,
};

// Which kernels a sparse attention launch may take (CudaBackendOptions).
struct AttentionKernels {
  // Never the split multi-query kernel, nor decode shapes on the tensor-core one (attention_per_warp).
  bool per_warp = false;
  // Prefill shapes under the official numerics on the bf16 tensor-core kernel (attention_tensor_cores).
  bool tensor_cores = true;
  // Decode shapes too, split over the candidates (decode_tensor_cores).
  bool decode_tc = false;
  // Of the prefill shapes whose rows are all bf16 (the bf16 views) and whose candidate lists reach
  // 32 tiles, 512-dim heads on the warp-specialized bf16 wgmma kernel (attention_wgmma.cu;
  // attention_wgmma), taken before ws.
  bool wgmma = true;
  int64_t wgmma_min_tiles = 32;  // the list length (64-candidate tiles) from which wgmma is taken
  // That kernel in clusters of two tokens' blocks sharing the compressed tiles (attention_wgmma_cluster).
  bool wgmma_cluster = false;
  // Of the prefill shapes whose rows are all bf16 (the bf16 views), 512-dim heads on the
  // warp-specialized kernel (attention_ws.cu; attention_ws).
  bool ws = true;
  // Prefill shapes on the tensor-core kernels read bf16 views of their rows (attention_bf16_view.cu;
  // attention_bf16_view).
  bool bf16_view = true;
};

// Which kernels an indexer-scores launch may take (CudaBackendOptions; ops.h).
struct IndexerKernels {
  // Prefill shapes under the official numerics on tensor cores (indexer_tensor_cores).
  bool tensor_cores = true;
  // Of those, compact FP4 keys on the FP8 wgmma kernel (indexer_fp8.cu; indexer_fp8).
  bool fp8 = true;
  // With fp8, decode batches of compact FP4 keys on the FP8 wgmma decode kernel
  // (indexer_fp8_decode.cu; decode_tensor_cores).
  bool decode_tc = true;
  // The FP8 prefill kernel reads the launch's keys decoded once (indexer_predecode).
  bool predecode = true;
  // The FP8 kernels sum each score's head terms on the tensor cores (indexer_head_sum_mma).
  bool head_sum_mma = true;
};

struct CudaBackendOptions {
  ReferencePrecision reference = ReferencePrecision::kBf16Split;
  // FP4 GEMMs with FP8 activations (routed experts and FP4 projections under the official
  // numerics) take the tensor-core W4A8 kernel when they average at least this many rows per
  // expert with rows, and the CUDA-core kernel below it. The rows are counted on the host as
  // tokens x top-k over min(local experts, rows): under expert parallelism an upper bound of the
  // rows the local experts receive. 1 (every call on the W4A8 kernel, whose 16-row tile serves
  // decode) beat 4 and 16 at Flash decode batches of 1, 64 and 256 (docs/PERFORMANCE.md). 0 keeps
  // every call on the CUDA-core kernel (debug.cuda_expert_tc_min_rows in the runtime YAML).
  int64_t expert_tc_min_rows = 1;
  // Prefill-shaped sparse attention and lightning-indexer scores under the official numerics on
  // bf16 tensor cores (debug.cuda_attention_tc / debug.cuda_indexer_tc); off: the CUDA-core kernels.
  bool attention_tensor_cores = true;
  bool indexer_tensor_cores = true;
  // Indexer scores of compact FP4 keys on FP8 wgmma (debug.cuda_indexer_fp8): prefill chunks
  // (indexer_fp8.cu) instead of the bf16 mma.sync kernel, which alone reproduces the reference's
  // scores bit for bit, and with decode_tensor_cores decode batches (indexer_fp8_decode.cu).
  bool indexer_fp8 = true;
  // The FP8 prefill kernel reads the launch's keys decoded to e4m3 tiles once
  // (debug.cuda_indexer_predecode; indexer_fp8.cu) instead of each block decoding its tiles.
  bool indexer_predecode = true;
  // The FP8 kernels (prefill and decode) sum each score's bf16 head terms with one mma.sync per 16
  // heads against a column of ones (debug.cuda_indexer_head_sum_mma) instead of fp32 adds per
  // thread and a quad shuffle (indexer_fp8_common.cuh).
  bool indexer_head_sum_mma = true;
  // act_dtype() is BF16 (debug.cuda_bf16_activations): under the official numerics the model keeps
  // the activations whose writers round them to bf16 in bf16 storage (model/blocks.h,
  // rounded_dtype; the indexer scores too); false: F32 like every other activation, the same
  // values in twice the bytes.
  bool bf16_activations = true;
  // Prefill-sized routed-expert GEMMs (the 128-row tile case of fp4_tc_rows_per_tile) on FP8 wgmma
  // (fp4_gemm_wgmma.cu; debug.cuda_expert_wgmma) instead of the mma.sync tile kernel, bf16 outputs
  // only (the tensor cores' FP8 sums keep fewer bits than fp32; far below a bf16 rounding).
  bool expert_wgmma = true;
  // The same GEMMs on the warp-specialized FP8 wgmma kernel (fp4_gemm_wgmma_ws.cu;
  // debug.cuda_expert_wgmma_ws), taken before the one above; the same bits (H100, 8K prefill: the
  // experts 26.7 -> 24.2 ms, docs/PERFORMANCE.md).
  bool expert_wgmma_ws = true;
  // That kernel persistent, one block per SM over the items (debug.cuda_expert_ws_persistent);
  // false: one block per item. The same bits.
  bool expert_ws_persistent = true;
  // How that kernel's activation tiles arrive (Fp4GroupedGemmParams::ws_a_copy;
  // debug.cuda_expert_ws_a_copy): 0 by cp.async, 1 by TMA, 2 by TMA multicast in clusters of two.
  // 1: 1% faster than cp.async on the H100 (8K prefill experts 17.97 against 18.17 ms; the others
  // slower; docs/PERFORMANCE.md, twenty-second run).
  int expert_ws_a_copy = 1;
  // Its raw weights through a ring of their own, seven steps of copies ahead of the decode
  // (Fp4GroupedGemmParams::ws_weight_ring; debug.cuda_expert_ws_weight_ring).
  bool expert_ws_weight_ring = false;
  // Prefill sparse attention of 512-dim heads whose rows are all bf16 (the bf16 views) and whose
  // candidate lists reach 32 tiles (the HCA layer at long context) on the warp-specialized bf16
  // wgmma kernel (attention_wgmma.cu; debug.cuda_attention_wgmma): a producer warpgroup copies the
  // tiles, two consumer warpgroups multiply on wgmma (V read from the K tile by the transpose
  // flag); the mma.sync kernel's outputs bit for bit; taken before attention_ws; needs
  // attention_tensor_cores. H100: 1M prefill attention 3.41 against 3.57 s on attention_ws alone,
  // but slower on short lists (8K: 8.56 against 7.16 ms), which keep attention_ws.
  bool attention_wgmma = true;
  int64_t attention_wgmma_min_tiles = 32;  // debug.cuda_attention_wgmma_min_tiles; 0: every length
  // That kernel in clusters of two adjacent tokens' blocks (debug.cuda_attention_wgmma_cluster): the
  // compressed tiles both walk (the HCA layer's entries, stored in tiles of the kernel's layout by
  // the bf16 views) copied once from L2 for both, by a bulk copy multicast to the pair. On: with the
  // tile barriers in their default (CTA) semantics the H100's 1M prefill attention took 2.934 s
  // against 3.347 s one block a token (docs/PERFORMANCE.md, twenty-second run).
  bool attention_wgmma_cluster = true;
  // Sparse attention of 512-dim heads whose 64-head blocks fill the SMs and whose rows are all bf16
  // (prefill launches with attention_bf16_view) on the warp-specialized kernel (attention_ws.cu;
  // debug.cuda_attention_ws): a producer warpgroup copies the next 64-candidate tile by cp.async
  // while two consumer warpgroups multiply the current one; the mma.sync kernel's outputs bit for
  // bit; taken before attention_wgmma. H100, 1M prefill: attention 3.56 against the mma.sync
  // kernel's 3.95 s (both with the views; docs/PERFORMANCE.md, twelfth run). Rows to decode keep
  // the mma.sync kernel, whose 16 warps share the decode (one producer warpgroup was too slow).
  bool attention_ws = true;
  // Prefill-shaped sparse attention on the tensor-core kernels first converts its F32 window rows
  // and compact FP8 entries into bf16 views (attention_bf16_view.cu; debug.cuda_attention_bf16_view),
  // exactly, once per launch, so the kernels copy each candidate tile by cp.async (two KV tiles in
  // flight) instead of decoding it once per query; the same outputs bit for bit.
  bool attention_bf16_view = true;
  // Decode-sized sparse attention on the tensor-core kernel split over the candidates, and decode
  // batches' indexer scores of compact FP4 keys on FP8 wgmma (indexer_fp8_decode.cu), instead of
  // the split multi-query and CUDA-core kernels (debug.cuda_decode_tc). H100, batch 256: attention
  // 3.59 -> 0.75 ms, indexer 0.65 -> 0.16 ms per two-layer step (docs/PERFORMANCE.md).
  bool decode_tensor_cores = true;
  // Decode-sized FP8 projections (up to 8 tokens) with their products on FP8 mma.sync
  // (gemv_mma.cu; debug.cuda_gemv_mma) instead of the CUDA-core GEMV. H100, L2-cold: wq_b at 8
  // tokens 74.9 -> 17.9 us, at 1 token 20.1 -> 16.4 us; the batch-1 step's FP8 projections 0.199
  // -> 0.185 ms (docs/PERFORMANCE.md, ninth run). Within an fp64 bound of the block-scaled product,
  // not bit for bit the tiled GEMM.
  bool gemv_tensor_cores = true;
  // The MoE routing layout of up to 1,024 (token, expert) entries in one single-block kernel
  // (moe.cu, moe_route_small_kernel; debug.cuda_moe_route_small) instead of the count, offsets and
  // fill launches; the same arrays. Off: no faster in the H100 step (docs/CUDA.md, 2026-12-06).
  bool moe_route_small = false;
  // The decode expert GEMV's rows a pass (Fp4GroupedGemmParams::gemv_rows; debug.cuda_fp4_gemv_rows):
  // 0 by the mean rows per expert (16 above a mean of 4, and the GEMV up to a mean of 8), 8 the
  // 8-row passes alone. 8: the 16-row passes were slower at every decode size on an H100
  // (docs/PERFORMANCE.md, fourteenth run).
  int fp4_gemv_rows = 8;
  // Its k split (Fp4GroupedGemmParams::gemv_k_split; debug.cuda_fp4_gemv_k_split): 0 by k (fp4_gemv_shape), 4, 2 or 1.
  int fp4_gemv_k_split = 0;
  // Its weight copies' L2 prefetch size (Fp4GroupedGemmParams::gemv_l2_prefetch;
  // debug.cuda_fp4_gemv_l2_prefetch): 256, 128 or 0 (no hint).
  int fp4_gemv_l2_prefetch = 256;
  // hc_pre from 32 tokens: the sum of squares of x taken by the finishing kernel from the row it
  // already holds (mhc.cu, hc_pre_kernel) instead of a separate pass over x (sum_squares_kernel);
  // debug.cuda_hc_fused_sumsq. On: H100 8K prefill, hc_pre 3.03 -> 2.42 ms (docs/PERFORMANCE.md, tenth run).
  bool hc_fused_sumsq = true;
  // Plain cudaMalloc/cudaFree for Buffers instead of the pool ordered on this backend's stream.
  bool sync_alloc = false;
  // Sparse attention on the per-warp kernel where it would take the split multi-query one (or,
  // with decode_tensor_cores, the tensor-core kernel on decode shapes).
  bool attention_per_warp = false;
  // Synchronize after every kernel launch (set_sync_after_ops), so an asynchronous fault names
  // the kernel that caused it; debug.sync_each_op turns it on with the op-level sync.
  bool sync_each_kernel = false;
  // Decode steps recorded by stream capture and run as one CUDA graph (Backend::begin_graph,
  // kernels/cuda/step_graph.h); off: every op launched on its own. Ignored with sync_each_kernel.
  // Off by default: capturing and updating every step costs more than it saves (docs/CUDA.md).
  bool graphs = false;
  // With graphs: steps logged (kernels/cuda/launch_log.h) and run by updating a cached executable
  // of the same launches, captured only when none matches (debug.cuda_graph_replay). Off: on an H100
  // the host's build of each step cost more than the graph saved (docs/CUDA.md).
  bool graph_replay = false;
  // With graph_replay: a step replayed layer by layer (Backend::graph_segment), each layer's
  // executable launched as soon as it is logged, so the host logs the next layer while the GPU
  // runs this one (debug.cuda_graph_segments). Off: on an H100 no faster than op-by-op launches
  // with PDL (batch 256, 4 layers: 12.33 against 12.13 ms; docs/PERFORMANCE.md).
  bool graph_segments = false;
  // Kernels launched with programmatic stream serialization (kernels/cuda/launch.cuh): each one's
  // launch overlaps the tail of the kernel before it (debug.cuda_pdl). Process-wide.
  bool pdl = true;
};

// The CUDA backend on `device` (-1: current). Throws v4rt::Error when no device is present.
std::unique_ptr<Backend> make_cuda_backend(int device = -1, const CudaBackendOptions& options = {});

}  // namespace v4rt::kernels::cuda
