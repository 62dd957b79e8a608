// SPDX-License-Identifier: MIT
// Expert parallelism: routed experts are spread over the EP group in contiguous ranges
// (rank r holds experts [r*E/ep, (r+1)*E/ep)). dispatch() sends every (token, expert) pair of the
// router's top-k to the rank holding the expert and returns the received rows grouped by local
// expert; combine() sends the expert outputs back and sums them per token in ascending expert-id
// order, in fp32, which is the accumulation order of the single-rank MoE (spec/v4-model.md §6).
//
// The routing layout (who sends which row where) is computed on the host from the router's ids and
// weights; every per-row step (pack, unpack, the final sum) runs on the EP Comm's memory through
// EpMemory (ep_memory.h): host loops on CPU ranks, CUDA kernels on the exchange stream on CUDA
// ranks, where the Comm is NcclComm (or StagedComm when ranks share a GPU) and the payload never
// leaves the device. The counts cross the host once per dispatch: they size the receive buffer.
//
// Two collectives per dispatch (counts, then payload) and one per combine:
//   counts   all_to_all, I64: [ep][experts_per_rank]  rows this rank sends to each local expert of
//            each peer (so the receiver knows every block's place without scanning)
//   payload  all_to_allv, U8, one row per (token, expert) pair, row = [x][I32 expert][F32 weight],
//            x = hidden * e bytes (e = dtype_size(activation dtype)), or with fp8_wire
//            fp8_wire_bytes(hidden) = [hidden e4m3][hidden/128 F32 scales] (the act_quant format
//            the expert GEMM applies anyway, so the official numerics do not change); rows for a
//            peer are ordered by expert id, then token
//   combine  all_to_allv, U8, rows of hidden * dtype_size(output dtype), the reverse exchange
// Bytes sent by one rank (the byte counters' analytic count), rows_to[p] = pairs sent to peer p:
//   dispatch = (ep-1) * experts_per_rank * 8 + sum_{p != me} rows_to[p] * (x + 8)
//   combine  = sum_{p != me} rows_from[p] * hidden * e_out
// The routing weight travels with the row: in V4 the expert applies it before w2 (§6); combine()
// can also apply it (apply_weights) for experts that do not.
#pragma once

#include <cstdint>
#include <vector>

#include <memory>

#include "cluster/comm.h"
#include "common/dtype.h"
#include "common/tensor.h"
#include "parallel/ep_memory.h"

namespace v4rt::parallel {

struct EpConfig {
  int num_experts = 0;             // n_routed_experts (global)
  int64_t hidden = 0;              // D
  int topk = 0;                    // experts per token
  DType dtype = DType::kF32;       // activation rows sent by dispatch (F32, BF16, F8E4M3, ...)
  bool fp8_wire = false;           // dispatch F32/BF16 rows as e4m3 + block scales (hidden % 128 == 0)
};

// Everything combine() needs to route outputs back; produced by dispatch(), opaque to callers.
class DispatchLayout {
 public:
  int64_t num_tokens() const { return num_tokens_; }
  int64_t num_recv() const { return int64_t(recv_slot_.size()); }

 private:
  friend class ExpertParallel;
  int64_t num_tokens_ = 0;
  std::vector<int64_t> send_pair_;   // [num_send]: token*topk + slot of each sent row, in send order
  std::vector<int64_t> send_counts_, send_displs_;  // [ep] rows per peer
  std::vector<int64_t> recv_counts_, recv_displs_;  // [ep] rows per peer
  std::vector<int64_t> recv_slot_;   // [num_recv]: grouped position of the i-th received row
  std::vector<Buffer> in_flight_;    // dispatch's exchange buffers, alive until the exchange is done
};

// Rows received by this rank, grouped by local expert (ascending), each group ordered by source
// rank, then by the source's token order.
struct DispatchedRows {
  std::vector<uint8_t> rows;            // [num_rows, hidden] in EpConfig::dtype
  std::vector<int32_t> experts;         // [num_rows] global expert id
  std::vector<float> weights;           // [num_rows] routing weight
  std::vector<int64_t> expert_offsets;  // [experts_per_rank + 1]: rows of local expert e are
                                        // [expert_offsets[e], expert_offsets[e+1])
  int64_t num_rows() const { return int64_t(experts.size()); }
};

// The same rows on the EP Comm's memory (device buffers on CUDA ranks).
struct DispatchedBuffers {
  Buffer rows;                          // [num_rows, hidden] in EpConfig::dtype
  Buffer experts;                       // [num_rows] I32 global expert id
  Buffer weights;                       // [num_rows] F32 routing weight
  std::vector<int64_t> expert_offsets;  // [experts_per_rank + 1], on the host
  int64_t num_rows = 0;
};

class ExpertParallel {
 public:
  // `ep` is the EP group; config.num_experts must be a multiple of ep.size(). On a device Comm,
  // `compute` is the stream of the backend's ops: the exchange gets its own stream (the Comm is
  // moved onto it) and is joined to `compute` by events.
  ExpertParallel(cluster::Comm& ep, const EpConfig& config, cluster::StreamHandle compute = nullptr);

  const EpConfig& config() const { return config_; }
  int experts_per_rank() const { return experts_per_rank_; }
  int first_local_expert() const { return ep_.rank() * experts_per_rank_; }
  int owner_of(int expert) const { return expert / experts_per_rank_; }

  // x: [num_tokens, hidden] in config.dtype; expert_ids: [num_tokens, topk] (-1 = no expert,
  // ids of one token distinct); weights: [num_tokens, topk].
  DispatchedRows dispatch(const void* x, const int32_t* expert_ids, const float* weights,
                          int64_t num_tokens, DispatchLayout* layout);

  // expert_out: [layout.num_recv(), hidden] in out_dtype (F32 or BF16), in the grouped order of
  // DispatchedRows. out: [num_tokens, hidden] f32 = sum over the token's experts in ascending id of
  // fp32(expert output) (times the routing weight when apply_weights). Tokens without experts get 0.
  void combine(const void* expert_out, DType out_dtype, const DispatchLayout& layout,
               const int32_t* expert_ids, const float* weights, bool apply_weights, float* out);

  // dispatch() on the Comm's memory: x is [num_tokens, hidden] there; expert_ids and weights stay
  // on the host. Ordered after the compute stream's work; the rows are ready for the compute
  // stream after wait_dispatch(), so compute enqueued in between (the shared expert) overlaps the
  // exchange. On the host the exchange is complete on return.
  DispatchedBuffers dispatch_buffers(const void* x, const int32_t* expert_ids, const float* weights,
                                     int64_t num_tokens, DispatchLayout* layout);
  void wait_dispatch();
  // combine() on the Comm's memory: expert_out and out live there; complete for the compute
  // stream on return.
  void combine_buffers(const void* expert_out, DType out_dtype, const DispatchLayout& layout,
                       const int32_t* expert_ids, const float* weights, bool apply_weights, float* out);

  Device device() const { return memory_->device(); }
  // Payload bytes of one dispatched row (x plus the 8 metadata bytes).
  int64_t dispatch_row_bytes() const;

 private:
  cluster::Comm& ep_;
  EpConfig config_;
  int experts_per_rank_ = 0;
  std::unique_ptr<EpMemory> memory_;
};

}  // namespace v4rt::parallel
