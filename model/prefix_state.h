// SPDX-License-Identifier: MIT
// Resumable points of a V4 sequence (docs/PREFIX_CACHE.md). The state at position p splits into
//   - append-only rows: the compressed entries and indexer keys of every compressed layer (entry j
//     is final once position (j+1)*ratio is reached); shared in EntryBlocks of `block_tokens`
//     tokens, the rows this rank owns under SP;
//   - a small tail that later tokens overwrite: the sliding-window latents and each compressor's
//     partial block (token rows not yet pooled, CSA's previous block in front). TailSnapshot.
// A state at p is rebuilt from the tail at p plus the entries before p, taken from a state that has
// advanced past p or from blocks; continuing it gives exactly what continuing the original gives.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "model/config.h"
#include "model/kv_pool.h"
#include "model/row_table.h"
#include "model/state.h"

namespace v4rt::model {

class Model;

struct CompressorTail {
  RowTable kv, score;        // [rows, c*d]: CompressorState::kv / score at the point
  int64_t start = 0;         // CompressorState::start
  int64_t num_entries = 0;   // entries emitted before the point (over the whole sequence)
};

struct LayerTail {
  RowTable window;           // [<= window-1, head_dim]
  bool has_compressor = false;
  bool has_indexer = false;
  CompressorTail main, indexer;
};

// The non-append-only part of a SequenceState at `position`: the same on every rank of a layout
// (TP, EP and SP ranks all hold the whole window and every compressor's token rows).
struct TailSnapshot {
  int64_t position = 0;
  std::vector<LayerTail> layers;
  int64_t bytes() const;     // payload bytes (F32 rows under either KvStorage)
};

// The tail of `state` (not marked). A copy of at most window-1 + the compressors' partial rows per
// layer: take it at a chunk boundary, when the sequence stands at the point.
TailSnapshot snapshot_tail(const SequenceState& state);

// One layer's rows of an EntryBlock. A full block whose local rows are exactly one aligned pool
// block of a paged table (compact rows; B = 256 tokens makes a CSA layer's entries and keys so) is
// that pool block, shared by reference with the sequence it came from and with every sequence
// resumed from it; any other block (HCA's few rows, a partial block, F32 rows) is a copy outside the
// pool in the sequence's row format.
struct EntryRows {
  RowTable copy;
  KvBlockRef shared;
  int64_t rows() const { return shared ? kKvBlockRows : copy.rows(); }
  // The rows' bytes, a shared block's as well: it is charged to the tree as if copied (and to each
  // sequence that holds it as well), which overcounts but never undercounts. A compact row is a
  // multiple of 4 bytes, so 64 rows fill their pool block exactly.
  int64_t bytes() const { return shared ? kKvBlockRows * shared.row_bytes() : copy.bytes(); }
};

// The append-only rows a sequence produced for the tokens [index*block_tokens, end): for each
// compressed layer the entries (and indexer keys) j with index*block_tokens <= j*ratio and
// (j+1)*ratio <= end, the rows `ownership` keeps. block_tokens is a multiple of every compress
// ratio, so a block never splits an entry. A block is full when end = (index+1)*block_tokens.
struct EntryBlock {
  int64_t index = 0;
  int64_t block_tokens = 0;
  int64_t end = 0;
  EntryOwnership ownership;
  std::vector<EntryRows> main, indexer;  // per layer; empty for layers without them
  int64_t bytes() const;
};

// Checks block_tokens against the config's ratios (throws v4rt::Error naming the value).
void validate_block_tokens(const ModelConfig& config, int64_t block_tokens);

// Block `index` up to `end` (<= state.position()) of `state`, a sequence of `model`: its rows
// copied, or shared where they are one pool block (EntryRows).
EntryBlock extract_block(Model& model, const SequenceState& state, int64_t index, int64_t block_tokens, int64_t end);

// A new sequence of `model` at tail.position(): tail from the snapshot, entries from `advanced`
// (a state of the same tokens at a position >= the snapshot's; its extra entries are not taken).
// Paged tables share advanced's full pool blocks and copy the rest.
std::unique_ptr<SequenceState> resume_from_state(Model& model, const SequenceState& advanced, const TailSnapshot& tail);

// As above with the entries from blocks 0, 1, ... in order, together covering [0, tail.position)
// (the last block may reach further; its extra rows are not taken). Shared blocks are taken by
// reference where the resumed table takes all 64 rows, copied otherwise.
std::unique_ptr<SequenceState> resume_from_blocks(Model& model, std::span<const EntryBlock* const> blocks,
                                                  const TailSnapshot& tail);

// Bytes of a tail snapshot at `position` (as TailSnapshot::bytes; F32 rows under either storage),
// and of a block covering [begin, end) on the rank of `own` that stores the most, in the entry rows
// of `storage` (as EntryBlock::bytes), computed from the config alone: what a leader that holds no
// payload charges against the budget.
int64_t tail_snapshot_bytes(const ModelConfig& config, int64_t position);
int64_t entry_block_bytes(const ModelConfig& config, const EntryOwnership& own, int64_t begin, int64_t end,
                          KvStorage storage = KvStorage::kF32);

}  // namespace v4rt::model
