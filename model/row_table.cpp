// SPDX-License-Identifier: MIT
// RowTable: growth, the head offset (dropping front rows without copies), clones.
#include "model/row_table.h"

#include <algorithm>
#include <vector>

#include "common/check.h"

namespace v4rt::model {

TensorView RowTable::view() const { return rows_view(0, rows_); }

TensorView RowTable::rows_view(int64_t begin, int64_t end) const {
  CHECK(begin >= 0 && begin <= end && end <= std::max(rows_, capacity_ - head_));
  TensorView v(buffer_.data(), dtype_, {capacity_, width_}, backend_->device());
  return kernels::view_rows(v, head_ + begin, head_ + end);
}

TensorView RowTable::buffer_rows(int64_t begin, int64_t end) const {
  const TensorView all(buffer_.data(), dtype_, {capacity_, width_}, backend_->device());
  return kernels::view_rows(all, begin, end);
}

void RowTable::reserve_batch(std::span<const RowReserve> reserves) {
  if (reserves.empty()) return;
  kernels::Backend& backend = *reserves[0].table->backend_;
  std::vector<kernels::RowCopy> out, back;
  std::vector<Buffer> old;  // replaced buffers, alive until the copies from them are enqueued
  int64_t scratch_bytes = 0;
  for (const RowReserve& r : reserves) {
    const RowTable& t = *r.table;
    CHECK(t.backend_ == &backend) << "reserve_batch: tables of different backends";
    const bool grow = t.rows_ + r.extra > t.capacity_ || t.capacity_ < r.capacity;
    if (!grow && t.head_ + t.rows_ + r.extra > t.capacity_ && t.head_ < t.rows_) scratch_bytes += (t.bytes() + 255) / 256 * 256;
  }
  Buffer scratch;
  if (scratch_bytes > 0) scratch = backend.alloc(size_t(scratch_bytes));
  int64_t offset = 0;
  for (const RowReserve& r : reserves) {
    RowTable& t = *r.table;
    const bool grow = t.rows_ + r.extra > t.capacity_ || t.capacity_ < r.capacity;
    if (grow) {
      const int64_t capacity = std::max<int64_t>({t.rows_ + r.extra, r.capacity, t.capacity_ * 2, kRowTableFirstCapacity});
      Buffer moved = backend.alloc(size_t(capacity * t.row_bytes()));
      if (t.rows_ > 0) {
        const TensorView dst(moved.data(), t.dtype_, {capacity, t.width_}, backend.device());
        out.push_back({kernels::view_rows(dst, 0, t.rows_), t.view()});
      }
      old.push_back(std::move(t.buffer_));
      t.buffer_ = std::move(moved);
      t.capacity_ = capacity;
      t.head_ = 0;
    } else if (t.head_ + t.rows_ + r.extra > t.capacity_) {
      if (t.rows_ > 0 && t.head_ >= t.rows_) {
        out.push_back({t.buffer_rows(0, t.rows_), t.view()});
      } else if (t.rows_ > 0) {
        const TensorView tmp(static_cast<char*>(scratch.data()) + offset, t.dtype_, {t.rows_, t.width_}, backend.device());
        out.push_back({tmp, t.view()});
        back.push_back({t.buffer_rows(0, t.rows_), tmp});
        offset += (t.bytes() + 255) / 256 * 256;
      }
      t.head_ = 0;
    }
  }
  if (!out.empty()) backend.copy_rows_batch(out.data(), out.size());
  if (!back.empty()) backend.copy_rows_batch(back.data(), back.size());
}

TensorView RowTable::reserve(int64_t extra) {
  if (head_ + rows_ + extra > capacity_) {
    const RowReserve r{this, extra, 0};
    reserve_batch(std::span<const RowReserve>(&r, 1));
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
  // The kept rows move to the buffer's front through one scratch buffer (slices 256-byte aligned),
  // so overlapping source and destination never meet on any backend: the first batch copies the
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
      back.push_back({t.buffer_rows(0, keep), tmp});
      offset += bytes;
    }
    t.rows_ = keep;
    t.head_ = 0;
  }
  if (!out.empty()) backend.copy_rows_batch(out.data(), out.size());
  if (!back.empty()) backend.copy_rows_batch(back.data(), back.size());
}

void RowTable::skip_front(int64_t n) {
  CHECK(n >= 0 && n <= rows_) << "skip_front " << n << " of " << rows_ << " rows";
  CHECK(spill_ == nullptr) << "skip_front on a table with a spill";
  head_ = n == rows_ ? 0 : head_ + n;
  rows_ -= n;
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
  head_ = 0;
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
