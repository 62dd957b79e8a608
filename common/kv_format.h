// SPDX-License-Identifier: MIT
// Row formats of the compressed KV cache (spec §8.1). A kPlain row holds one element of the view's
// float dtype per dim. The compact formats hold exactly the values the official numerics round the
// entries to (spec §2.3: FP8 block 64 on the non-RoPE dims, bf16 RoPE dims; FP4 block 32 on the
// indexer keys), so packing an official-numerics row is lossless and unpacking gives it back bit
// for bit.
//  - kFp8Rope, a main compressed entry of head_dim = nope + rope dims:
//      bytes [0, nope)                    e4m3 codes of the non-RoPE dims
//      bytes [nope, nope + 2 * rope)      the RoPE dims as bf16 (little endian)
//      bytes [.., + ceil(nope / 64))      e8m0 scale of each 64-block of the non-RoPE dims
//      padding to a multiple of 8 bytes   (Flash: 448 + 128 + 7 + 1 = 584)
//  - kFp4, an indexer key of dim (a multiple of 32) dims:
//      bytes [0, dim / 2)                 e2m1 codes, two per byte, low nibble = even element
//      bytes [dim / 2, + dim / 32)        e8m0 scale of each 32-block
//      padding to a multiple of 4 bytes   (Flash: 64 + 4 = 68)
// The codecs here are the host reference; kernels/cuda/kv_decode.cuh decodes the same bytes on the
// device.
#pragma once

#include <cstdint>

namespace v4rt {

enum class KvFormat : uint8_t { kPlain, kFp8Rope, kFp4 };
const char* kv_format_name(KvFormat format);  // "plain", "fp8_rope", "fp4"

struct KvRowLayout {
  KvFormat format = KvFormat::kPlain;
  int64_t dim = 0;           // logical elements per row
  int64_t quant_dim = 0;     // leading dims stored as scaled codes (kFp8Rope: nope; kFp4: dim)
  int block = 0;             // quantized elements per e8m0 scale
  int64_t rope_offset = 0;   // kFp8Rope: byte offset of the bf16 dims
  int64_t scale_offset = 0;  // byte offset of the scales
  int64_t row_bytes = 0;     // bytes per row, padding included (kPlain: 0, the view's dtype decides)
  int64_t num_scales() const { return block > 0 ? (quant_dim + block - 1) / block : 0; }
  bool compact() const { return format != KvFormat::kPlain; }
};

// Where a table's compact rows lie. Contiguous (blocks == nullptr): row r at the view's data +
// r * row_bytes. Paged: the rows sit in fixed-size blocks of a pool (model/kv_pool.h), row r at
// blocks[r >> block_shift] + (r & (2^block_shift - 1)) * row_bytes; the array of block addresses is
// readable where the backend computes (device memory on CUDA). A paged table's view still gives
// the row count and row bytes, and its data is the first block's address.
struct KvBlocks {
  const uint8_t* const* blocks = nullptr;  // [ceil(rows / block_rows)] block addresses; nullptr: contiguous
  int block_shift = 0;                     // log2(rows per block)
  bool paged() const { return blocks != nullptr; }
  int64_t block_rows() const { return int64_t(1) << block_shift; }
};

KvRowLayout plain_kv_layout(int64_t dim);
// Main compressed entry of `dim` dims whose last `rope_dim` are RoPE dims.
KvRowLayout fp8_rope_kv_layout(int64_t dim, int64_t rope_dim);
// Indexer key of `dim` dims (a multiple of 32).
KvRowLayout fp4_kv_layout(int64_t dim);

// Encodes the `dim` floats of x into `row` (row_bytes bytes, padding zeroed). Each block's scale
// is the smallest power of two with every |x| / scale inside the code range, so any value the
// official rounding produced (whatever scale rounded it) is encoded exactly. False when some
// value is not exactly representable (a row the format's rounding never saw); the row then holds
// the nearest encoding.
bool kv_pack_row(const KvRowLayout& layout, const float* x, uint8_t* row);
// Decodes a packed row into `dim` floats.
void kv_unpack_row(const KvRowLayout& layout, const uint8_t* row, float* x);

}  // namespace v4rt
