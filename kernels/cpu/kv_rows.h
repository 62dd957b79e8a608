// SPDX-License-Identifier: MIT
// Row access to a KV table in any KvRowLayout (common/kv_format.h) for the CPU ops: plain F32 rows
// are read in place; compact rows are decoded into a per-call cache the first time one is asked
// for, so an op decodes only the rows its candidates reference, each once. Compact rows may lie in
// pool blocks (KvBlocks, paged); the reader finds each row through the block table.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "common/kv_format.h"
#include "common/tensor.h"

namespace v4rt::kernels::cpu {

class KvRowReader {
 public:
  KvRowReader() = default;
  // `table`: [rows, dim] F32 (kPlain) or U8 [rows, layout.row_bytes]; `blocks`: where compact rows
  // lie (host block addresses when paged; a plain table cannot be paged); `what` names it in errors.
  KvRowReader(const TensorView& table, const KvRowLayout& layout, const KvBlocks& blocks, int64_t dim,
              const char* what);
  int64_t rows() const { return rows_; }
  const float* row(int64_t r);

 private:
  TensorView table_;
  KvRowLayout layout_;
  KvBlocks blocks_;
  int64_t rows_ = 0, dim_ = 0;
  std::unique_ptr<float[]> decoded_;  // [rows, dim] compact rows decoded so far (not initialised)
  std::vector<uint8_t> done_;         // [rows] 1 once decoded_ holds the row
};

}  // namespace v4rt::kernels::cpu
