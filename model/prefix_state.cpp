// SPDX-License-Identifier: MIT
// Tail snapshots, entry blocks and resuming a sequence from them (prefix_state.h).
#include "model/prefix_state.h"

#include <algorithm>
#include <vector>

#include "common/check.h"
#include "model/model.h"

namespace v4rt::model {

namespace {

int64_t table_bytes(const RowTable& t) { return t.bytes(); }

// Copies rows [begin, end) of `src` onto the end of `dst`.
void append_rows(kernels::Backend& be, RowTable& dst, const RowTable& src, int64_t begin, int64_t end) {
  CHECK(begin >= 0 && begin <= end && end <= src.rows()) << "rows [" << begin << ", " << end << ") of " << src.rows();
  CHECK(dst.width() == src.width() && dst.dtype() == src.dtype())
      << "row format: " << dst.width() << " x " << dtype_name(dst.dtype()) << " rows, source " << src.width() << " x "
      << dtype_name(src.dtype()) << " (a state of another KV storage?)";
  if (end == begin) return;
  be.copy_rows(dst.reserve(end - begin), src.rows_view(begin, end));
  dst.commit(end - begin);
}

// Rows [begin, end) of the entry table `src` onto the end of the table `dst` (either a KvRows or a
// RowTable copy outside the pool, of the same row format).
void check_format(int64_t dst_bytes, int64_t src_bytes) {
  CHECK_EQ(dst_bytes, src_bytes) << "row format: rows of " << dst_bytes << " bytes, source rows of " << src_bytes
                                 << " (a state of another KV storage?)";
}
void append_rows(kernels::Backend& be, RowTable& dst, const KvRows& src, int64_t begin, int64_t end) {
  check_format(dst.row_bytes(), src.row_bytes());
  std::vector<kernels::RowCopy> copies;
  src.copies_out(begin, end, dst.reserve(end - begin), copies);
  dst.commit(end - begin);
  be.copy_rows_batch(copies.data(), copies.size());
}
void append_rows(kernels::Backend& be, KvRows& dst, const RowTable& src, int64_t begin, int64_t end) {
  check_format(dst.row_bytes(), src.row_bytes());
  CHECK(begin >= 0 && begin <= end && end <= src.rows()) << "rows [" << begin << ", " << end << ") of " << src.rows();
  std::vector<kernels::RowCopy> copies;
  dst.append(src.rows_view(begin, end), copies);
  be.copy_rows_batch(copies.data(), copies.size());
}
void append_rows(kernels::Backend& be, KvRows& dst, const KvRows& src, int64_t begin, int64_t end) {
  check_format(dst.row_bytes(), src.row_bytes());
  if (!src.paged()) {  // contiguous rows: one copy straight from the source
    CHECK(begin >= 0 && begin <= end && end <= src.rows()) << "rows [" << begin << ", " << end << ") of " << src.rows();
    std::vector<kernels::RowCopy> copies;
    dst.append(kernels::view_rows(src.view(), begin, end), copies);
    be.copy_rows_batch(copies.data(), copies.size());
    return;
  }
  RowTable staged = src.contiguous_like(&be);  // paged rows (a partial block's, after sharing): through one table
  append_rows(be, staged, src, begin, end);
  append_rows(be, dst, staged, 0, staged.rows());
}

// Rows [0, end) of `src` onto the end of `dst`: src's full pool blocks by reference when both
// tables are paged in one pool and dst ends on a block boundary (a resumed table starts empty),
// the rest copied.
void take_rows(kernels::Backend& be, KvRows& dst, const KvRows& src, int64_t end) {
  const bool share = dst.paged() && src.paged() && dst.pool() == src.pool() && dst.rows() % kKvBlockRows == 0;
  int64_t from = 0;
  if (share) {
    check_format(dst.row_bytes(), src.row_bytes());
    for (; from + kKvBlockRows <= end; from += kKvBlockRows) dst.append_shared(src.block_at(from / kKvBlockRows));
  }
  append_rows(be, dst, src, from, end);
}

// The first `take` rows of `src` onto the end of `dst`: the shared block itself when dst takes
// all of it at a block boundary of the same pool, else a copy.
void take_rows(kernels::Backend& be, KvRows& dst, const EntryRows& src, int64_t take) {
  if (!src.shared) {
    append_rows(be, dst, src.copy, 0, take);
    return;
  }
  check_format(dst.row_bytes(), src.shared.row_bytes());
  if (take == kKvBlockRows && dst.paged() && dst.pool() == src.shared.pool() && dst.rows() % kKvBlockRows == 0) {
    dst.append_shared(src.shared.block());
    return;
  }
  std::vector<kernels::RowCopy> copies;
  dst.append(TensorView(src.shared.block(), DType::kU8, {take, src.shared.row_bytes()}, be.device()), copies);
  be.copy_rows_batch(copies.data(), copies.size());
}

void set_rows(kernels::Backend& be, RowTable& dst, const RowTable& src) {
  dst.clear();
  append_rows(be, dst, src, 0, src.rows());
}

// Uploads the block addresses of a resumed sequence's entry tables (one copy for all).
void sync_entry_tables(kernels::Backend& be, SequenceState& seq) {
  std::vector<KvRows*> tables;
  seq.entry_tables(tables);
  KvRows::sync_block_tables(be, tables);
}

// The first entry of block `index` (block_tokens is a multiple of the ratio).
int64_t first_entry(int64_t index, int64_t block_tokens, int ratio) { return index * block_tokens / ratio; }

// A fresh sequence of `model` at the snapshot's tail, entries still empty.
std::unique_ptr<SequenceState> state_with_tail(Model& model, const TailSnapshot& tail) {
  kernels::Backend& be = model.backend();
  auto seq = model.new_sequence();
  CHECK_EQ(size_t(seq->num_layers()), tail.layers.size()) << "tail snapshot of another model";
  for (int l = 0; l < seq->num_layers(); ++l) {
    LayerState& s = seq->layer(l);
    const LayerTail& t = tail.layers[size_t(l)];
    CHECK(s.has_compressor == t.has_compressor && s.has_indexer == t.has_indexer) << "layer " << l << " kind";
    set_rows(be, s.window_tail, t.window);
    for (auto [c, ct, used] : {std::tuple{&s.main, &t.main, s.has_compressor},
                               std::tuple{&s.indexer, &t.indexer, s.has_indexer}}) {
      if (!used) continue;
      set_rows(be, c->kv, ct->kv);
      set_rows(be, c->score, ct->score);
      c->start = ct->start;
      c->num_entries = ct->num_entries;
      c->entries.clear();
    }
  }
  seq->advance(tail.position);
  return seq;
}

// Width (floats) of one layer's compressor token rows.
struct CompressorDims {
  int64_t row_width = 0;
};
CompressorDims main_dims(const ModelConfig& config, int ratio) { return {int64_t(ratio == 4 ? 2 : 1) * config.head_dim}; }
CompressorDims indexer_dims(const ModelConfig& config) { return {2 * int64_t(config.index_head_dim)}; }

}  // namespace

int64_t TailSnapshot::bytes() const {
  int64_t b = 0;
  for (const LayerTail& t : layers) {
    b += table_bytes(t.window);
    for (const CompressorTail* c : {&t.main, &t.indexer}) b += table_bytes(c->kv) + table_bytes(c->score);
  }
  return b;
}

TailSnapshot snapshot_tail(const SequenceState& state) {
  CHECK(!state.marked()) << "tail snapshot of a marked sequence";
  TailSnapshot snap;
  snap.position = state.position();
  snap.layers.resize(size_t(state.num_layers()));
  for (int l = 0; l < state.num_layers(); ++l) {
    const LayerState& s = state.layer(l);
    LayerTail& t = snap.layers[size_t(l)];
    t.window = s.window_tail.clone();
    t.has_compressor = s.has_compressor;
    t.has_indexer = s.has_indexer;
    for (auto [c, ct, used] : {std::tuple{&s.main, &t.main, s.has_compressor},
                               std::tuple{&s.indexer, &t.indexer, s.has_indexer}}) {
      if (!used) continue;
      ct->kv = c->kv.clone();
      ct->score = c->score.clone();
      ct->start = c->start;
      ct->num_entries = c->num_entries;
    }
  }
  return snap;
}

int64_t EntryBlock::bytes() const {
  int64_t b = 0;
  for (const auto* tables : {&main, &indexer})
    for (const EntryRows& t : *tables) b += t.bytes();
  return b;
}

void validate_block_tokens(const ModelConfig& config, int64_t block_tokens) {
  V4RT_REQUIRE(block_tokens > 0, "prefix block of " << block_tokens << " tokens must be positive");
  for (int l = 0; l < config.num_hidden_layers; ++l) {
    const int r = config.compress_ratio(l);
    V4RT_REQUIRE(r == 0 || block_tokens % r == 0,
                 "prefix block of " << block_tokens << " tokens is not a multiple of layer " << l << "'s compress ratio "
                                    << r);
  }
}

EntryBlock extract_block(Model& model, const SequenceState& state, int64_t index, int64_t block_tokens, int64_t end) {
  const ModelConfig& config = model.config();
  kernels::Backend& be = model.backend();
  validate_block_tokens(config, block_tokens);
  const int64_t begin = index * block_tokens;
  CHECK(index >= 0 && begin <= end && end <= begin + block_tokens && end <= state.position())
      << "block " << index << " up to " << end << " of a sequence at " << state.position();
  EntryBlock b;
  b.index = index;
  b.block_tokens = block_tokens;
  b.end = end;
  b.ownership = state.ownership();
  b.main.resize(size_t(state.num_layers()));
  b.indexer.resize(size_t(state.num_layers()));
  for (int l = 0; l < state.num_layers(); ++l) {
    const LayerState& s = state.layer(l);
    const int ratio = config.compress_ratio(l);
    for (auto [c, out, used, r] : {std::tuple{&s.main, &b.main[size_t(l)], s.has_compressor, ratio},
                                   std::tuple{&s.indexer, &b.indexer[size_t(l)], s.has_indexer, 4}}) {
      if (!used) continue;
      const int64_t lo = b.ownership.owned_before(first_entry(index, block_tokens, r));
      const int64_t hi = b.ownership.owned_before(end / r);
      CHECK_LE(hi, c->entries.rows()) << "layer " << l << " holds fewer entries than its position implies";
      // Under SP a full block holds 64 or 0 of this rank's rows, and lo counts local rows: the
      // alignment is the local table's.
      if (c->entries.paged() && end == begin + block_tokens && hi - lo == kKvBlockRows && lo % kKvBlockRows == 0) {
        out->shared = KvBlockRef(c->entries.pool(), c->entries.row_bytes(), c->entries.block_at(lo / kKvBlockRows));
        continue;
      }
      out->copy = c->entries.contiguous_like(&be);  // the state's row format: blocks carry compact rows as they are
      append_rows(be, out->copy, c->entries, lo, hi);
    }
  }
  return b;
}

std::unique_ptr<SequenceState> resume_from_state(Model& model, const SequenceState& advanced, const TailSnapshot& tail) {
  CHECK(!advanced.marked()) << "resume from a marked sequence";
  CHECK_GE(advanced.position(), tail.position) << "source sequence behind the snapshot";
  auto seq = state_with_tail(model, tail);
  CHECK(seq->ownership().num_ranks == advanced.ownership().num_ranks && seq->ownership().rank == advanced.ownership().rank &&
        seq->ownership().block == advanced.ownership().block)
      << "source sequence has another entry ownership";
  kernels::Backend& be = model.backend();
  for (int l = 0; l < seq->num_layers(); ++l) {
    LayerState& s = seq->layer(l);
    const LayerState& src = advanced.layer(l);
    for (auto [c, from, used] : {std::tuple{&s.main, &src.main, s.has_compressor},
                                 std::tuple{&s.indexer, &src.indexer, s.has_indexer}}) {
      if (!used) continue;
      take_rows(be, c->entries, from->entries, seq->ownership().owned_before(c->num_entries));
    }
  }
  sync_entry_tables(be, *seq);
  return seq;
}

std::unique_ptr<SequenceState> resume_from_blocks(Model& model, std::span<const EntryBlock* const> blocks,
                                                  const TailSnapshot& tail) {
  auto seq = state_with_tail(model, tail);
  kernels::Backend& be = model.backend();
  const EntryOwnership& own = seq->ownership();
  int64_t covered = 0;
  for (size_t i = 0; i < blocks.size(); ++i) {
    const EntryBlock& b = *blocks[i];
    CHECK_EQ(b.index, int64_t(i)) << "entry blocks out of order";
    CHECK_EQ(b.index * b.block_tokens, covered) << "entry blocks leave a gap";
    CHECK(b.ownership.num_ranks == own.num_ranks && b.ownership.rank == own.rank && b.ownership.block == own.block)
        << "entry block " << i << " has another entry ownership";
    CHECK(i + 1 == blocks.size() || b.end == (b.index + 1) * b.block_tokens) << "entry block " << i << " is partial";
    covered = b.end;
  }
  CHECK_GE(covered, tail.position) << "entry blocks cover " << covered << " of " << tail.position << " tokens";
  for (int l = 0; l < seq->num_layers(); ++l) {
    LayerState& s = seq->layer(l);
    for (auto [c, which, used] : {std::tuple{&s.main, 0, s.has_compressor}, std::tuple{&s.indexer, 1, s.has_indexer}}) {
      if (!used) continue;
      const int64_t want = own.owned_before(c->num_entries);  // local rows the resumed state holds
      for (const EntryBlock* b : blocks) {
        if (c->entries.rows() == want) break;
        // Under SP a block may hold none of this rank's entries (another rank owns its range);
        // the blocks after it still do.
        const EntryRows& t = which == 0 ? b->main[size_t(l)] : b->indexer[size_t(l)];
        const int64_t take = std::min(t.rows(), want - c->entries.rows());
        if (take > 0) take_rows(be, c->entries, t, take);
      }
      CHECK_EQ(c->entries.rows(), want) << "layer " << l << ": entry blocks hold too few rows";
    }
  }
  sync_entry_tables(be, *seq);
  return seq;
}

int64_t tail_snapshot_bytes(const ModelConfig& config, int64_t position) {
  int64_t floats = 0;
  for (int l = 0; l < config.num_hidden_layers; ++l) {
    floats += std::min<int64_t>(position, config.sliding_window - 1) * config.head_dim;
    const int ratio = config.compress_ratio(l);
    if (ratio == 0) continue;
    auto partial = [&](int r, const CompressorDims& d) {
      const int64_t lead = r == 4 ? r : 0;
      const int64_t start = position / r * r - lead;
      floats += 2 * (position - start) * d.row_width;  // kv and score
    };
    partial(ratio, main_dims(config, ratio));
    if (ratio == 4) partial(4, indexer_dims(config));
  }
  return floats * int64_t(sizeof(float));
}

int64_t entry_block_bytes(const ModelConfig& config, const EntryOwnership& own, int64_t begin, int64_t end,
                          KvStorage storage) {
  const int64_t entry = kv_row_bytes(entry_layout(config, storage));
  const int64_t key = kv_row_bytes(index_key_layout(config, storage));
  int64_t most = 0;
  for (int rank = 0; rank < own.num_ranks; ++rank) {
    EntryOwnership o = own;
    o.rank = rank;
    int64_t bytes = 0;
    for (int l = 0; l < config.num_hidden_layers; ++l) {
      const int ratio = config.compress_ratio(l);
      if (ratio == 0) continue;
      auto rows = [&](int r) { return o.owned_before(end / r) - o.owned_before((begin + r - 1) / r); };
      bytes += rows(ratio) * entry;
      if (ratio == 4) bytes += rows(4) * key;
    }
    most = std::max(most, bytes);
  }
  return most;
}

}  // namespace v4rt::model
