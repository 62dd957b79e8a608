// SPDX-License-Identifier: MIT
// The backend calls shared by the attention sublayer and its compressors (see attention_ops.h).
#include "model/attention_ops.h"

namespace v4rt::model::attn {

// An FP8-weight projection (act quant + bf16 output in the official mode) or an fp32 one. The fp32
// ones (the compressors' wkv / wgate) take the sublayer's normed input, bf16 values in the
// official mode (x_bf16_exact).
void project(const BlockContext& ctx, const TensorView& x, const WeightView& w, const TensorView& y, bool fp8_path) {
  kernels::LinearParams p;
  p.x = x;
  p.w = w;
  p.y = y;
  p.act_quant_fp8 = ctx.official && fp8_path;
  p.out_bf16 = ctx.official && fp8_path;
  p.x_bf16_exact = ctx.official && !fp8_path;
  ctx.backend.linear(p);
}

void norm(const BlockContext& ctx, const TensorView& x, const WeightView& w) {
  kernels::RmsNormParams p;
  p.x = x;
  p.y = x;
  p.weight = w;
  p.eps = float(ctx.config.rms_norm_eps);
  p.out_bf16 = ctx.official;
  ctx.backend.rms_norm(p);
}

// RoPE of x's rows at pos.pos_begin + r, or at pos.rows[r] when given.
void rope(const BlockContext& ctx, const TensorView& x, const std::vector<float>& inv_freq, const RowPositions& pos,
          bool inverse) {
  kernels::RopeParams p;
  p.x = x;
  p.inv_freq = inv_freq.data();
  p.rope_dim = ctx.config.qk_rope_head_dim;
  p.pos_begin = pos.pos_begin;
  p.positions = pos.rows;
  p.inverse = inverse;
  p.out_bf16 = ctx.official;
  ctx.backend.rope(p);
}

// One batch of row copies (Backend::copy_rows_batch); an empty one launches nothing.
void copy_rows_batch(const BlockContext& ctx, const std::vector<kernels::RowCopy>& copies) {
  if (!copies.empty()) ctx.backend.copy_rows_batch(copies.data(), copies.size());
}

void qdq(const BlockContext& ctx, const TensorView& x, kernels::QdqFormat format, int block) {
  kernels::QdqParams p;
  p.x = x;
  p.format = format;
  p.block = block;
  ctx.backend.qdq(p);
}

}  // namespace v4rt::model::attn
