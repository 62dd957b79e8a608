// SPDX-License-Identifier: MIT
// KvRows: contiguous or paged append-only KV rows, and the block-table uploads.
#include "model/kv_rows.h"

#include <algorithm>
#include <utility>

#include "common/check.h"

namespace v4rt::model {
namespace {
constexpr int64_t kFirstTableCapacity = 16;  // block addresses of a device table's first allocation
}  // namespace

KvRows::KvRows(kernels::Backend* backend, const KvRowLayout& layout)
    : flat_(backend, layout.dim), row_bytes_(layout.dim * int64_t(sizeof(float))) {
  CHECK(!layout.compact()) << "contiguous KvRows hold plain rows; compact rows are paged";
}

KvRows::KvRows(std::shared_ptr<KvPool> pool, const KvRowLayout& layout)
    : pool_(std::move(pool)), row_bytes_(layout.row_bytes) {
  CHECK(pool_ && layout.compact()) << "paged KvRows hold compact rows of a pool";
  blocks_ = &pool_->blocks_for(row_bytes_);
}

KvRows::KvRows(KvRows&& other) noexcept { *this = std::move(other); }

KvRows& KvRows::operator=(KvRows&& other) noexcept {
  if (this == &other) return *this;
  release_blocks(0);
  flat_ = std::move(other.flat_);
  pool_ = std::move(other.pool_);
  blocks_ = std::exchange(other.blocks_, nullptr);
  row_bytes_ = other.row_bytes_;
  rows_ = std::exchange(other.rows_, 0);
  host_table_ = std::move(other.host_table_);
  other.host_table_.clear();
  device_table_ = std::move(other.device_table_);
  device_capacity_ = std::exchange(other.device_capacity_, 0);
  synced_ = std::exchange(other.synced_, 0);
  return *this;
}

int64_t KvRows::allocated_bytes() const {
  if (!paged()) return flat_.allocated_bytes();
  return int64_t(host_table_.size()) * (blocks_->block_bytes() + int64_t(sizeof(uint8_t*)));
}

TensorView KvRows::view() const {
  if (!paged()) return flat_.view();
  void* first = host_table_.empty() ? nullptr : host_table_[0];
  return TensorView(rows_ > 0 ? first : nullptr, DType::kU8, {rows_, row_bytes_}, pool_->backend().device());
}

KvBlocks KvRows::blocks() const {
  if (!paged()) return {};
  CHECK(synced()) << "KV block table: " << synced_ << " of " << host_table_.size()
                  << " block addresses uploaded (KvRows::sync_block_tables before the kernels read it)";
  KvBlocks b;
  b.blocks = static_cast<const uint8_t* const*>(device_table_.data());
  b.block_shift = kKvBlockShift;
  return b;
}

void KvRows::reserve(int64_t rows) {
  if (!paged()) {
    if (rows > flat_.rows()) flat_.reserve(rows - flat_.rows());
    return;
  }
  while (int64_t(host_table_.size()) * kKvBlockRows < rows) host_table_.push_back(blocks_->allocate());
}

TensorView KvRows::block_rows(int64_t begin, int64_t end) const {
  const int64_t b = begin >> kKvBlockShift, first = begin & (kKvBlockRows - 1);
  const int64_t n = std::min(end - begin, kKvBlockRows - first);
  return TensorView(host_table_[size_t(b)] + first * row_bytes_, DType::kU8, {n, row_bytes_},
                    pool_->backend().device());
}

void KvRows::append(const TensorView& src, std::vector<kernels::RowCopy>& copies) {
  const int64_t n = src.shape[0];
  if (n == 0) return;
  if (!paged()) {
    copies.push_back({flat_.reserve(n), src});
    flat_.commit(n);
    return;
  }
  CHECK(src.dtype == DType::kU8 && src.ndim == 2 && src.shape[1] == row_bytes_)
      << "KvRows append " << src.shape_str() << ": U8 rows of " << row_bytes_ << " bytes";
  reserve(rows_ + n);
  for (int64_t r = rows_; r < rows_ + n;) {
    DCHECK_EQ(blocks_->use_count(host_table_[size_t(r >> kKvBlockShift)]), 1) << "append into a shared KV block";
    const TensorView dst = block_rows(r, rows_ + n);
    copies.push_back({dst, kernels::view_rows(src, r - rows_, r - rows_ + dst.shape[0])});
    r += dst.shape[0];
  }
  rows_ += n;
}

void KvRows::copies_out(int64_t begin, int64_t end, const TensorView& dst, std::vector<kernels::RowCopy>& copies) const {
  CHECK(begin >= 0 && begin <= end && end <= rows()) << "rows [" << begin << ", " << end << ") of " << rows();
  CHECK_EQ(dst.shape[0], end - begin);
  if (begin == end) return;
  if (!paged()) {
    copies.push_back({dst, flat_.rows_view(begin, end)});
    return;
  }
  for (int64_t r = begin; r < end;) {
    const TensorView src = block_rows(r, end);
    copies.push_back({kernels::view_rows(dst, r - begin, r - begin + src.shape[0]), src});
    r += src.shape[0];
  }
}

void KvRows::append_shared(uint8_t* block) {
  CHECK(paged() && rows_ % kKvBlockRows == 0 && int64_t(host_table_.size()) * kKvBlockRows == rows_)
      << "a shared KV block goes after whole blocks: " << rows_ << " rows in " << host_table_.size() << " blocks";
  blocks_->retain(block);
  host_table_.push_back(block);
  rows_ += kKvBlockRows;
}

uint8_t* KvRows::block_at(int64_t k) const {
  CHECK(paged() && k >= 0 && (k + 1) * kKvBlockRows <= rows_) << "block " << k << " of " << rows_ << " rows";
  return host_table_[size_t(k)];
}

void KvRows::truncate(int64_t rows) {
  CHECK(rows >= 0 && rows <= this->rows()) << "truncate to " << rows << " of " << this->rows() << " rows";
  if (!paged()) {
    flat_.truncate(rows);
    return;
  }
  if (const int64_t kept = rows & (kKvBlockRows - 1); kept > 0) {
    uint8_t*& last = host_table_[size_t(rows >> kKvBlockShift)];
    if (blocks_->use_count(last) > 1) {  // copy on write: the kept rows into a block of our own
      kernels::Backend& be = pool_->backend();
      uint8_t* own = blocks_->allocate();
      const kernels::RowCopy copy{TensorView(own, DType::kU8, {kept, row_bytes_}, be.device()),
                                  TensorView(last, DType::kU8, {kept, row_bytes_}, be.device())};
      be.copy_rows_batch(&copy, 1);
      blocks_->release(last);
      last = own;
      synced_ = std::min(synced_, rows >> kKvBlockShift);
    }
  }
  rows_ = rows;
  release_blocks((rows + kKvBlockRows - 1) / kKvBlockRows);
}

void KvRows::release_blocks(int64_t keep_blocks) {
  if (!blocks_) return;
  while (int64_t(host_table_.size()) > keep_blocks) {
    blocks_->release(host_table_.back());
    host_table_.pop_back();
  }
  synced_ = std::min(synced_, keep_blocks);
}

KvRows KvRows::clone(kernels::Backend& backend) const {
  KvRows out;
  if (!paged()) {
    out.flat_ = flat_.clone();
    out.row_bytes_ = row_bytes_;
    return out;
  }
  out.pool_ = pool_;
  out.blocks_ = blocks_;
  out.row_bytes_ = row_bytes_;
  std::vector<kernels::RowCopy> copies;
  for (int64_t r = 0; r < rows_; r += kKvBlockRows) out.append(block_rows(r, rows_), copies);
  if (!copies.empty()) backend.copy_rows_batch(copies.data(), copies.size());
  return out;
}

std::vector<uint8_t> KvRows::read(kernels::Backend& backend) const {
  std::vector<uint8_t> out(static_cast<size_t>(bytes()));
  if (out.empty()) return out;
  RowTable staged = contiguous_like(&backend);
  std::vector<kernels::RowCopy> copies;
  copies_out(0, rows(), staged.reserve(rows()), copies);
  staged.commit(rows());
  backend.copy_rows_batch(copies.data(), copies.size());
  backend.copy_to_host(out.data(), staged.view().data, out.size());
  return out;
}

RowTable KvRows::contiguous_like(kernels::Backend* backend) const {
  return paged() ? RowTable(backend, row_bytes_, DType::kU8) : flat_.empty_like();
}

void KvRows::sync_block_tables(kernels::Backend& backend, std::span<KvRows* const> tables) {
  // Per table the addresses from `first` on go to its device table (all of them when it grew).
  struct Upload {
    KvRows* table;
    int64_t first;
  };
  std::vector<Upload> uploads;
  std::vector<uint8_t*> staged;
  for (KvRows* t : tables) {
    if (!t || t->synced()) continue;
    const int64_t n = int64_t(t->host_table_.size());
    int64_t first = t->synced_;
    if (n > t->device_capacity_) {  // a larger table: stream-ordered, the old one is freed behind the reads
      const int64_t cap = std::max({n, 2 * t->device_capacity_, kFirstTableCapacity});
      t->device_table_ = backend.alloc(size_t(cap) * sizeof(uint8_t*));
      t->device_capacity_ = cap;
      first = 0;
    }
    uploads.push_back({t, first});
    staged.insert(staged.end(), t->host_table_.begin() + first, t->host_table_.end());
  }
  if (uploads.empty()) return;
  Buffer dev = backend.alloc(staged.size() * sizeof(uint8_t*));
  backend.copy_to_device(dev.data(), staged.data(), staged.size() * sizeof(uint8_t*));
  std::vector<kernels::RowCopy> copies;
  int64_t offset = 0;
  for (const Upload& u : uploads) {
    const int64_t n = int64_t(u.table->host_table_.size()) - u.first;
    const auto words = [&](void* base, int64_t at) {
      return TensorView(static_cast<uint8_t*>(base) + at * int64_t(sizeof(uint8_t*)), DType::kU8,
                        {1, n * int64_t(sizeof(uint8_t*))}, backend.device());
    };
    copies.push_back({words(u.table->device_table_.data(), u.first), words(dev.data(), offset)});
    offset += n;
    u.table->synced_ = int64_t(u.table->host_table_.size());
  }
  backend.copy_rows_batch(copies.data(), copies.size());
}

}  // namespace v4rt::model
