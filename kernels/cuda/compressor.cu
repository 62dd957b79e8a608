// SPDX-License-Identifier: MIT
// Compressor pooling (spec §5.4): per entry and channel, a softmax over the pooled token rows of
// (score + ape) weights the kv rows; CSA (overlap) pools the previous block through channels
// [0, d) and the current block through [d, 2d). One thread per (entry, channel), the same slot
// order and fp32 arithmetic as the reference.
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/launch_geometry.h"
#include "kernels/cuda/ops.h"

namespace v4rt::kernels::cuda {

namespace {

__global__ void compressor_pool_kernel(Act kv, Act score, Act ape, Act out, int64_t num_entries, int ratio,
                                       int head_dim, bool overlap, bool out_round) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= num_entries * head_dim) return;
  const int64_t e = i / head_dim;
  const int ch = int(i % head_dim);
  const int c = overlap ? 2 : 1;
  const int slots = c * ratio;
  float mx = -INFINITY;
  for (int s = 0; s < slots; ++s) {
    const int col = (overlap && s >= ratio) ? head_dim + ch : ch;
    const float l = score.ld(e * ratio + s, col) + ape.ld(s % ratio, col);
    mx = fmaxf(mx, l);
  }
  float den = 0.f, num = 0.f;
  for (int s = 0; s < slots; ++s) {
    const int64_t r = e * ratio + s;
    const int col = (overlap && s >= ratio) ? head_dim + ch : ch;
    const float l = score.ld(r, col) + ape.ld(s % ratio, col);
    if (l == -INFINITY) continue;
    const float w = expf(l - mx);
    den += w;
    num += w * kv.ld(r, col);
  }
  out.st(e, ch, num / den, out_round);
}

}  // namespace

void launch_compressor_pool(const CompressorPoolParams& p, cudaStream_t s) {
  const int c = p.overlap ? 2 : 1;
  const int64_t rows = p.kv.shape[0];
  CHECK_EQ(act_row_width(p.kv), int64_t(c) * p.head_dim) << "compressor_pool kv";
  CHECK_EQ(act_row_width(p.score), int64_t(c) * p.head_dim) << "compressor_pool score";
  CHECK_EQ(act_row_width(p.out), p.head_dim) << "compressor_pool out";
  CHECK_GE(rows, (p.num_entries + (p.overlap ? 1 : 0)) * p.ratio) << "compressor_pool rows";
  CHECK_EQ(p.ape.rows, p.ratio);
  CHECK_EQ(p.ape.cols, int64_t(c) * p.head_dim);
  const int64_t n = p.num_entries * p.head_dim;
  if (n == 0) return;
  compressor_pool_kernel<<<grid_x_for(n, 256, "compressor_pool"), 256, 0, s>>>(
      make_act(p.kv, "compressor kv"), make_act(p.score, "compressor score"), make_weight_act(p.ape, "compressor ape"),
      make_act(p.out, "compressor out"), p.num_entries, p.ratio, p.head_dim, p.overlap, p.out_bf16);
  launch_check("compressor_pool", s);
}

}  // namespace v4rt::kernels::cuda
