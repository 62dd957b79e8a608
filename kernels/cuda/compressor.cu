// SPDX-License-Identifier: MIT
// Compressor pooling (spec §5.4): per entry and channel, a softmax over the pooled token rows of
// (score + ape) weights the kv rows; CSA (overlap) pools the previous block through channels
// [0, d) and the current block through [d, 2d). One thread per (entry, channel), the same slot
// order and fp32 arithmetic as the reference.
#include <cstring>

#include "kernels/cuda/batch_params.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/launch_geometry.h"
#include "kernels/cuda/ops.h"

namespace v4rt::kernels::cuda {

namespace {

// Entry e, channel ch of one pooling call.
__device__ __forceinline__ void pool_entry(const Act& kv, const Act& score, const Act& ape, const Act& out, int64_t e,
                                           int ch, int ratio, int head_dim, bool overlap, bool out_round) {
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

__global__ void compressor_pool_kernel(Act kv, Act score, Act ape, Act out, int64_t num_entries, int ratio,
                                       int head_dim, bool overlap, bool out_round) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= num_entries * head_dim) return;
  pool_entry(kv, score, ape, out, i / head_dim, int(i % head_dim), ratio, head_dim, overlap, out_round);
}

// One part of a batched launch (a sequence's compressor); the launch's entries are numbered across
// the parts, part i holding [e0, e0 + num_entries). The parts travel by value in the kernel
// parameters (no copy to the device, capturable in a CUDA graph).
struct PoolPart {
  Act kv, score, out;
  int64_t num_entries, e0;
};

// The parts that fit in the kernel parameters beside the shared fields (< 64 bytes).
constexpr int kMaxPoolParts = int((kMaxKernelParamBytes - 64) / sizeof(PoolPart));

struct PoolArgs {
  Act ape;
  int64_t num_entries;  // of the launch
  int ratio, head_dim, num_parts;
  bool overlap, out_round;
  PoolPart parts[kMaxPoolParts];
};
static_assert(sizeof(PoolArgs) <= kMaxKernelParamBytes, "compressor_pool kernel parameters");

// One thread per (launch entry, channel); the entry's part by binary search over the parts' e0.
__global__ void compressor_pool_batch_kernel(const __grid_constant__ PoolArgs a) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= a.num_entries * a.head_dim) return;
  const int64_t eg = i / a.head_dim;
  const PoolPart& p = a.parts[part_holding(a.num_parts, eg, [&](int k) { return a.parts[k].e0; })];
  pool_entry(p.kv, p.score, a.ape, p.out, eg - p.e0, int(i % a.head_dim), a.ratio, a.head_dim, a.overlap,
             a.out_round);
}

void check_pool(const CompressorPoolParams& p) {
  const int c = p.overlap ? 2 : 1;
  CHECK_EQ(act_row_width(p.kv), int64_t(c) * p.head_dim) << "compressor_pool kv";
  CHECK_EQ(act_row_width(p.score), int64_t(c) * p.head_dim) << "compressor_pool score";
  CHECK_EQ(act_row_width(p.out), p.head_dim) << "compressor_pool out";
  CHECK_GE(p.kv.shape[0], (p.num_entries + (p.overlap ? 1 : 0)) * p.ratio) << "compressor_pool rows";
  CHECK_EQ(p.ape.rows, p.ratio);
  CHECK_EQ(p.ape.cols, int64_t(c) * p.head_dim);
}

}  // namespace

void launch_compressor_pool(const CompressorPoolParams& p, cudaStream_t s) {
  check_pool(p);
  const int64_t n = p.num_entries * p.head_dim;
  if (n == 0) return;
  launch(compressor_pool_kernel, grid_x_for(n, 256, "compressor_pool"), 256, 0, s)(
      make_act(p.kv, "compressor kv"), make_act(p.score, "compressor score"), make_weight_act(p.ape, "compressor ape"),
      make_act(p.out, "compressor out"), p.num_entries, p.ratio, p.head_dim, p.overlap, p.out_bf16);
  launch_check("compressor_pool", s);
}

void launch_compressor_pool_batch(const CompressorPoolBatchParams& batch, cudaStream_t s) {
  if (batch.num_parts == 0) return;
  const CompressorPoolParams& p0 = batch.parts[0];
  PoolArgs a;
  if (LaunchLog::active_for(s)) std::memset(&a, 0, sizeof(a));  // logged parameters compare bytewise
  a.ape = make_weight_act(p0.ape, "compressor ape");
  a.ratio = p0.ratio;
  a.head_dim = p0.head_dim;
  a.overlap = p0.overlap;
  a.out_round = p0.out_bf16;
  a.num_parts = 0;
  a.num_entries = 0;
  auto flush = [&] {
    if (a.num_parts > 0) {
      launch(compressor_pool_batch_kernel, grid_x_for(a.num_entries * a.head_dim, 256, "compressor_pool_batch"), 256, 0, s)(a);
      launch_check("compressor_pool_batch", s);
    }
    a.num_parts = 0;
    a.num_entries = 0;
  };
  for (int64_t i = 0; i < batch.num_parts; ++i) {
    const CompressorPoolParams& p = batch.parts[i];
    CHECK(p.ape.data == p0.ape.data && p.ratio == p0.ratio && p.head_dim == p0.head_dim && p.overlap == p0.overlap &&
          p.out_bf16 == p0.out_bf16)
        << "compressor_pool batch: the parts must share ape, ratio, head_dim, overlap and out_bf16";
    check_pool(p);
    if (p.num_entries == 0) continue;
    a.parts[a.num_parts++] = {make_act(p.kv, "compressor kv"), make_act(p.score, "compressor score"),
                              make_act(p.out, "compressor out"), p.num_entries, a.num_entries};
    a.num_entries += p.num_entries;
    if (a.num_parts == kMaxPoolParts) flush();
  }
  flush();
}

}  // namespace v4rt::kernels::cuda
