// SPDX-License-Identifier: MIT
// ForwardingBackend: a Backend that passes every call to an inner backend unchanged, the base of
// decorators that wrap any backend (kernels/debug_backend.h) and of test doubles that watch one
// call. A subclass overrides only the calls it changes. Owns the inner backend when given one.
#pragma once

#include <memory>
#include <string>
#include <utility>

#include "kernels/backend.h"

namespace v4rt::kernels {

class ForwardingBackend : public Backend {
 public:
  explicit ForwardingBackend(std::unique_ptr<Backend> inner) : owned_(std::move(inner)), inner_(*owned_) {}
  explicit ForwardingBackend(Backend& inner) : inner_(inner) {}

  Backend& inner() const { return inner_; }

  std::string name() const override { return inner_.name(); }
  Device device() const override { return inner_.device(); }
  DType act_dtype() const override { return inner_.act_dtype(); }
  bool supports(Op op) const override { return inner_.supports(op); }
  bool supports_kv_format(KvFormat f) const override { return inner_.supports_kv_format(f); }
  WeightView upload_weight(const WeightSource& s) override { return inner_.upload_weight(s); }
  void copy_to_device(void* d, const void* s, size_t b) override { inner_.copy_to_device(d, s, b); }
  void copy_to_host(void* d, const void* s, size_t b) override { inner_.copy_to_host(d, s, b); }
  void copy_rows(const TensorView& d, const TensorView& s) override { inner_.copy_rows(d, s); }
  void copy_rows_batch(const RowCopy* c, size_t n) override { inner_.copy_rows_batch(c, n); }
  void fill(const TensorView& d, float v) override { inner_.fill(d, v); }
  void synchronize() override { inner_.synchronize(); }
  bool graphs() const override { return inner_.graphs(); }
  void begin_graph() override { inner_.begin_graph(); }
  void end_graph() override { inner_.end_graph(); }
  void abort_graph() override { inner_.abort_graph(); }
  void graph_segment() override { inner_.graph_segment(); }
  GraphStats graph_stats() const override { return inner_.graph_stats(); }

  void rms_norm(const RmsNormParams& p) override { inner_.rms_norm(p); }
  void rope(const RopeParams& p) override { inner_.rope(p); }
  void hc_pre(const HcPreParams& p) override { inner_.hc_pre(p); }
  void hc_post(const HcPostParams& p) override { inner_.hc_post(p); }
  void hc_head(const HcHeadParams& p) override { inner_.hc_head(p); }
  void linear(const LinearParams& p) override { inner_.linear(p); }
  void grouped_linear(const GroupedLinearParams& p) override { inner_.grouped_linear(p); }
  void compressor_pool(const CompressorPoolParams& p) override { inner_.compressor_pool(p); }
  void compressor_pool_batch(const CompressorPoolBatchParams& p) override { inner_.compressor_pool_batch(p); }
  void hadamard(const HadamardParams& p) override { inner_.hadamard(p); }
  void indexer_scores(const IndexerScoresParams& p) override { inner_.indexer_scores(p); }
  void topk(const TopkParams& p) override { inner_.topk(p); }
  void sample(const SampleParams& p) override { inner_.sample(p); }
  void sparse_attention(const SparseAttentionParams& p) override { inner_.sparse_attention(p); }
  void indexer_scores_batch(const IndexerScoresBatchParams& p) override { inner_.indexer_scores_batch(p); }
  void sparse_attention_batch(const SparseAttentionBatchParams& p) override { inner_.sparse_attention_batch(p); }
  void moe_gate(const MoeGateParams& p) override { inner_.moe_gate(p); }
  void moe_experts(const MoeExpertsParams& p) override { inner_.moe_experts(p); }
  void swiglu(const SwigluParams& p) override { inner_.swiglu(p); }
  void embedding(const EmbeddingParams& p) override { inner_.embedding(p); }
  void add(const AddParams& p) override { inner_.add(p); }
  void qdq(const QdqParams& p) override { inner_.qdq(p); }
  void kv_pack(const KvPackParams& p) override { inner_.kv_pack(p); }

 private:
  std::unique_ptr<Backend> owned_;
  Backend& inner_;
};

}  // namespace v4rt::kernels
