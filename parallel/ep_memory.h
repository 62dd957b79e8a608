// SPDX-License-Identifier: MIT
// EpMemory: the row movement of expert parallelism (ep.h) on the memory of the EP group's Comm:
// host loops for CPU ranks, CUDA kernels on the communication stream for CUDA ranks
// (parallel/cuda/ep_memory.cu). ExpertParallel computes the routing layout on the host (the counts
// decide buffer sizes there anyway) and does every per-row step through this interface, so one
// code path serves both, and the CPU tests under mpirun check the logic the GPU runs.
//
// Streams (CUDA): the exchange runs on its own stream. wait_compute() orders it after the work
// already enqueued on the compute stream; release_compute() orders later compute work after the
// exchange. Between the two, the compute stream is free: the shared expert overlaps the dispatch.
// On the host both are no-ops (everything completes in call order).
#pragma once

#include <cstdint>
#include <memory>

#include "cluster/comm.h"
#include "common/dtype.h"
#include "common/tensor.h"

namespace v4rt::parallel {

class EpMemory {
 public:
  virtual ~EpMemory() = default;
  virtual Device device() const = 0;
  // Stream of the exchange (nullptr on the host); the EP Comm is set to it.
  virtual cluster::StreamHandle stream() const = 0;
  virtual Buffer alloc(size_t bytes) = 0;
  // Host -> this memory, ordered on stream(); `src` may be reused when it returns.
  virtual void upload(void* dst, const void* src, size_t bytes) = 0;
  // This memory -> host; waits for stream() first.
  virtual void download(void* dst, const void* src, size_t bytes) = 0;
  // dst + i*dst_stride <- src + idx[i]*src_stride, `bytes` per row, i < n (strides in bytes);
  // idx: [n] I64 in this memory; idx == nullptr means idx[i] = i.
  virtual void gather_rows(void* dst, int64_t dst_stride, const void* src, int64_t src_stride,
                           const int64_t* idx, int64_t n, int64_t bytes) = 0;
  // out[t, c] = sum_{j < topk, pos[t*topk+j] >= 0} scale[t*topk+j] * f32(rows[pos[t*topk+j], c]),
  // accumulated in fp32 in j order (the caller orders j by ascending expert id). rows: F32 or BF16
  // [*, hidden]; pos: [num_tokens, topk] I64; scale: [num_tokens, topk] F32 or nullptr (1);
  // out: [num_tokens, hidden] F32. All in this memory.
  virtual void sum_rows(float* out, const void* rows, DType dtype, const int64_t* pos, const float* scale,
                        int64_t num_tokens, int topk, int64_t hidden) = 0;
  // FP8 wire format of dispatch: row r of x ([n, hidden] F32 or BF16, hidden % 128 == 0) becomes
  // [hidden] e4m3 then [hidden/128] F32 power-of-two scales (the act_quant rule: scale =
  // 2^ceil(log2(amax/448))), written at dst + r*dst_stride; dequant_fp8 is the inverse into
  // [n, hidden] of `out_dtype`.
  virtual void quant_fp8(void* dst, int64_t dst_stride, const void* x, DType x_dtype, int64_t n, int64_t hidden) = 0;
  virtual void dequant_fp8(void* out, DType out_dtype, const void* src, int64_t src_stride, int64_t n,
                           int64_t hidden) = 0;
  virtual void wait_compute() = 0;
  virtual void release_compute() = 0;
  virtual void synchronize() = 0;
};

// Bytes of one FP8 wire row: hidden e4m3 codes + hidden/128 F32 scales.
inline int64_t fp8_wire_bytes(int64_t hidden) { return hidden + hidden / 128 * 4; }

std::unique_ptr<EpMemory> make_host_ep_memory();
#if defined(V4RT_HAVE_CUDA)
// Kernels on a new non-blocking stream; `compute` is the stream of the backend's ops.
std::unique_ptr<EpMemory> make_cuda_ep_memory(cluster::StreamHandle compute);
#endif

}  // namespace v4rt::parallel
