// SPDX-License-Identifier: MIT
// EP dispatch/combine over cluster::Comm (see ep.h for the wire layout and byte counts).
#include "parallel/ep.h"

#include <glog/logging.h>

#include <algorithm>
#include <cstring>

namespace v4rt::parallel {
namespace {

constexpr int64_t kMetaBytes = 8;  // I32 expert id + F32 weight after each payload row

std::vector<int64_t> prefix(const std::vector<int64_t>& counts) {
  std::vector<int64_t> displs(counts.size(), 0);
  for (size_t i = 1; i < counts.size(); ++i) displs[i] = displs[i - 1] + counts[i - 1];
  return displs;
}

std::vector<int64_t> scaled(const std::vector<int64_t>& v, int64_t factor) {
  std::vector<int64_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = v[i] * factor;
  return out;
}

}  // namespace

ExpertParallel::ExpertParallel(cluster::Comm& ep, const EpConfig& config, cluster::StreamHandle compute)
    : ep_(ep), config_(config) {
  CHECK_GT(config.num_experts, 0);
  CHECK_GT(config.hidden, 0);
  CHECK_GT(config.topk, 0);
  CHECK_EQ(config.num_experts % ep.size(), 0)
      << "EP group of " << ep.size() << " ranks cannot hold " << config.num_experts << " experts";
  if (config.fp8_wire) {
    CHECK(config.dtype == DType::kF32 || config.dtype == DType::kBF16)
        << "FP8 dispatch quantizes F32 or BF16 activations, not " << dtype_name(config.dtype);
    CHECK_EQ(config.hidden % 128, 0) << "FP8 dispatch needs hidden % 128 == 0, hidden = " << config.hidden;
  }
  experts_per_rank_ = config.num_experts / ep.size();
  if (ep.device() == Device::kHost) {
    memory_ = make_host_ep_memory();
  } else {
#if defined(V4RT_HAVE_CUDA)
    memory_ = make_cuda_ep_memory(compute);
    ep.set_stream(memory_->stream());
#else
    (void)compute;
    LOG(FATAL) << "EP group '" << ep.name() << "' is on a device but this build has no CUDA";
#endif
  }
}

int64_t ExpertParallel::dispatch_row_bytes() const {
  const int64_t x = config_.fp8_wire ? fp8_wire_bytes(config_.hidden)
                                     : config_.hidden * int64_t(dtype_size(config_.dtype));
  return x + kMetaBytes;
}

DispatchedBuffers ExpertParallel::dispatch_buffers(const void* x, const int32_t* expert_ids,
                                                   const float* weights, int64_t num_tokens,
                                                   DispatchLayout* layout) {
  const int n = ep_.size();
  const int epr = experts_per_rank_;
  const int topk = config_.topk;
  const int64_t x_bytes = config_.hidden * int64_t(dtype_size(config_.dtype));  // a row in memory
  const int64_t row_bytes = dispatch_row_bytes();
  const int64_t wire_x = row_bytes - kMetaBytes;  // a row's x on the wire
  EpMemory& mem = *memory_;
  *layout = DispatchLayout{};
  layout->num_tokens_ = num_tokens;

  // Order the (token, slot) pairs by expert id, then token: bucket by expert.
  std::vector<int64_t> per_expert(size_t(config_.num_experts) + 1, 0);
  for (int64_t t = 0; t < num_tokens; ++t) {
    for (int s = 0; s < topk; ++s) {
      const int32_t e = expert_ids[t * topk + s];
      if (e < 0) continue;
      CHECK_LT(e, config_.num_experts) << "token " << t << " routed to expert " << e;
      for (int s2 = 0; s2 < s; ++s2) {
        CHECK_NE(expert_ids[t * topk + s2], e) << "token " << t << " lists expert " << e << " twice";
      }
      per_expert[size_t(e) + 1]++;
    }
  }
  std::vector<int64_t> counts_matrix(size_t(n) * size_t(epr));  // [peer][local expert]
  for (int e = 0; e < config_.num_experts; ++e) counts_matrix[size_t(e)] = per_expert[size_t(e) + 1];
  for (int e = 0; e < config_.num_experts; ++e) per_expert[size_t(e) + 1] += per_expert[size_t(e)];
  const int64_t num_send = per_expert.back();
  layout->send_pair_.assign(size_t(num_send), 0);
  {
    std::vector<int64_t> fill(per_expert.begin(), per_expert.end() - 1);
    for (int64_t t = 0; t < num_tokens; ++t) {
      for (int s = 0; s < topk; ++s) {
        const int32_t e = expert_ids[t * topk + s];
        if (e >= 0) layout->send_pair_[size_t(fill[size_t(e)]++)] = t * topk + s;
      }
    }
  }
  layout->send_counts_.assign(size_t(n), 0);
  for (int p = 0; p < n; ++p) {
    for (int e = 0; e < epr; ++e) layout->send_counts_[size_t(p)] += counts_matrix[size_t(p * epr + e)];
  }
  layout->send_displs_ = prefix(layout->send_counts_);

  // Host-side index arrays of the pack, in one upload: [num_send] source token of each sent row,
  // then [num_send] (I32 expert, F32 weight) metadata.
  std::vector<int64_t> pack(static_cast<size_t>(2 * num_send));
  for (int64_t i = 0; i < num_send; ++i) {
    const int64_t pair = layout->send_pair_[size_t(i)];
    pack[size_t(i)] = pair / topk;
    std::memcpy(&pack[size_t(num_send + i)], &expert_ids[pair], 4);
    std::memcpy(reinterpret_cast<uint8_t*>(&pack[size_t(num_send + i)]) + 4, &weights[pair], 4);
  }

  // From here on the exchange is ordered after the compute that produced x.
  mem.wait_compute();
  std::vector<Buffer>& keep = layout->in_flight_;

  // 1. counts: recv_matrix[p][e] = rows peer p sends to my local expert e.
  std::vector<int64_t> recv_matrix(size_t(n) * size_t(epr));
  {
    const size_t bytes = counts_matrix.size() * sizeof(int64_t);
    Buffer counts = mem.alloc(2 * bytes);
    auto* c = static_cast<uint8_t*>(counts.data());
    mem.upload(c, counts_matrix.data(), bytes);
    ep_.all_to_all(c, c + bytes, epr, DType::kI64);
    mem.download(recv_matrix.data(), c + bytes, bytes);
    keep.push_back(std::move(counts));
  }
  layout->recv_counts_.assign(size_t(n), 0);
  for (int p = 0; p < n; ++p) {
    for (int e = 0; e < epr; ++e) layout->recv_counts_[size_t(p)] += recv_matrix[size_t(p * epr + e)];
  }
  layout->recv_displs_ = prefix(layout->recv_counts_);
  const int64_t num_recv = layout->recv_displs_.back() + layout->recv_counts_.back();

  // 2. pack: x (quantized once per token for the FP8 wire), then the metadata, row by row.
  Buffer index = mem.alloc(std::max<size_t>(1, pack.size() * sizeof(int64_t)));
  auto* src_token = static_cast<int64_t*>(index.data());
  mem.upload(src_token, pack.data(), pack.size() * sizeof(int64_t));
  Buffer send = mem.alloc(std::max<size_t>(1, size_t(num_send * row_bytes)));
  auto* sb = static_cast<uint8_t*>(send.data());
  if (config_.fp8_wire) {
    Buffer q = mem.alloc(std::max<size_t>(1, size_t(num_tokens * wire_x)));
    mem.quant_fp8(q.data(), wire_x, x, config_.dtype, num_tokens, config_.hidden);
    mem.gather_rows(sb, row_bytes, q.data(), wire_x, src_token, num_send, wire_x);
    keep.push_back(std::move(q));
  } else {
    mem.gather_rows(sb, row_bytes, x, x_bytes, src_token, num_send, x_bytes);
  }
  mem.gather_rows(sb + wire_x, row_bytes, src_token + num_send, kMetaBytes, nullptr, num_send, kMetaBytes);

  // 3. payload.
  Buffer recv = mem.alloc(std::max<size_t>(1, size_t(num_recv * row_bytes)));
  auto* rb = static_cast<uint8_t*>(recv.data());
  ep_.all_to_allv(sb, scaled(layout->send_counts_, row_bytes), scaled(layout->send_displs_, row_bytes), rb,
                  scaled(layout->recv_counts_, row_bytes), scaled(layout->recv_displs_, row_bytes), DType::kU8);

  // 4. group by local expert: expert e, then source rank p, then the source's order.
  DispatchedBuffers out;
  out.num_rows = num_recv;
  out.expert_offsets.assign(size_t(epr) + 1, 0);
  for (int e = 0; e < epr; ++e) {
    int64_t rows = 0;
    for (int p = 0; p < n; ++p) rows += recv_matrix[size_t(p * epr + e)];
    out.expert_offsets[size_t(e) + 1] = out.expert_offsets[size_t(e)] + rows;
  }
  layout->recv_slot_.assign(size_t(num_recv), 0);
  std::vector<int64_t> arrival_of_slot(static_cast<size_t>(num_recv));
  {
    std::vector<int64_t> base(out.expert_offsets.begin(), out.expert_offsets.end() - 1);
    int64_t k = 0;
    for (int p = 0; p < n; ++p) {
      for (int e = 0; e < epr; ++e) {
        for (int64_t j = 0; j < recv_matrix[size_t(p * epr + e)]; ++j) {
          const int64_t slot = base[size_t(e)]++;
          layout->recv_slot_[size_t(k)] = slot;
          arrival_of_slot[size_t(slot)] = k++;
        }
      }
    }
  }
  Buffer unpack = mem.alloc(std::max<size_t>(1, arrival_of_slot.size() * sizeof(int64_t)));
  auto* arrival = static_cast<int64_t*>(unpack.data());
  mem.upload(arrival, arrival_of_slot.data(), arrival_of_slot.size() * sizeof(int64_t));
  out.rows = mem.alloc(std::max<size_t>(1, size_t(num_recv * x_bytes)));
  out.experts = mem.alloc(std::max<size_t>(1, size_t(num_recv) * 4));
  out.weights = mem.alloc(std::max<size_t>(1, size_t(num_recv) * 4));
  if (config_.fp8_wire) {
    Buffer grouped = mem.alloc(std::max<size_t>(1, size_t(num_recv * wire_x)));
    mem.gather_rows(grouped.data(), wire_x, rb, row_bytes, arrival, num_recv, wire_x);
    mem.dequant_fp8(out.rows.data(), config_.dtype, grouped.data(), wire_x, num_recv, config_.hidden);
    keep.push_back(std::move(grouped));
  } else {
    mem.gather_rows(out.rows.data(), x_bytes, rb, row_bytes, arrival, num_recv, x_bytes);
  }
  mem.gather_rows(out.experts.data(), 4, rb + wire_x, row_bytes, arrival, num_recv, 4);
  mem.gather_rows(out.weights.data(), 4, rb + wire_x + 4, row_bytes, arrival, num_recv, 4);
  keep.push_back(std::move(index));
  keep.push_back(std::move(send));
  keep.push_back(std::move(recv));
  keep.push_back(std::move(unpack));
  return out;
}

void ExpertParallel::wait_dispatch() { memory_->release_compute(); }

DispatchedRows ExpertParallel::dispatch(const void* x, const int32_t* expert_ids, const float* weights,
                                        int64_t num_tokens, DispatchLayout* layout) {
  CHECK(memory_->device() == Device::kHost)
      << "dispatch() takes host rows; EP group '" << ep_.name() << "' is on a device: use dispatch_buffers()";
  DispatchedBuffers b = dispatch_buffers(x, expert_ids, weights, num_tokens, layout);
  wait_dispatch();
  const size_t x_bytes = size_t(config_.hidden) * dtype_size(config_.dtype);
  DispatchedRows out;
  const auto* rows = static_cast<const uint8_t*>(b.rows.data());
  out.rows.assign(rows, rows + size_t(b.num_rows) * x_bytes);
  out.experts.resize(size_t(b.num_rows));
  out.weights.resize(size_t(b.num_rows));
  if (b.num_rows > 0) {
    std::memcpy(out.experts.data(), b.experts.data(), size_t(b.num_rows) * 4);
    std::memcpy(out.weights.data(), b.weights.data(), size_t(b.num_rows) * 4);
  }
  out.expert_offsets = std::move(b.expert_offsets);
  layout->in_flight_.clear();
  return out;
}

void ExpertParallel::combine_buffers(const void* expert_out, DType out_dtype, const DispatchLayout& layout,
                                     const int32_t* expert_ids, const float* weights, bool apply_weights,
                                     float* out) {
  CHECK(out_dtype == DType::kF32 || out_dtype == DType::kBF16)
      << "combine takes F32 or BF16 expert outputs, not " << dtype_name(out_dtype);
  const int topk = config_.topk;
  const int64_t hidden = config_.hidden;
  const int64_t row_bytes = hidden * int64_t(dtype_size(out_dtype));
  const int64_t num_recv = layout.num_recv();
  const int64_t num_send = int64_t(layout.send_pair_.size());
  const int64_t num_tokens = layout.num_tokens_;
  EpMemory& mem = *memory_;

  // Host index arrays in one upload: [num_recv] grouped slot of each arrival (to send the rows
  // back in the order each peer sent them), [num_tokens*topk] returned row of each (token, j) with
  // j in ascending expert id (the single-rank order of spec §6), -1 past the token's experts; then
  // the matching routing weights as F32 when apply_weights.
  const int64_t num_pairs = num_tokens * topk;
  std::vector<int64_t> host(size_t(num_recv + num_pairs + (num_pairs + 1) / 2), 0);
  std::copy(layout.recv_slot_.begin(), layout.recv_slot_.end(), host.begin());
  int64_t* pos = host.data() + num_recv;
  auto* scale = reinterpret_cast<float*>(pos + num_pairs);
  std::vector<int64_t> row_of_pair(static_cast<size_t>(num_pairs), -1);
  for (int64_t i = 0; i < num_send; ++i) row_of_pair[size_t(layout.send_pair_[size_t(i)])] = i;
  std::vector<int> slots(static_cast<size_t>(topk));
  for (int64_t t = 0; t < num_tokens; ++t) {
    int num_slots = 0;
    for (int s = 0; s < topk; ++s) {
      if (expert_ids[t * topk + s] >= 0) slots[size_t(num_slots++)] = s;
    }
    std::sort(slots.begin(), slots.begin() + num_slots,
              [&](int a, int b) { return expert_ids[t * topk + a] < expert_ids[t * topk + b]; });
    for (int j = 0; j < topk; ++j) {
      const int64_t at = t * topk + j;
      if (j < num_slots) {
        const int64_t pair = t * topk + slots[size_t(j)];
        pos[at] = row_of_pair[size_t(pair)];
        CHECK_GE(pos[at], 0) << "no returned row for token " << t;
        scale[at] = weights[pair];
      } else {
        pos[at] = -1;
        scale[at] = 0.f;
      }
    }
  }

  mem.wait_compute();
  Buffer index = mem.alloc(std::max<size_t>(1, host.size() * sizeof(int64_t)));
  auto* dev = static_cast<int64_t*>(index.data());
  mem.upload(dev, host.data(), host.size() * sizeof(int64_t));
  Buffer send = mem.alloc(std::max<size_t>(1, size_t(num_recv * row_bytes)));
  mem.gather_rows(send.data(), row_bytes, expert_out, row_bytes, dev, num_recv, row_bytes);
  Buffer back = mem.alloc(std::max<size_t>(1, size_t(num_send * row_bytes)));
  ep_.all_to_allv(send.data(), scaled(layout.recv_counts_, row_bytes), scaled(layout.recv_displs_, row_bytes),
                  back.data(), scaled(layout.send_counts_, row_bytes), scaled(layout.send_displs_, row_bytes),
                  DType::kU8);
  mem.sum_rows(out, back.data(), out_dtype, dev + num_recv,
               apply_weights ? reinterpret_cast<const float*>(dev + num_recv + num_pairs) : nullptr, num_tokens,
               topk, hidden);
  // The compute stream continues after the sum; the buffers above are freed after it.
  mem.release_compute();
}

void ExpertParallel::combine(const void* expert_out, DType out_dtype, const DispatchLayout& layout,
                             const int32_t* expert_ids, const float* weights, bool apply_weights,
                             float* out) {
  CHECK(memory_->device() == Device::kHost)
      << "combine() takes host rows; EP group '" << ep_.name() << "' is on a device: use combine_buffers()";
  combine_buffers(expert_out, out_dtype, layout, expert_ids, weights, apply_weights, out);
}

}  // namespace v4rt::parallel
