// SPDX-License-Identifier: MIT
// RowTable: growth, dropping rows at the front (one batch of copies for many tables), clones.
#include "model/row_table.h"

#include <algorithm>
#include <vector>

#include "common/check.h"

namespace v4rt::model {

TensorView RowTable::view() const { return rows_view(0, rows_); }

TensorView RowTable::rows_view(int64_t begin, int64_t end) const {
  CHECK(begin >= 0 && begin <= end && end <= std::max(rows_, capacity_));
  TensorView v(buffer_.data(), dtype_, {capacity_, width_}, backend_->device());
  return kernels::view_rows(v, begin, end);
}

TensorView RowTable::reserve(int64_t extra) {
  if (rows_ + extra > capacity_) {
    reallocate(std::max<int64_t>({rows_ + extra, capacity_ * 2, kRowTableFirstCapacity}));
  }
  return rows_view(rows_, rows_ + extra);
}

void RowTable::drop_front(int64_t n) {
  const RowDrop drop{this, n};
  drop_front_batch(std::span<const RowDrop>(&drop, 1));
}

void RowTable::drop_front_batch(std::span<const RowDrop> drops) {
  if (drops.empty()) return;
  kernels::Backend& backend = *drops[0].table->backend_;
  // The kept rows move to the front through one scratch buffer (slices 256-byte aligned), so
  // overlapping source and destination never meet on any backend: the first batch copies the
  // dropped rows to the spill tables and the kept rows out, the second copies them back.
  auto slice_bytes = [](const RowDrop& d) {
    const int64_t keep = d.rows > 0 ? d.table->rows_ - d.rows : 0;
    return (keep * d.table->row_bytes() + 255) / 256 * 256;
  };
  int64_t scratch_bytes = 0;
  for (const RowDrop& d : drops) {
    CHECK(d.table->backend_ == &backend) << "drop_front_batch: tables of different backends";
    CHECK(d.rows >= 0 && d.rows <= d.table->rows_);
    scratch_bytes += slice_bytes(d);
  }
  Buffer scratch;
  if (scratch_bytes > 0) scratch = backend.alloc(size_t(scratch_bytes));
  std::vector<kernels::RowCopy> out, back;
  int64_t offset = 0;
  for (const RowDrop& d : drops) {
    RowTable& t = *d.table;
    if (d.rows == 0) continue;
    const int64_t bytes = slice_bytes(d);
    if (t.spill_) {
      out.push_back({t.spill_->reserve(d.rows), t.rows_view(0, d.rows)});
      t.spill_->commit(d.rows);
    }
    const int64_t keep = t.rows_ - d.rows;
    if (keep > 0) {
      const TensorView tmp(static_cast<char*>(scratch.data()) + offset, t.dtype_, {keep, t.width_}, backend.device());
      out.push_back({tmp, t.rows_view(d.rows, t.rows_)});
      back.push_back({t.rows_view(0, keep), tmp});
      offset += bytes;
    }
    t.rows_ = keep;
  }
  if (!out.empty()) backend.copy_rows_batch(out.data(), out.size());
  if (!back.empty()) backend.copy_rows_batch(back.data(), back.size());
}

void RowTable::truncate(int64_t rows) {
  CHECK(rows >= 0 && rows <= rows_) << "truncate to " << rows << " of " << rows_ << " rows";
  rows_ = rows;
}

void RowTable::shrink(int64_t capacity) {
  const int64_t cap = std::max(rows_, capacity);
  if (capacity_ > cap) reallocate(cap);
}

void RowTable::reallocate(int64_t capacity) {
  Buffer moved = backend_->alloc(size_t(capacity * row_bytes()));
  if (rows_ > 0) {
    TensorView dst(moved.data(), dtype_, {capacity, width_}, backend_->device());
    backend_->copy_rows(kernels::view_rows(dst, 0, rows_), view());
  }
  buffer_ = std::move(moved);
  capacity_ = capacity;
}

RowTable RowTable::clone() const {
  RowTable t = empty_like();
  if (rows_ > 0) {
    backend_->copy_rows(t.reserve(rows_), view());
    t.commit(rows_);
  }
  return t;
}

}  // namespace v4rt::model
