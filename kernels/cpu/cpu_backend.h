// SPDX-License-Identifier: MIT
// The plain fp32 reference implementation of kernels::Backend. Written for obviousness: simple
// loops, one op family per file, activations F32 in host memory, weights dequantized to F32 at
// upload. It is the reference every other backend is compared with, and it runs the golden tests.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "common/check.h"
#include "kernels/backend.h"

namespace v4rt::kernels::cpu {

class CpuBackend final : public Backend {
 public:
  std::string name() const override { return "cpu"; }
  Device device() const override { return Device::kHost; }
  DType act_dtype() const override { return DType::kF32; }
  bool supports(Op op) const override;
  bool supports_kv_format(KvFormat format) const override;

  WeightView upload_weight(const WeightSource& source) override;
  void copy_to_device(void* dst, const void* src_host, size_t bytes) override;
  void copy_to_host(void* dst_host, const void* src, size_t bytes) override;
  void copy_rows(const TensorView& dst, const TensorView& src) override;
  void fill(const TensorView& dst, float value) override;
  void synchronize() override {}

  void rms_norm(const RmsNormParams& p) override;
  void rope(const RopeParams& p) override;
  void hc_pre(const HcPreParams& p) override;
  void hc_post(const HcPostParams& p) override;
  void hc_head(const HcHeadParams& p) override;
  void linear(const LinearParams& p) override;
  void grouped_linear(const GroupedLinearParams& p) override;
  void compressor_pool(const CompressorPoolParams& p) override;
  void hadamard(const HadamardParams& p) override;
  void indexer_scores(const IndexerScoresParams& p) override;
  void topk(const TopkParams& p) override;
  void sparse_attention(const SparseAttentionParams& p) override;
  void moe_gate(const MoeGateParams& p) override;
  void moe_experts(const MoeExpertsParams& p) override;
  void swiglu(const SwigluParams& p) override;
  void embedding(const EmbeddingParams& p) override;
  void add(const AddParams& p) override;
  void qdq(const QdqParams& p) override;
  void sample(const SampleParams& p) override;
  void kv_pack(const KvPackParams& p) override;

 private:
  std::vector<Buffer> weights_;
};

// --- helpers shared by the cpu/*.cpp files ------------------------------------------------------

// Row r of a view whose rows are contiguous inside (any ndim; stride[0] between rows).
inline float* row_f32(const TensorView& v, int64_t r) {
  return static_cast<float*>(v.data) + r * v.stride[0];
}
inline int32_t* row_i32(const TensorView& v, int64_t r) {
  return static_cast<int32_t*>(v.data) + r * v.stride[0];
}
// Elements per row of a view (product of the non-row dims), checking the row is contiguous.
int64_t row_width(const TensorView& v);
// Checks an F32 activation view: dtype, row count, row width.
void check_f32(const TensorView& v, int64_t rows, int64_t width, const char* what);
inline const float* weight_f32(const WeightView& w) {
  CHECK(w.dtype == DType::kF32) << "cpu backend expects F32 weights";
  return static_cast<const float*>(w.data);
}

// Σ a[i] b[i] with 8 independent fp32 partial sums (vectorizes; order fixed).
float dot(const float* a, const float* b, int64_t n);
// Official-mode helpers (spec §2.2/§2.3).
float fp8_block_scale(float amax);   // 2^ceil(log2(max(amax, 1e-4) / 448))
float fp4_block_scale(float amax);   // 2^ceil(log2(max(amax, 6 * 2^-126) / 6))
void qdq_fp8(float* x, int64_t n, int block);
void qdq_fp4(float* x, int64_t n, int block);
void round_bf16_inplace(float* x, int64_t n);

// The pieces of CpuBackend::sample (SampleParams), public so that tests can check a draw against
// the cumulative weights it fell between. Rows with temperature > 0 only.
struct SampleKept {
  std::vector<int32_t> ids;      // the kept prefix of the logit order, ascending id
  std::vector<double> weights;   // their fp32 weights exp((l - max) / temperature)
  double mass = 0.0;             // Σ weights in id order
};
SampleKept sample_kept_set(const float* logits, int64_t vocab, const SampleRow& row);
// The first kept id whose cumulative weight (id order) exceeds u * mass.
int32_t sample_draw(const SampleKept& kept, double u);

}  // namespace v4rt::kernels::cpu
