// SPDX-License-Identifier: MIT
// KvRows: the append-only rows of one compressor of one sequence (its compressed entries or indexer
// keys). Compact rows are paged: they live in fixed-size blocks of the backend's KvPool, found
// through a block table the kernels read (KvBlocks, common/kv_format.h). F32 rows (the reference
// numerics) stay one contiguous RowTable, since the kernels read plain rows only from one view.
//
// The block table has a host copy (where rows are written) and a device copy (what the kernels
// read). New blocks are taken on the host at once; their addresses reach the device table in one
// upload for any number of tables (sync_block_tables), so a step that reserves its rows first
// (SequenceState::reserve) uploads once, and a kernel never sees a table that lacks a row's block.
//
// A full block may be held by more than one table and by the prefix cache (append_shared,
// KvBlockRef): rows once written are final, so holders only read it. A table writes only into
// blocks it alone holds; a truncate into a shared block first gives the table its own copy of it.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "common/kv_format.h"
#include "common/tensor.h"
#include "kernels/backend.h"
#include "model/kv_pool.h"
#include "model/row_table.h"

namespace v4rt::model {

class KvRows {
 public:
  KvRows() = default;
  // Contiguous rows of `layout` (a plain layout: F32 rows of layout.dim).
  KvRows(kernels::Backend* backend, const KvRowLayout& layout);
  // Paged compact rows of `layout` in blocks of `pool`.
  KvRows(std::shared_ptr<KvPool> pool, const KvRowLayout& layout);
  ~KvRows() { release_blocks(0); }
  KvRows(KvRows&& other) noexcept;
  KvRows& operator=(KvRows&& other) noexcept;
  KvRows(const KvRows&) = delete;
  KvRows& operator=(const KvRows&) = delete;

  bool paged() const { return pool_ != nullptr; }
  int64_t rows() const { return paged() ? rows_ : flat_.rows(); }
  int64_t row_bytes() const { return row_bytes_; }
  int64_t bytes() const { return rows() * row_bytes_; }  // of the rows held
  // Paged: the blocks held and 8 bytes of block table per block; contiguous: the table's capacity.
  int64_t allocated_bytes() const;
  // [rows, width]: F32 rows, or U8 rows of row_bytes (paged: data = the first block, address the
  // rows through blocks()).
  TensorView view() const;
  // The device block table; empty when contiguous. CHECKs that every block is uploaded.
  KvBlocks blocks() const;
  bool synced() const { return !paged() || synced_ == int64_t(host_table_.size()); }

  // Makes room for `rows` rows in all (blocks taken now, not yet uploaded).
  void reserve(int64_t rows);
  // Appends src's rows: the copies into their places go to `copies` (one per block touched; the
  // caller runs them as one batch with Backend::copy_rows_batch). The rows count at once.
  void append(const TensorView& src, std::vector<kernels::RowCopy>& copies);
  // The copies of rows [begin, end) into `dst` (that many rows of this table's width and dtype).
  void copies_out(int64_t begin, int64_t end, const TensorView& dst, std::vector<kernels::RowCopy>& copies) const;
  // Appends the kKvBlockRows rows of `block`, a full block of this table's pool and row size held
  // elsewhere (another table, a KvBlockRef), by reference: one more holder, no copy. The rows held
  // must end on a block boundary with no block reserved past them.
  void append_shared(uint8_t* block);
  // The address of block k, which holds rows [k * kKvBlockRows, (k + 1) * kKvBlockRows), all held.
  uint8_t* block_at(int64_t k) const;
  const std::shared_ptr<KvPool>& pool() const { return pool_; }
  // Keeps the first `rows` rows; gives back the blocks past them (a shared block that keeps some
  // rows is replaced by a copy of them first, so later appends never write into a shared block).
  void truncate(int64_t rows);
  void clear() { truncate(0); }
  // A deep copy of the rows in new blocks (their addresses not yet uploaded: sync_block_tables).
  KvRows clone(kernels::Backend& backend) const;
  // The rows' bytes in row order, on the host (tests, dumps).
  std::vector<uint8_t> read(kernels::Backend& backend) const;
  // A contiguous table of the same rows' format, for copies held outside the pool (prefix cache).
  RowTable contiguous_like(kernels::Backend* backend) const;

  // Uploads the new block addresses of `tables` (nullptr entries skipped): one host-to-device copy
  // for all, then one batch of device copies into each table. Nothing when all are synced.
  static void sync_block_tables(kernels::Backend& backend, std::span<KvRows* const> tables);

 private:
  void release_blocks(int64_t keep_blocks);
  int64_t width() const { return paged() ? row_bytes_ : flat_.width(); }
  DType dtype() const { return paged() ? DType::kU8 : flat_.dtype(); }
  // The rows [begin, end) that lie in one block: view of [begin, min(end, block end)).
  TensorView block_rows(int64_t begin, int64_t end) const;

  RowTable flat_;                       // contiguous rows
  std::shared_ptr<KvPool> pool_;        // paged rows
  KvBlockPool* blocks_ = nullptr;       // pool_'s blocks of this row size
  int64_t row_bytes_ = 0;
  int64_t rows_ = 0;
  std::vector<uint8_t*> host_table_;    // block addresses, in row order
  Buffer device_table_;                 // [capacity] addresses on the backend's device
  int64_t device_capacity_ = 0;
  int64_t synced_ = 0;                  // leading addresses the device table holds
};

}  // namespace v4rt::model
