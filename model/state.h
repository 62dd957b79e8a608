// SPDX-License-Identifier: MIT
// Per-sequence decode state (spec §5.3, §5.4, §8): per layer the last window-1 KV latents
// (chronological), the compressor token buffers (main, and the indexer's for CSA layers) and the
// compressed entries / indexer keys emitted so far. All storage is allocated through the backend,
// so it lives where the backend computes. reset() returns to the empty-sequence state; any chunking
// of a prompt followed by decode reaches the same state as one prefill.
// Storage (docs/KV_CACHE.md): the compressed entries and indexer keys are F32 rows (KvStorage::kF32)
// or, under the official numerics, compact rows of exactly the values that numerics rounds them to
// (KvStorage::kCompact: FP8 + bf16 RoPE + e8m0 scales per entry, FP4 + e8m0 scales per indexer key,
// common/kv_format.h). The window tail and the compressors' token rows stay F32 in both: they are
// bounded per sequence.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "common/tensor.h"
#include "kernels/backend.h"
#include "model/config.h"
#include "model/kv_rows.h"
#include "model/row_table.h"

namespace v4rt::model {

// Which rank holds a compressed entry. PARALLEL: under sequence parallelism the compressed entries
// (CSA, HCA) and indexer keys of every layer are partitioned along the sequence by blocks of
// `block` entries, round-robin over the SP group; a single rank owns everything.
struct EntryOwnership {
  int num_ranks = 1;
  int rank = 0;
  int64_t block = 64;
  bool owns(int64_t entry) const { return (entry / block) % num_ranks == rank; }
  // How many of the entries [0, n) this rank owns.
  int64_t owned_before(int64_t n) const;
};

// Rolling a window tail back after a speculative chunk (shared by SequenceState and the MTP block's
// state). mark_window() before a chunk of at most `max_tokens` tokens saves the oldest rows that
// chunk can push out; rollback_window() then makes the tail what processing only the first
// `keep_tokens` of the `chunk_tokens` tokens would have made it (the chunk's own rows are still in
// the tail because chunk_tokens < window).
struct WindowMark {
  RowTable head;      // the oldest min(rows, max_tokens) rows of the tail at the mark
  int64_t rows = 0;   // tail rows at the mark
};
WindowMark mark_window(kernels::Backend& backend, const RowTable& tail, int64_t max_tokens);
void rollback_window(kernels::Backend& backend, RowTable& tail, const WindowMark& mark, int64_t chunk_tokens,
                     int64_t keep_tokens, int64_t max_rows);

// Token buffers of one compressor. Row 0 is the first token of a block (position `start`, a multiple
// of the ratio). CSA keeps the previous complete block in front (at sequence start a padding block of
// kv 0 / score -inf at position -ratio) since entry j also pools block j-1.
struct CompressorState {
  RowTable kv;       // [rows, c*d]
  RowTable score;    // [rows, c*d] (ape is added when pooling)
  int64_t start = 0;
  KvRows entries;    // [num_local, d] F32 or [num_local, layout.row_bytes] U8 (paged): compressed entries
                     // (main) or indexer keys this rank owns, in increasing entry index (all of
                     // them on a single rank)
  KvRowLayout layout;  // the format of the entries' rows
  int64_t num_entries = 0;  // entries emitted so far over the whole sequence (every rank counts all)
};

struct LayerState {
  RowTable window_tail;  // [<= window-1, head_dim] the latest latents, oldest first
  bool has_compressor = false;
  bool has_indexer = false;
  CompressorState main;
  CompressorState indexer;
};

// How a sequence stores its compressed entries and indexer keys. kCompact holds exactly the values
// of the official numerics (and only those: packing other values fails naming the row).
enum class KvStorage : uint8_t { kF32, kCompact };

// The row formats of the compressed entries and indexer keys under `storage`.
KvRowLayout entry_layout(const ModelConfig& config, KvStorage storage);
KvRowLayout index_key_layout(const ModelConfig& config, KvStorage storage);
// Bytes of one row of that layout (kPlain: F32 elements).
int64_t kv_row_bytes(const KvRowLayout& layout);

// Rows a compressor's token buffers (kv, score) keep room for between chunks: two blocks (CSA keeps
// the previous block), at least a RowTable's first allocation. A longer chunk grows them to its
// length while it is pooled; compressor_push gives that room back.
int64_t compressor_capacity(int ratio);

// Rows a window tail's table keeps room for (model/attention.cpp, window_update): the window's
// sliding_window - 1 rows and kWindowSlackRows more, so a decode step appends its rows in place
// and the table moves its rows to the front once per kWindowSlackRows steps.
// Chunks of up to kWindowInPlaceRows rows (decode steps) append to the table in place; longer
// ones build their window in scratch.
inline constexpr int64_t kWindowSlackRows = 32;
inline constexpr int64_t kWindowInPlaceRows = 16;
static_assert(kWindowInPlaceRows <= kWindowSlackRows, "a decode step's rows fit the window table's slack");
int64_t window_table_rows(const ModelConfig& config);

// Bytes a SequenceState of one rank holding everything (no SP) occupies after `num_tokens`
// tokens, from the layout SequenceState allocates: the window tail and the compressor buffers at
// their largest between chunks (compressor_capacity rows), F32 rows, and the compressed
// entries and indexer keys in the rows of `storage`. Admission control charges a request this for
// its prompt plus its completion.
int64_t state_bytes(const ModelConfig& config, int64_t num_tokens, KvStorage storage = KvStorage::kF32);
// Bytes `rows` entry rows of `layout` take in a sequence: plain rows as they are, compact rows in
// whole pool blocks (model/kv_pool.h) with 8 bytes of block table per block.
int64_t entry_table_bytes(int64_t rows, const KvRowLayout& layout);

// Replaces the entries of `c` with `rows` [n, dim] F32 on the backend's device (benchmarks that
// fabricate a state): F32 tables take them as they are; compact tables take them rounded in place
// to the format's values first (the official numerics' rounding, spec §2.3), then packed.
void store_entries(kernels::Backend& backend, CompressorState& c, const TensorView& rows);

class SequenceState {
 public:
  // Throws v4rt::Error when `backend` cannot read the row formats of `storage`.
  // Compact rows live in blocks of `pool` (the model's, one per backend); nullptr: a pool of this
  // sequence's own (tests and tools that build a lone state).
  SequenceState(const ModelConfig& config, kernels::Backend& backend, KvStorage storage = KvStorage::kF32,
                std::shared_ptr<KvPool> pool = nullptr);
  KvStorage storage() const { return storage_; }
  const std::shared_ptr<KvPool>& pool() const { return pool_; }
  // Makes room in every entry table for the entries the next `tokens` tokens can complete, so the
  // step's appends take no block (their block addresses are uploaded by sync_block_tables), and in
  // every compressor's token buffers for the tokens themselves, so none grows inside the step.
  void reserve(int64_t tokens);
  // The entry tables of every layer (for KvRows::sync_block_tables over many sequences).
  void entry_tables(std::vector<KvRows*>& out);
  // Bytes the tables hold allocated now (capacities; a mark's copies not counted).
  int64_t allocated_bytes() const;
  void reset();
  int64_t position() const { return position_; }  // tokens processed so far
  void advance(int64_t n) { position_ += n; }
  LayerState& layer(int l) { return layers_[size_t(l)]; }
  const LayerState& layer(int l) const { return layers_[size_t(l)]; }
  int num_layers() const { return int(layers_.size()); }
  const EntryOwnership& ownership() const { return ownership_; }
  // Set before the first token (SP): which compressed entries this rank stores.
  void set_ownership(const EntryOwnership& ownership);
  // A deep copy: continuing it gives exactly what continuing this state gives (prefix reuse).
  std::unique_ptr<SequenceState> clone() const;

  // Speculative chunks (draft verification). mark(max_tokens) before appending at most max_tokens
  // (< sliding_window) tokens; rollback(p) then leaves exactly the state that processing only the
  // tokens before position p gives (mark position <= p <= position()) and ends the mark; release()
  // ends it keeping everything. Cost: a copy of the oldest max_tokens window rows per layer at the
  // mark; compressor rows the chunk pools away are kept aside until the mark ends, so compressed
  // entries completed after p are retracted without recomputation.
  void mark(int64_t max_tokens);
  void rollback(int64_t position);
  void release();
  bool marked() const { return mark_.active; }

 private:
  struct CompressorMark {
    RowTable kv_spill, score_spill;  // rows drop_front() removed since the mark
    int64_t start = 0;               // CompressorState::start at the mark
    int64_t local_entries = 0;       // entries.rows() at the mark
    int64_t num_entries = 0;
  };
  struct LayerMark {
    WindowMark window;
    CompressorMark main, indexer;
  };
  struct Mark {
    bool active = false;
    int64_t position = 0;
    int64_t max_tokens = 0;
    std::vector<LayerMark> layers;
  };
  void reset_compressor(CompressorState& c, int ratio);
  void mark_compressor(CompressorState& c, CompressorMark& m);
  void rollback_compressor(CompressorState& c, CompressorMark& m, int ratio, int64_t position);
  void end_mark();
  const ModelConfig& config_;
  kernels::Backend& backend_;
  KvStorage storage_ = KvStorage::kF32;
  std::shared_ptr<KvPool> pool_;  // compact storage
  int64_t position_ = 0;
  std::vector<LayerState> layers_;
  EntryOwnership ownership_;
  Mark mark_;
};

}  // namespace v4rt::model
