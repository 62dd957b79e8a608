// SPDX-License-Identifier: MIT
// Compact KV rows on the CPU: the row reader of the attention / indexer ops and kv_pack.
#include "kernels/cpu/kv_rows.h"

#include "kernels/cpu/cpu_backend.h"

namespace v4rt::kernels::cpu {

KvRowReader::KvRowReader(const TensorView& table, const KvRowLayout& layout, const KvBlocks& blocks, int64_t dim,
                         const char* what)
    : table_(table), layout_(layout), blocks_(blocks), rows_(table.data ? table.shape[0] : 0), dim_(dim) {
  CHECK(!blocks.paged() || layout.compact()) << what << ": paged rows need a compact layout, the rows are plain";
  CHECK(blocks.block_shift >= 0 && blocks.block_shift < 31) << what << ": block_shift " << blocks.block_shift;
  if (rows_ == 0) return;
  if (!layout.compact()) {
    check_f32(table, rows_, dim, what);
    return;
  }
  CHECK_EQ(layout.dim, dim) << what << ": " << kv_format_name(layout.format) << " rows of " << layout.dim
                            << " dims, the op needs " << dim;
  CHECK(table.dtype == DType::kU8) << what << ": compact rows are U8, got " << dtype_name(table.dtype);
  CHECK_EQ(row_width(table), layout.row_bytes) << what << " " << table.shape_str();
  decoded_.reset(new float[size_t(rows_ * dim)]);
  done_.assign(size_t(rows_), 0);
}

const float* KvRowReader::row(int64_t r) {
  if (!layout_.compact()) return row_f32(table_, r);
  float* out = decoded_.get() + r * dim_;
  if (!done_[size_t(r)]) {
    const uint8_t* bytes =
        blocks_.paged() ? blocks_.blocks[r >> blocks_.block_shift] + (r & (blocks_.block_rows() - 1)) * layout_.row_bytes
                        : static_cast<const uint8_t*>(table_.data) + r * table_.stride[0];
    kv_unpack_row(layout_, bytes, out);
    done_[size_t(r)] = 1;
  }
  return out;
}

bool CpuBackend::supports_kv_format(KvFormat format) const {
  (void)format;
  return true;  // every format has a reference codec
}

void CpuBackend::kv_pack(const KvPackParams& p) {
  const KvRowLayout& l = p.layout;
  CHECK(l.compact()) << "kv_pack into the plain format";
  const int64_t n = p.x.shape[0];
  check_f32(p.x, n, l.dim, "kv_pack x");
  CHECK(p.out.dtype == DType::kU8 && p.out.shape[0] == n && row_width(p.out) == l.row_bytes)
      << "kv_pack out " << p.out.shape_str() << ": U8 rows of " << l.row_bytes << " bytes";
  for (int64_t r = 0; r < n; ++r) {
    const bool exact = kv_pack_row(l, row_f32(p.x, r), static_cast<uint8_t*>(p.out.data) + r * p.out.stride[0]);
    V4RT_REQUIRE(exact, "kv_pack: row " << r << " holds values the " << kv_format_name(l.format)
                                        << " format cannot represent exactly (not rounded by the official numerics)");
  }
}

}  // namespace v4rt::kernels::cpu
