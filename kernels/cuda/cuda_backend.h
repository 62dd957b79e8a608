// SPDX-License-Identifier: MIT
// The CUDA implementation of kernels::Backend: bf16 activations (F32 views accepted wherever the
// op table says F32 or the caller chooses it), FP8 weights kept in place for the cuBLASLt
// block-scaled GEMM, FP4 routed experts kept packed for the grouped FP4 GEMM, everything else on
// one stream owned by the backend. Numerics: the production path of DESIGN.md (FP8 act_quant before
// every FP8/FP4 GEMM, bf16 GEMM outputs); the CPU backend with the official flags is its reference.
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cuda/dense_gemm.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/factory.h"
#include "kernels/cuda/fp8_gemm.h"
#include "kernels/cuda/step_graph.h"

namespace v4rt::kernels::cuda {

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(const CudaBackendOptions& options = {});  // on the current device (make_cuda_backend selects it)
  ~CudaBackend() override;

  std::string name() const override { return "cuda"; }
  Device device() const override { return Device::kCuda; }
  DType act_dtype() const override { return options_.bf16_activations ? DType::kBF16 : DType::kF32; }
  bool supports(Op op) const override;
  bool supports_kv_format(KvFormat) const override { return true; }  // attention / indexer decode on load

  WeightView upload_weight(const WeightSource& source) override;
  void copy_to_device(void* dst, const void* src_host, size_t bytes) override;
  void copy_to_host(void* dst_host, const void* src, size_t bytes) override;
  void copy_rows(const TensorView& dst, const TensorView& src) override;
  void copy_rows_batch(const RowCopy* copies, size_t num_copies) override;
  void fill(const TensorView& dst, float value) override;
  void synchronize() override;
  bool graphs() const override;
  void begin_graph() override;
  void end_graph() override;
  void abort_graph() override;
  void graph_segment() override;
  GraphStats graph_stats() const override { return graph_.stats(); }
  void profile_range(bool begin) override;

  void rms_norm(const RmsNormParams& p) override;
  void rope(const RopeParams& p) override;
  void hc_pre(const HcPreParams& p) override;
  void hc_post(const HcPostParams& p) override;
  void hc_head(const HcHeadParams& p) override;
  void linear(const LinearParams& p) override;
  void grouped_linear(const GroupedLinearParams& p) override;
  void compressor_pool(const CompressorPoolParams& p) override;
  void compressor_pool_batch(const CompressorPoolBatchParams& p) override;
  void hadamard(const HadamardParams& p) override;
  void indexer_scores(const IndexerScoresParams& p) override;
  void topk(const TopkParams& p) override;
  void sparse_attention(const SparseAttentionParams& p) override;
  void indexer_scores_batch(const IndexerScoresBatchParams& p) override;
  void sparse_attention_batch(const SparseAttentionBatchParams& p) override;
  void moe_gate(const MoeGateParams& p) override;
  void moe_experts(const MoeExpertsParams& p) override;
  void swiglu(const SwigluParams& p) override;
  void embedding(const EmbeddingParams& p) override;
  void add(const AddParams& p) override;
  void qdq(const QdqParams& p) override;
  void kv_pack(const KvPackParams& p) override;
  void sample(const SampleParams& p) override;

  cudaStream_t stream() const { return stream_.get(); }
  void* stream_handle() const override { return stream_.get(); }
  int device_index() const override { return device_; }
  // fp32 block scales of an uploaded FP8 weight view (a row slice of an upload is fine).
  const float* fp8_weight_scale_f32(const WeightView& w) const;

 private:
  AttentionKernels attention_kernels() const {
    AttentionKernels k;
    k.per_warp = options_.attention_per_warp;
    k.tensor_cores = options_.attention_tensor_cores;
    k.decode_tc = options_.decode_tensor_cores;
    k.wgmma = options_.attention_wgmma;
    k.wgmma_min_tiles = options_.attention_wgmma_min_tiles;
    k.wgmma_cluster = options_.attention_wgmma_cluster;
    k.ws = options_.attention_ws;
    k.bf16_view = options_.attention_bf16_view;
    return k;
  }
  IndexerKernels indexer_kernels() const {
    IndexerKernels k;
    k.tensor_cores = options_.indexer_tensor_cores;
    k.fp8 = options_.indexer_fp8;
    k.decode_tc = options_.decode_tensor_cores;
    k.predecode = options_.indexer_predecode;
    k.head_sum_mma = options_.indexer_head_sum_mma;
    return k;
  }
  // Scratch slots used inside one op (grow-only).
  enum Slot { kSlotX8, kSlotXScale, kSlotTmp, kSlotTmp2, kSlotRoute, kSlotG, kSlotU, kSlotH8, kSlotHScale, kSlotY,
              kSlotPtrs, kNumSlots };
  void* scratch(Slot slot, size_t bytes);
  const void* bf16_copy_of_fp8(const WeightView& w);
  const void* f32_copy(const WeightView& w);  // of a BF16 or FP8 weight (exact)
  void linear_fp8(const LinearParams& p);
  void linear_fp4(const LinearParams& p);
  void linear_dense(const LinearParams& p);
  // Whether FP4 GEMMs of max_rows rows over `groups` experts take the tensor-core kernel
  // (CudaBackendOptions::expert_tc_min_rows).
  bool expert_tensor_cores(int64_t max_rows, int64_t groups) const;

  struct Fp8ScaleEntry {
    size_t bytes = 0;         // bytes of the e8m0 scale upload
    int64_t scale_cols = 0;   // ceil(cols / 128)
    int64_t ld = 0;           // fp32 row length (Fp8ScaleLayout::weight_ld)
    float* f32 = nullptr;
  };

  Stream stream_;
  StepGraph graph_{stream_.get()};  // records decode steps on stream_ (CudaBackendOptions::graphs)
  int device_ = 0;  // ordinal this backend was made on
  Fp8Gemm fp8_gemm_;
  DenseGemm dense_gemm_;
  std::vector<DeviceBuffer> weights_;
  std::map<const uint8_t*, Fp8ScaleEntry> fp8_scales_;   // keyed by the e8m0 scale base pointer
  std::map<const void*, const void*> bf16_copies_;       // FP8 weight data -> bf16 copy
  std::map<const void*, const void*> f32_copies_;        // BF16/FP8 weight data -> F32 copy (ReferencePrecision::kF32)
  CudaBackendOptions options_;
  std::map<std::vector<const void*>, const void*> expert_ptr_tables_;
  std::vector<DeviceBuffer> scratch_;
};


}  // namespace v4rt::kernels::cuda
