// SPDX-License-Identifier: MIT
// SequenceState and its growable row tables.
#include "model/state.h"

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "common/check.h"

namespace v4rt::model {

WindowMark mark_window(kernels::Backend& backend, const RowTable& tail, int64_t max_tokens) {
  WindowMark m;
  m.rows = tail.rows();
  m.head = RowTable(&backend, tail.width());
  const int64_t keep = std::min(m.rows, max_tokens);
  if (keep > 0) {
    backend.copy_rows(m.head.reserve(keep), tail.rows_view(0, keep));
    m.head.commit(keep);
  }
  return m;
}

void rollback_window(kernels::Backend& backend, RowTable& tail, const WindowMark& mark, int64_t chunk_tokens,
                     int64_t keep_tokens, int64_t max_rows) {
  CHECK(keep_tokens >= 0 && keep_tokens <= chunk_tokens && chunk_tokens <= max_rows);
  // The chronological rows seen since the mark: the pushed-out head rows, then the current tail.
  const int64_t total = mark.rows + chunk_tokens;
  CHECK_EQ(tail.rows(), std::min(total, max_rows)) << "window tail out of step with its mark";
  const int64_t pushed = total - tail.rows();
  CHECK_LE(pushed, mark.head.rows()) << "chunk longer than the mark allows";
  const int64_t end = mark.rows + keep_tokens;
  const int64_t begin = end - std::min(end, max_rows);
  if (begin == pushed && end == total) return;  // nothing to undo
  RowTable rows(&backend, tail.width());
  const TensorView out = rows.reserve(end - begin);
  if (begin < pushed) {
    const int64_t e = std::min(end, pushed);
    backend.copy_rows(kernels::view_rows(out, 0, e - begin), mark.head.rows_view(begin, e));
  }
  if (end > pushed) {
    const int64_t b = std::max(begin, pushed);
    backend.copy_rows(kernels::view_rows(out, b - begin, end - begin), tail.rows_view(b - pushed, end - pushed));
  }
  tail.clear();
  backend.copy_rows(tail.reserve(end - begin), out);
  tail.commit(end - begin);
}

namespace {

// Row widths (floats) of one layer's F32 tables; 0: the layer has no such table.
struct LayerWidths {
  int ratio = 0;               // compress ratio (0: window only)
  int64_t window = 0;          // window tail
  int64_t compressor = 0;      // main compressor kv and score buffers (CSA: two interleaved heads)
  int64_t index_buffer = 0;    // indexer compressor kv and score buffers
};

LayerWidths layer_widths(const ModelConfig& config, int l) {
  LayerWidths w;
  w.ratio = config.compress_ratio(l);
  w.window = config.head_dim;
  if (w.ratio != 0) w.compressor = int64_t(w.ratio == 4 ? 2 : 1) * config.head_dim;
  if (w.ratio == 4) w.index_buffer = 2 * int64_t(config.index_head_dim);
  return w;
}

}  // namespace

int64_t compressor_capacity(int ratio) { return std::max<int64_t>(2 * int64_t(ratio), kRowTableFirstCapacity); }

int64_t window_table_rows(const ModelConfig& config) { return config.sliding_window - 1 + kWindowSlackRows; }

KvRowLayout entry_layout(const ModelConfig& config, KvStorage storage) {
  if (storage == KvStorage::kF32) return plain_kv_layout(config.head_dim);
  return fp8_rope_kv_layout(config.head_dim, config.qk_rope_head_dim);
}

KvRowLayout index_key_layout(const ModelConfig& config, KvStorage storage) {
  if (storage == KvStorage::kF32) return plain_kv_layout(config.index_head_dim);
  return fp4_kv_layout(config.index_head_dim);
}

int64_t kv_row_bytes(const KvRowLayout& layout) {
  return layout.compact() ? layout.row_bytes : layout.dim * int64_t(sizeof(float));
}

int64_t state_bytes(const ModelConfig& config, int64_t num_tokens, KvStorage storage) {
  const KvRowLayout entry = entry_layout(config, storage), key = index_key_layout(config, storage);
  int64_t floats = 0, rows = 0;  // F32 tables; entry and key rows
  for (int l = 0; l < config.num_hidden_layers; ++l) {
    const LayerWidths w = layer_widths(config, l);
    floats += (num_tokens > 0 ? window_table_rows(config) : 0) * w.window;
    if (w.ratio == 0) continue;
    floats += 2 * compressor_capacity(w.ratio) * w.compressor;  // kv + score
    rows += entry_table_bytes(num_tokens / w.ratio, entry);
    if (w.ratio != 4) continue;
    floats += 2 * compressor_capacity(4) * w.index_buffer;
    rows += entry_table_bytes(num_tokens / 4, key);
  }
  return floats * int64_t(sizeof(float)) + rows;
}

int64_t entry_table_bytes(int64_t rows, const KvRowLayout& layout) {
  if (!layout.compact()) return rows * kv_row_bytes(layout);
  const int64_t blocks = (rows + kKvBlockRows - 1) / kKvBlockRows;
  return blocks * (kv_block_bytes(layout.row_bytes) + int64_t(sizeof(void*)));
}

void store_entries(kernels::Backend& backend, CompressorState& c, const TensorView& rows) {
  const KvRowLayout& l = c.layout;
  CHECK(rows.dtype == DType::kF32 && rows.ndim == 2 && rows.shape[1] == l.dim)
      << "entries " << rows.shape_str() << " for rows of " << l.dim << " dims";
  const int64_t n = rows.shape[0];
  c.entries.clear();
  if (n == 0) return;
  std::vector<kernels::RowCopy> copies;
  if (!l.compact()) {
    c.entries.append(rows, copies);
    backend.copy_rows_batch(copies.data(), copies.size());
    return;
  }
  kernels::round_to_kv_layout(backend, l, rows);
  Buffer packed = backend.alloc(size_t(n * l.row_bytes));
  kernels::KvPackParams p;
  p.x = rows;
  p.out = TensorView(packed.data(), DType::kU8, {n, l.row_bytes}, backend.device());
  p.layout = l;
  backend.kv_pack(p);
  c.entries.append(p.out, copies);
  backend.copy_rows_batch(copies.data(), copies.size());
  KvRows* t = &c.entries;
  KvRows::sync_block_tables(backend, std::span<KvRows* const>(&t, 1));
}

int64_t EntryOwnership::owned_before(int64_t n) const {
  if (num_ranks == 1) return n;
  const int64_t q = n / block;  // whole ownership blocks before n
  int64_t count = (q / num_ranks + (q % num_ranks > rank ? 1 : 0)) * block;
  if (q % num_ranks == rank) count += n % block;
  return count;
}

SequenceState::SequenceState(const ModelConfig& config, kernels::Backend& backend, KvStorage storage,
                             std::shared_ptr<KvPool> pool)
    : config_(config), backend_(backend), storage_(storage), pool_(std::move(pool)) {
  const KvRowLayout entries = entry_layout(config, storage), keys = index_key_layout(config, storage);
  kernels::require_kv_format(backend, entries, "compressed entries");
  kernels::require_kv_format(backend, keys, "indexer keys");
  if (storage == KvStorage::kCompact && !pool_) pool_ = std::make_shared<KvPool>(backend);
  CHECK(!pool_ || &pool_->backend() == &backend) << "KV pool of another backend";
  auto entry_table = [&](const KvRowLayout& layout) {
    return layout.compact() ? KvRows(pool_, layout) : KvRows(&backend, layout);
  };
  layers_.resize(size_t(config.num_hidden_layers));
  for (int l = 0; l < config.num_hidden_layers; ++l) {
    LayerState& s = layers_[size_t(l)];
    const LayerWidths w = layer_widths(config, l);
    s.window_tail = RowTable(&backend, w.window);
    s.has_compressor = w.ratio != 0;
    s.has_indexer = w.ratio == 4;
    if (s.has_compressor) {
      s.main.kv = RowTable(&backend, w.compressor);
      s.main.score = RowTable(&backend, w.compressor);
      s.main.entries = entry_table(entries);
      s.main.layout = entries;
    }
    if (s.has_indexer) {
      s.indexer.kv = RowTable(&backend, w.index_buffer);
      s.indexer.score = RowTable(&backend, w.index_buffer);
      s.indexer.entries = entry_table(keys);
      s.indexer.layout = keys;
    }
  }
  reset();
}

int64_t SequenceState::allocated_bytes() const {
  int64_t b = 0;
  for (const LayerState& s : layers_) {
    b += s.window_tail.allocated_bytes();
    for (const CompressorState* c : {&s.main, &s.indexer})
      b += c->kv.allocated_bytes() + c->score.allocated_bytes() + c->entries.allocated_bytes();
  }
  return b;
}

std::unique_ptr<SequenceState> SequenceState::clone() const {
  auto copy = std::make_unique<SequenceState>(config_, backend_, storage_, pool_);
  copy->position_ = position_;
  copy->ownership_ = ownership_;
  auto clone_compressor = [this](const CompressorState& c) {
    CompressorState out;
    out.kv = c.kv.clone();
    out.score = c.score.clone();
    out.start = c.start;
    out.entries = c.entries.clone(backend_);
    out.layout = c.layout;
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
  std::vector<KvRows*> tables;  // every cloned table's block addresses in one upload
  copy->entry_tables(tables);
  KvRows::sync_block_tables(backend_, tables);
  return copy;
}

void SequenceState::reserve(int64_t tokens) {
  const int64_t end = position_ + tokens;
  // The token buffers grow here too rather than in the step's append (a copy of their rows), so a
  // decode step's ops depend only on the blocks it completes (Backend::begin_graph).
  auto reserve_tokens = [tokens](CompressorState& c) {
    c.kv.reserve(tokens);
    c.score.reserve(tokens);
  };
  // So do the window tails of a decode step (their rows in place, attention.cpp): to
  // window_table_rows, once (a prefill's window update allocates that room already).
  std::vector<RowReserve> windows;
  for (int l = 0; l < config_.num_hidden_layers; ++l) {
    LayerState& s = layers_[size_t(l)];
    if (tokens <= kWindowInPlaceRows && s.window_tail.allocated_bytes() < window_table_rows(config_) * s.window_tail.row_bytes())
      windows.push_back({&s.window_tail, 0, window_table_rows(config_)});
    if (s.has_compressor) {
      s.main.entries.reserve(ownership_.owned_before(end / config_.compress_ratio(l)));
      reserve_tokens(s.main);
    }
    if (s.has_indexer) {
      s.indexer.entries.reserve(ownership_.owned_before(end / 4));
      reserve_tokens(s.indexer);
    }
  }
  RowTable::reserve_batch(windows);
}

void SequenceState::entry_tables(std::vector<KvRows*>& out) {
  for (LayerState& s : layers_) {
    if (s.has_compressor) out.push_back(&s.main.entries);
    if (s.has_indexer) out.push_back(&s.indexer.entries);
  }
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
  end_mark();
  position_ = 0;
  for (int l = 0; l < config_.num_hidden_layers; ++l) {
    LayerState& s = layers_[size_t(l)];
    s.window_tail.clear();
    if (s.has_compressor) reset_compressor(s.main, config_.compress_ratio(l));
    if (s.has_indexer) reset_compressor(s.indexer, 4);
  }
}

void SequenceState::mark_compressor(CompressorState& c, CompressorMark& m) {
  m.start = c.start;
  m.local_entries = c.entries.rows();
  m.num_entries = c.num_entries;
  m.kv_spill = RowTable(&backend_, c.kv.width());
  m.score_spill = RowTable(&backend_, c.score.width());
  c.kv.set_spill(&m.kv_spill);
  c.score.set_spill(&m.score_spill);
}

void SequenceState::mark(int64_t max_tokens) {
  CHECK(!mark_.active) << "sequence already marked";
  CHECK(max_tokens >= 1 && max_tokens < config_.sliding_window) << "mark of " << max_tokens << " tokens";
  mark_.active = true;
  mark_.position = position_;
  mark_.max_tokens = max_tokens;
  mark_.layers.clear();
  mark_.layers.resize(layers_.size());  // never resized while marked: the spill pointers stay valid
  for (size_t l = 0; l < layers_.size(); ++l) {
    LayerState& s = layers_[l];
    LayerMark& m = mark_.layers[l];
    m.window = mark_window(backend_, s.window_tail, max_tokens);
    if (s.has_compressor) mark_compressor(s.main, m.main);
    if (s.has_indexer) mark_compressor(s.indexer, m.indexer);
  }
}

// Entries complete by `position` stay; a later entry is retracted and the token rows it pooled come
// back from the spill. Row positions: the buffer holds [start, start + rows); after the mark the
// spill holds [m.start, c.start).
void SequenceState::rollback_compressor(CompressorState& c, CompressorMark& m, int ratio, int64_t position) {
  const int64_t lead = ratio == 4 ? ratio : 0;
  const int64_t keep_entries = position / ratio;
  CHECK(keep_entries >= m.num_entries && keep_entries <= c.num_entries) << "compressor out of step with its mark";
  if (keep_entries == c.num_entries) {
    c.kv.truncate(position - c.start);
    c.score.truncate(position - c.start);
    return;
  }
  const int64_t start = keep_entries * ratio - lead;
  CHECK_EQ(m.start + m.kv_spill.rows(), c.start) << "compressor spill out of step";
  for (auto [table, spill] : {std::pair{&c.kv, &m.kv_spill}, std::pair{&c.score, &m.score_spill}}) {
    RowTable rows(&backend_, table->width());
    const TensorView out = rows.reserve(position - start);
    const int64_t split = std::min(position, c.start);  // spill rows below, buffer rows above
    if (split > start)
      backend_.copy_rows(kernels::view_rows(out, 0, split - start), spill->rows_view(start - m.start, split - m.start));
    if (position > split)
      backend_.copy_rows(kernels::view_rows(out, split - start, position - start),
                         table->rows_view(split - c.start, position - c.start));
    table->set_spill(nullptr);
    table->clear();
    backend_.copy_rows(table->reserve(position - start), out);
    table->commit(position - start);
  }
  int64_t local = m.local_entries;
  for (int64_t j = m.num_entries; j < keep_entries; ++j) local += ownership_.owns(j) ? 1 : 0;
  c.entries.truncate(local);
  c.num_entries = keep_entries;
  c.start = start;
}

void SequenceState::rollback(int64_t position) {
  CHECK(mark_.active) << "rollback without a mark";
  const int64_t chunk = position_ - mark_.position;
  CHECK(position >= mark_.position && position <= position_ && chunk <= mark_.max_tokens)
      << "rollback to " << position << " outside [" << mark_.position << ", " << position_ << "]";
  if (position < position_) {
    for (size_t l = 0; l < layers_.size(); ++l) {
      LayerState& s = layers_[l];
      LayerMark& m = mark_.layers[l];
      rollback_window(backend_, s.window_tail, m.window, chunk, position - mark_.position, config_.sliding_window - 1);
      const int ratio = config_.compress_ratio(int(l));
      if (s.has_compressor) rollback_compressor(s.main, m.main, ratio, position);
      if (s.has_indexer) rollback_compressor(s.indexer, m.indexer, 4, position);
    }
    position_ = position;
  }
  end_mark();
}

void SequenceState::release() {
  CHECK(mark_.active) << "release without a mark";
  end_mark();
}

void SequenceState::end_mark() {
  if (!mark_.active) return;
  for (LayerState& s : layers_) {
    for (CompressorState* c : {&s.main, &s.indexer}) {
      c->kv.set_spill(nullptr);
      c->score.set_spill(nullptr);
    }
  }
  mark_.layers.clear();
  mark_.active = false;
}

}  // namespace v4rt::model
