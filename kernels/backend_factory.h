// SPDX-License-Identifier: MIT
// Backend selection by name, for the commands and tests that let the user pick where the model
// runs: "cpu" (the fp32 reference) or "cuda" (only in binaries built with V4RT_ENABLE_CUDA), with
// the backend's settings (BackendOptions) and, when any debug switch is on, the debug decorator
// around it (kernels/debug_backend.h). Its own library (v4rt_kernels_factory), above both the
// generic kernels and the CUDA backend, so neither links the other back.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "kernels/backend.h"
#include "kernels/debug_backend.h"

namespace v4rt::kernels {

// Every setting of a backend; the runtime YAML fills it (launch::backend_options). Kernels read no
// environment variables: what used to be one is a field here.
struct BackendOptions {
  int device_index = 0;  // "cuda": the GPU (-1: the current device); ignored by "cpu"
  DebugOptions debug;    // debug.sync_each_op / check_finite / dump_dir
  // "cuda" only (debug.cuda_sync_alloc): plain cudaMalloc/cudaFree instead of the stream-ordered
  // pool, so an allocation bug surfaces at the call that made it.
  bool cuda_sync_alloc = false;
  // "cuda" only (debug.cuda_attention_per_warp): sparse attention on the per-warp kernel instead
  // of the split multi-query one, to tell a kernel fault from a model fault.
  bool cuda_attention_per_warp = false;
  // "cuda" only, the kernel choices of prefill shapes, so a fault or a slowdown can be pinned on
  // one kernel (debug.cuda_expert_tc_min_rows, cuda_attention_tc, cuda_indexer_tc): the grouped
  // W4A8 tensor-core expert GEMM from this many rows per expert (0: never), sparse attention and
  // indexer scores on tensor cores.
  int64_t cuda_expert_tc_min_rows = 1;
  bool cuda_attention_tc = true;
  bool cuda_indexer_tc = true;
  // "cuda" only (debug.cuda_indexer_fp8): prefill indexer scores of compact keys on FP8 tensor
  // cores (wgmma); off: the bf16 kernel, bit-identical to the reference.
  bool cuda_indexer_fp8 = true;
  // "cuda" only (debug.cuda_indexer_predecode): that kernel reads its launch's keys decoded to e4m3
  // once by a first kernel; off: every block decodes the key tiles it reads.
  bool cuda_indexer_predecode = true;
  // "cuda" only (debug.cuda_indexer_head_sum_mma): the FP8 indexer kernels sum each score's head
  // terms on the tensor cores; off: fp32 adds per thread and a quad shuffle.
  bool cuda_indexer_head_sum_mma = true;
  // "cuda" only (debug.cuda_bf16_activations): the bf16-rounded activations of the official
  // numerics in bf16 storage; off: F32.
  bool cuda_bf16_activations = true;
  // "cuda" only (debug.cuda_expert_wgmma): prefill-sized routed-expert GEMMs on FP8 wgmma instead
  // of the mma.sync W4A8 tile kernel.
  bool cuda_expert_wgmma = true;
  // "cuda" only (debug.cuda_expert_wgmma_ws): the same GEMMs on the warp-specialized FP8 wgmma
  // kernel, taken before the one above.
  bool cuda_expert_wgmma_ws = true;
  // "cuda" only (debug.cuda_expert_ws_persistent): that kernel persistent, one block per SM.
  bool cuda_expert_ws_persistent = true;
  // "cuda" only (debug.cuda_expert_ws_a_copy): how that kernel's activation tiles arrive, 0 by
  // cp.async, 1 by TMA (the default), 2 by TMA multicast in clusters of two blocks.
  int cuda_expert_ws_a_copy = 1;
  // "cuda" only (debug.cuda_expert_ws_weight_ring): its raw weights through a ring of their own.
  bool cuda_expert_ws_weight_ring = false;
  // "cuda" only (debug.cuda_attention_wgmma): prefill sparse attention of 512-dim heads whose rows
  // are all bf16 (the bf16 views) and whose candidate lists reach 32 tiles on the warp-specialized
  // bf16 wgmma kernel.
  bool cuda_attention_wgmma = true;
  // "cuda" only (debug.cuda_attention_wgmma_min_tiles): the list length (64-candidate tiles) from
  // which it does (0: every length).
  int64_t cuda_attention_wgmma_min_tiles = 32;
  // "cuda" only (debug.cuda_attention_wgmma_cluster): that kernel in clusters of two tokens' blocks
  // that read their shared compressed tiles from L2 once.
  bool cuda_attention_wgmma_cluster = true;
  // "cuda" only (debug.cuda_attention_ws): prefill sparse attention of 512-dim heads whose rows are
  // all bf16 (the bf16 views) on the warp-specialized kernel (a producer warpgroup copies the next
  // tile under the MMAs).
  bool cuda_attention_ws = true;
  // "cuda" only (debug.cuda_attention_bf16_view): prefill sparse attention on tensor cores reads
  // bf16 views of its window rows and compact entries (converted once per launch, exactly).
  bool cuda_attention_bf16_view = true;
  // "cuda" only (debug.cuda_decode_tc): decode-sized sparse attention on the tensor-core kernel
  // (candidate splits) and decode-batch indexer scores on FP8 wgmma.
  bool cuda_decode_tc = true;
  // "cuda" only (debug.cuda_gemv_mma): decode-sized FP8 projections on FP8 mma.sync (gemv_mma.cu).
  bool cuda_gemv_mma = true;
  // "cuda" only (debug.cuda_moe_route_small): the decode routing layout in one single-block kernel.
  bool cuda_moe_route_small = false;
  // "cuda" only (debug.cuda_fp4_gemv_rows): the decode expert GEMV's rows a pass, 0 (by the mean) or 8.
  int cuda_fp4_gemv_rows = 8;
  // "cuda" only (debug.cuda_fp4_gemv_k_split): its k split, 0 (the default), 4, 2 or 1.
  int cuda_fp4_gemv_k_split = 0;
  // "cuda" only (debug.cuda_fp4_gemv_l2_prefetch): its weight copies' L2 prefetch, 256, 128 or 0.
  int cuda_fp4_gemv_l2_prefetch = 256;
  // "cuda" only (debug.cuda_hc_fused_sumsq): hc_pre's sum of squares in its finishing kernel.
  bool cuda_hc_fused_sumsq = true;
  // "cuda" only (`cuda_graphs:` of the runtime YAML, `--no-graphs`): decode steps recorded and
  // run as one CUDA graph each (Backend::begin_graph); off (the default, docs/CUDA.md says why):
  // every op launched on its own.
  bool cuda_graphs = false;
  // "cuda" only (debug.cuda_graph_replay): with graphs, steps logged and run by updating a cached
  // executable, captured only when none matches (kernels/cuda/step_graph.h).
  bool cuda_graph_replay = false;
  // "cuda" only (debug.cuda_graph_segments): with replay, steps replayed layer by layer.
  bool cuda_graph_segments = false;
  // "cuda" only (debug.cuda_pdl): programmatic dependent launch of every kernel (kernels/cuda/launch.cuh).
  bool cuda_pdl = true;
};

// True when this binary contains the CUDA backend.
bool have_cuda_backend();

// `name`: "cpu" | "cuda". Throws v4rt::Error for an unknown name, for "cuda" in a binary built
// without CUDA, when the device is absent, and when debug.dump_dir cannot be created.
std::unique_ptr<Backend> make_backend(const std::string& name, const BackendOptions& options);
// The same with default options on GPU `device_index`.
std::unique_ptr<Backend> make_backend(const std::string& name, int device_index = 0);

// CUDA devices visible to this process (0 without CUDA or without a device).
int cuda_device_count();

}  // namespace v4rt::kernels
