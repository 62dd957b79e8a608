// SPDX-License-Identifier: MIT
// The kernel-side operands of a decode GEMV (gemv.h), shared by the CUDA-core kernel (gemv.cu) and
// the FP8 tensor-core one (gemv_mma.cu): GemvParams with its views as Act.
#pragma once

#include "kernels/cuda/gemv.h"
#include "kernels/cuda/ops.h"

namespace v4rt::kernels::cuda {

struct GemvArgs {
  GemvParams::Input input = GemvParams::Input::kQuant;
  const uint8_t* x8 = nullptr;
  const float* x_scale = nullptr;
  int64_t act_ld = 0;
  Act x;
  bool x_vec = false;  // x rows may be read 4 elements at a time (Act::ld4)
  const uint8_t* w = nullptr;
  const float* w_scale = nullptr;
  int64_t w_ld = 0;
  int out_group = 0;
  Act y;
  bool accumulate = false, round = false, round_product = false;
  int m = 0, n = 0, k = 0, k_act = 0;
  int slices = 1;  // gemv_mma.cu: warps per 16-channel group along k
};

inline GemvArgs gemv_args(const GemvParams& p) {
  GemvArgs a;
  a.input = p.input;
  a.x8 = p.x8;
  a.x_scale = p.x_scale;
  a.act_ld = p.act_ld;
  a.x.data = const_cast<void*>(p.x);
  a.x.stride = p.x_stride;
  a.x.bf16 = p.x_bf16;
  a.x_vec = p.x && a.x.vec_ok();
  a.w = static_cast<const uint8_t*>(p.w);
  a.w_scale = p.w_scale;
  a.w_ld = p.w_ld;
  a.out_group = int(p.out_group);
  a.y.data = p.y;
  a.y.stride = p.y_stride;
  a.y.bf16 = p.y_bf16;
  a.accumulate = p.accumulate;
  a.round = p.round;
  a.round_product = p.round_product;
  a.m = int(p.m);
  a.n = int(p.n);
  a.k = int(p.k);
  a.k_act = int(p.k_act);
  return a;
}

}  // namespace v4rt::kernels::cuda
