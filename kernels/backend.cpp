// SPDX-License-Identifier: MIT
// kernels/backend.h outside the backends: the default bodies of the batched and optional ops (one
// call per part / a loop of the plain op), and the view helpers (sub-views, no data access).
#include "kernels/backend.h"

#include "common/check.h"

namespace v4rt::kernels {

void Backend::copy_rows_batch(const RowCopy* copies, size_t num_copies) {
  for (size_t i = 0; i < num_copies; ++i) copy_rows(copies[i].dst, copies[i].src);
}

void Backend::sample(const SampleParams& p) {
  (void)p;
  V4RT_REQUIRE(false, "backend " << name() << " has no sample op");
}

void Backend::kv_pack(const KvPackParams& p) {
  V4RT_REQUIRE(false, "backend " << name() << " has no kv_pack op (KV format " << kv_format_name(p.layout.format) << ")");
}

void Backend::indexer_scores_batch(const IndexerScoresBatchParams& p) {
  for (int64_t i = 0; i < p.num_parts; ++i) indexer_scores(p.parts[i]);
}

void Backend::compressor_pool_batch(const CompressorPoolBatchParams& p) {
  for (int64_t i = 0; i < p.num_parts; ++i) compressor_pool(p.parts[i]);
}

void Backend::sparse_attention_batch(const SparseAttentionBatchParams& p) {
  for (int64_t i = 0; i < p.num_parts; ++i) sparse_attention(p.parts[i]);
}

void require_kv_format(const Backend& backend, const KvRowLayout& layout, const char* what) {
  V4RT_REQUIRE(backend.supports_kv_format(layout.format),
               "backend " << backend.name() << " cannot read the " << kv_format_name(layout.format) << " KV format ("
                          << what << ")");
}

TensorView view_rows(const TensorView& v, int64_t begin, int64_t end) {
  CHECK_GE(v.ndim, 1);
  CHECK(begin >= 0 && begin <= end && end <= v.shape[0]) << "rows [" << begin << ", " << end << ") of " << v.shape_str();
  TensorView r = v;
  r.data = static_cast<char*>(v.data) + begin * v.stride[0] * int64_t(dtype_size(v.dtype));
  r.shape[0] = end - begin;
  return r;
}

void round_to_kv_layout(Backend& backend, const KvRowLayout& layout, const TensorView& rows) {
  if (!layout.compact() || rows.shape[0] == 0) return;
  QdqParams q;  // the scaled dims, then (kFp8Rope) the bf16 dims
  q.x = view_cols(rows, 0, layout.quant_dim);
  q.format = layout.format == KvFormat::kFp8Rope ? QdqFormat::kFp8E4M3 : QdqFormat::kFp4E2M1;
  q.block = layout.block;
  backend.qdq(q);
  if (layout.quant_dim < layout.dim) {
    q.x = view_cols(rows, layout.quant_dim, layout.dim);
    q.format = QdqFormat::kBf16;
    backend.qdq(q);
  }
}

TensorView view_cols(const TensorView& v, int64_t begin, int64_t end) {
  CHECK_EQ(v.ndim, 2);
  CHECK(begin >= 0 && begin <= end && end <= v.shape[1]) << "cols [" << begin << ", " << end << ") of " << v.shape_str();
  CHECK_EQ(v.stride[1], 1);
  TensorView r = v;
  r.data = static_cast<char*>(v.data) + begin * int64_t(dtype_size(v.dtype));
  r.shape[1] = end - begin;
  return r;
}

TensorView view_reshape(const TensorView& v, std::initializer_list<int64_t> dims) {
  CHECK(v.contiguous()) << "reshape of a strided view " << v.shape_str();
  TensorView r(v.data, v.dtype, dims, v.device);
  CHECK_EQ(r.numel(), v.numel()) << "reshape " << v.shape_str() << " -> " << r.shape_str();
  return r;
}

WeightView weight_rows(const WeightView& w, int64_t begin, int64_t end) {
  CHECK(begin >= 0 && begin <= end && end <= w.rows);
  WeightView r = w;
  r.rows = end - begin;
  switch (w.dtype) {
    case DType::kF8E4M3:
      CHECK_EQ(begin % 128, 0) << "FP8 weight rows must start on a 128-row block";
      r.data = static_cast<const uint8_t*>(w.data) + begin * w.cols;
      r.scale = w.scale + (begin / 128) * ((w.cols + 127) / 128);
      break;
    case DType::kFP4:
      r.data = static_cast<const uint8_t*>(w.data) + begin * (w.cols / 2);
      r.scale = w.scale + begin * (w.cols / 32);
      break;
    default:
      r.data = static_cast<const char*>(w.data) + begin * w.cols * int64_t(dtype_size(w.dtype));
      break;
  }
  return r;
}

}  // namespace v4rt::kernels
