// SPDX-License-Identifier: MIT
// RowTable: a growable table of rows on the backend's device (window tails, compressor token
// buffers, F32 compressed entries, copies held by the prefix cache).
#pragma once

#include <cstdint>
#include <span>

#include "common/tensor.h"
#include "kernels/backend.h"

namespace v4rt::model {

constexpr int64_t kRowTableFirstCapacity = 16;  // rows of a table's first allocation

class RowTable;
// The first `rows` rows of `table`, for RowTable::drop_front_batch.
struct RowDrop {
  RowTable* table = nullptr;
  int64_t rows = 0;
};
// Room for `extra` more rows in `table`, in a buffer of at least `capacity` rows, for
// RowTable::reserve_batch.
struct RowReserve {
  RowTable* table = nullptr;
  int64_t extra = 0;
  int64_t capacity = 0;
};

// A growable [rows, width] table of `dtype` elements on the backend's device: F32 rows, or U8 rows of
// a compact KV format (width = its row bytes). The rows start at a head offset in the buffer:
// skip_front only advances it (no copy), and reserve moves the rows back to the front when the
// room past them runs out (one copy, through scratch where the two ranges overlap), growing the
// buffer only when the rows themselves do not fit, as without the offset. So a window tail that
// takes one row and skips one each decode step moves its rows once per capacity - rows steps.
// drop_front moves the kept rows to the front at once (the compressor buffers, batched).
class RowTable {
 public:
  RowTable() = default;
  RowTable(kernels::Backend* backend, int64_t width, DType dtype = DType::kF32)
      : backend_(backend), width_(width), dtype_(dtype) {}
  int64_t rows() const { return rows_; }
  int64_t width() const { return width_; }
  DType dtype() const { return dtype_; }
  int64_t row_bytes() const { return width_ * int64_t(dtype_size(dtype_)); }
  int64_t bytes() const { return rows_ * row_bytes(); }  // of the rows held (not the capacity)
  int64_t allocated_bytes() const { return int64_t(buffer_.bytes()); }  // the capacity's
  RowTable empty_like() const { return RowTable(backend_, width_, dtype_); }  // same backend and row format
  TensorView view() const;                       // [rows, width]
  TensorView rows_view(int64_t begin, int64_t end) const;
  // Makes room for `extra` more rows and returns them (not yet counted: call commit()).
  TensorView reserve(int64_t extra);
  void commit(int64_t extra) { rows_ += extra; }
  // reserve() (the rows not returned) of several distinct tables of one backend (the window tails of
  // a batch of sequences), each buffer grown to at least its `capacity` rows: the rows that move
  // go in one Backend::copy_rows_batch (two where a move overlaps: through scratch).
  static void reserve_batch(std::span<const RowReserve> reserves);
  void drop_front(int64_t n);                    // removes the first n rows, the rest to the front
  void skip_front(int64_t n);                    // removes the first n rows, the rest where they are (no spill)
  // drop_front of several distinct tables of one backend (the compressors of a batch of sequences),
  // each of its copy phases one Backend::copy_rows_batch over all of them.
  static void drop_front_batch(std::span<const RowDrop> drops);
  void clear() { rows_ = head_ = 0; }
  void truncate(int64_t rows);                   // keeps the first `rows` rows
  void shrink(int64_t capacity);                 // gives back the room past max(rows, capacity) rows
  RowTable clone() const;                        // a deep copy of the rows (same backend)
  // While a spill table is set, drop_front() appends the rows it removes to it (oldest first), so a
  // speculative chunk can be rolled back exactly (SequenceState::rollback). nullptr: no spill.
  void set_spill(RowTable* spill) { spill_ = spill; }

 private:
  void reallocate(int64_t capacity);  // a buffer of `capacity` rows holding the current rows
  TensorView buffer_rows(int64_t begin, int64_t end) const;  // buffer rows, whatever the head
  kernels::Backend* backend_ = nullptr;
  int64_t width_ = 0;
  DType dtype_ = DType::kF32;
  int64_t rows_ = 0;
  int64_t head_ = 0;  // the first row's index in buffer_
  int64_t capacity_ = 0;
  Buffer buffer_;
  RowTable* spill_ = nullptr;
};

}  // namespace v4rt::model
