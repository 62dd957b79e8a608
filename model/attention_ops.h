// SPDX-License-Identifier: MIT
// The backend calls the attention sublayer (model/attention.cpp) and its compressors
// (model/compressor.cpp) share: each fills one op's Params the way the numerics mode asks.
#pragma once

#include <cstdint>
#include <vector>

#include "model/blocks.h"

namespace v4rt::model::attn {

// An FP8-weight projection (act quant + bf16 output in the official mode) or an fp32 one.
void project(const BlockContext& ctx, const TensorView& x, const WeightView& w, const TensorView& y, bool fp8_path);

// RMSNorm of x's rows in place, weighted by w.
void norm(const BlockContext& ctx, const TensorView& x, const WeightView& w);

// Where the rows of a batched call sit in their sequences, so RoPE covers all of them in one call:
// a single segment rotates from its pos_begin, several read each row's position on the device.
struct RowPositions {
  int64_t pos_begin = 0;
  const int32_t* rows = nullptr;  // I32 [n] on the backend, or nullptr (a single segment)
};

// RoPE of x's rows at pos.pos_begin + r, or at pos.rows[r] when given.
void rope(const BlockContext& ctx, const TensorView& x, const std::vector<float>& inv_freq, const RowPositions& pos,
          bool inverse);

// One batch of row copies (Backend::copy_rows_batch); an empty one launches nothing.
void copy_rows_batch(const BlockContext& ctx, const std::vector<kernels::RowCopy>& copies);

// Quantize-dequantize of x in place to `format`, in blocks of `block` values.
void qdq(const BlockContext& ctx, const TensorView& x, kernels::QdqFormat format, int block);

}  // namespace v4rt::model::attn
