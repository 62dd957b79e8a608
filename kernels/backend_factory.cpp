// SPDX-License-Identifier: MIT
// make_backend: "cpu" always; "cuda" when the binary was built with V4RT_ENABLE_CUDA (the
// definition V4RT_HAVE_CUDA), through kernels/cuda's make_cuda_backend; then the debug decorator
// when a debug switch is on.
#include "kernels/backend_factory.h"

#include "common/check.h"

#if defined(V4RT_HAVE_CUDA)
#include "kernels/cuda/factory.h"
namespace v4rt::kernels::cuda {
int device_count();  // kernels/cuda/device.h (which needs the CUDA headers)
}  // namespace v4rt::kernels::cuda
#endif

namespace v4rt::kernels {

bool have_cuda_backend() {
#if defined(V4RT_HAVE_CUDA)
  return true;
#else
  return false;
#endif
}

int cuda_device_count() {
#if defined(V4RT_HAVE_CUDA)
  return cuda::device_count();
#else
  return 0;
#endif
}

namespace {

std::unique_ptr<Backend> make_plain_backend(const std::string& name, const BackendOptions& options) {
  if (name == "cpu") return make_cpu_backend();
  if (name == "cuda") {
#if defined(V4RT_HAVE_CUDA)
    cuda::CudaBackendOptions co;
    co.sync_alloc = options.cuda_sync_alloc;
    co.attention_per_warp = options.cuda_attention_per_warp;
    co.expert_tc_min_rows = options.cuda_expert_tc_min_rows;
    co.attention_tensor_cores = options.cuda_attention_tc;
    co.indexer_tensor_cores = options.cuda_indexer_tc;
    co.indexer_fp8 = options.cuda_indexer_fp8;
    co.indexer_predecode = options.cuda_indexer_predecode;
    co.indexer_head_sum_mma = options.cuda_indexer_head_sum_mma;
    co.bf16_activations = options.cuda_bf16_activations;
    co.expert_wgmma = options.cuda_expert_wgmma;
    co.expert_wgmma_ws = options.cuda_expert_wgmma_ws;
    co.expert_ws_persistent = options.cuda_expert_ws_persistent;
    co.expert_ws_a_copy = options.cuda_expert_ws_a_copy;
    co.expert_ws_weight_ring = options.cuda_expert_ws_weight_ring;
    co.attention_wgmma = options.cuda_attention_wgmma;
    co.attention_wgmma_min_tiles = options.cuda_attention_wgmma_min_tiles;
    co.attention_wgmma_cluster = options.cuda_attention_wgmma_cluster;
    co.attention_ws = options.cuda_attention_ws;
    co.attention_bf16_view = options.cuda_attention_bf16_view;
    co.decode_tensor_cores = options.cuda_decode_tc;
    co.gemv_tensor_cores = options.cuda_gemv_mma;
    co.moe_route_small = options.cuda_moe_route_small;
    co.fp4_gemv_rows = options.cuda_fp4_gemv_rows;
    co.fp4_gemv_k_split = options.cuda_fp4_gemv_k_split;
    co.fp4_gemv_l2_prefetch = options.cuda_fp4_gemv_l2_prefetch;
    co.hc_fused_sumsq = options.cuda_hc_fused_sumsq;
    co.sync_each_kernel = options.debug.sync_each_op;
    co.graphs = options.cuda_graphs;
    co.graph_replay = options.cuda_graph_replay;
    co.graph_segments = options.cuda_graph_segments;
    co.pdl = options.cuda_pdl;
    return cuda::make_cuda_backend(options.device_index, co);
#else
    (void)options;
    V4RT_FAIL("backend 'cuda': this binary has no CUDA backend (build with -DV4RT_ENABLE_CUDA=ON)");
#endif
  }
  V4RT_FAIL("backend '" << name << "' is not one of: cpu, cuda");
}

}  // namespace

std::unique_ptr<Backend> make_backend(const std::string& name, const BackendOptions& options) {
  std::unique_ptr<Backend> backend = make_plain_backend(name, options);
  if (options.debug.any()) backend = make_debug_backend(std::move(backend), options.debug);
  return backend;
}

std::unique_ptr<Backend> make_backend(const std::string& name, int device_index) {
  BackendOptions options;
  options.device_index = device_index;
  return make_backend(name, options);
}

}  // namespace v4rt::kernels
