// SPDX-License-Identifier: MIT
// SequenceState and its growable row tables.
#include "model/state.h"

#include <algorithm>
#include <cmath>

#include "common/check.h"

namespace v4rt::model {

TensorView RowTable::view() const { return rows_view(0, rows_); }

TensorView RowTable::rows_view(int64_t begin, int64_t end) const {
  CHECK(begin >= 0 && begin <= end && end <= std::max(rows_, capacity_));
  TensorView v(buffer_.data(), DType::kF32, {capacity_, width_}, backend_->device());
  return kernels::view_rows(v, begin, end);
}

TensorView RowTable::reserve(int64_t extra) {
  if (rows_ + extra > capacity_) {
    const int64_t cap = std::max<int64_t>({rows_ + extra, capacity_ * 2, 16});
    Buffer grown = backend_->alloc(size_t(cap * width_) * sizeof(float));
    if (rows_ > 0) {
      TensorView dst(grown.data(), DType::kF32, {cap, width_}, backend_->device());
      backend_->copy_rows(kernels::view_rows(dst, 0, rows_), view());
    }
    buffer_ = std::move(grown);
    capacity_ = cap;
  }
  return rows_view(rows_, rows_ + extra);
}

void RowTable::drop_front(int64_t n) {
  CHECK(n >= 0 && n <= rows_);
  if (n == 0) return;
  const int64_t keep = rows_ - n;
  if (keep > 0) {
    // Through a scratch table so overlapping source and destination never meet on any backend.
    Buffer tmp = backend_->alloc(size_t(keep * width_) * sizeof(float));
    TensorView t(tmp.data(), DType::kF32, {keep, width_}, backend_->device());
    backend_->copy_rows(t, rows_view(n, rows_));
    backend_->copy_rows(rows_view(0, keep), t);
  }
  rows_ = keep;
}

RowTable RowTable::clone() const {
  RowTable t(backend_, width_);
  if (rows_ > 0) {
    backend_->copy_rows(t.reserve(rows_), view());
    t.commit(rows_);
  }
  return t;
}

SequenceState::SequenceState(const ModelConfig& config, kernels::Backend& backend)
    : config_(config), backend_(backend) {
  layers_.resize(size_t(config.num_hidden_layers));
  for (int l = 0; l < config.num_hidden_layers; ++l) {
    LayerState& s = layers_[size_t(l)];
    const int ratio = config.compress_ratio(l);
    s.window_tail = RowTable(&backend, config.head_dim);
    s.has_compressor = ratio != 0;
    s.has_indexer = ratio == 4;
    const int c = ratio == 4 ? 2 : 1;
    if (s.has_compressor) {
      s.main.kv = RowTable(&backend, int64_t(c) * config.head_dim);
      s.main.score = RowTable(&backend, int64_t(c) * config.head_dim);
      s.main.entries = RowTable(&backend, config.head_dim);
    }
    if (s.has_indexer) {
      s.indexer.kv = RowTable(&backend, 2 * int64_t(config.index_head_dim));
      s.indexer.score = RowTable(&backend, 2 * int64_t(config.index_head_dim));
      s.indexer.entries = RowTable(&backend, config.index_head_dim);
    }
  }
  reset();
}

std::unique_ptr<SequenceState> SequenceState::clone() const {
  auto copy = std::make_unique<SequenceState>(config_, backend_);
  copy->position_ = position_;
  copy->ownership_ = ownership_;
  auto clone_compressor = [](const CompressorState& c) {
    CompressorState out;
    out.kv = c.kv.clone();
    out.score = c.score.clone();
    out.start = c.start;
    out.entries = c.entries.clone();
    out.num_entries = c.num_entries;
    return out;
  };
  for (size_t l = 0; l < layers_.size(); ++l) {
    const LayerState& src = layers_[l];
    LayerState& dst = copy->layers_[l];
    dst.window_tail = src.window_tail.clone();
    dst.has_compressor = src.has_compressor;
    dst.has_indexer = src.has_indexer;
    if (src.has_compressor) dst.main = clone_compressor(src.main);
    if (src.has_indexer) dst.indexer = clone_compressor(src.indexer);
  }
  return copy;
}

void SequenceState::reset_compressor(CompressorState& c, int ratio) {
  c.kv.clear();
  c.score.clear();
  c.entries.clear();
  c.num_entries = 0;
  c.start = 0;
  if (ratio == 4) {  // padding "previous block" of entry 0: kv 0, score -inf (weight 0)
    backend_.fill(c.kv.reserve(ratio), 0.0f);
    backend_.fill(c.score.reserve(ratio), -INFINITY);
    c.kv.commit(ratio);
    c.score.commit(ratio);
    c.start = -ratio;
  }
}

void SequenceState::set_ownership(const EntryOwnership& ownership) {
  CHECK_EQ(position_, 0) << "entry ownership changes only on an empty sequence";
  CHECK(ownership.num_ranks >= 1 && ownership.rank >= 0 && ownership.rank < ownership.num_ranks && ownership.block >= 1)
      << "bad entry ownership";
  ownership_ = ownership;
}

void SequenceState::reset() {
  position_ = 0;
  for (int l = 0; l < config_.num_hidden_layers; ++l) {
    LayerState& s = layers_[size_t(l)];
    s.window_tail.clear();
    if (s.has_compressor) reset_compressor(s.main, config_.compress_ratio(l));
    if (s.has_indexer) reset_compressor(s.indexer, 4);
  }
}

}  // namespace v4rt::model
