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

float load_f32(const uint8_t* p, DType dtype) {
  if (dtype == DType::kF32) {
    float f;
    std::memcpy(&f, p, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, p, 2);
  return bf16_to_f32(h);
}

}  // namespace

ExpertParallel::ExpertParallel(cluster::Comm& ep, const EpConfig& config) : ep_(ep), config_(config) {
  CHECK_GT(config.num_experts, 0);
  CHECK_GT(config.hidden, 0);
  CHECK_GT(config.topk, 0);
  CHECK_EQ(config.num_experts % ep.size(), 0)
      << "EP group of " << ep.size() << " ranks cannot hold " << config.num_experts << " experts";
  experts_per_rank_ = config.num_experts / ep.size();
}

DispatchedRows ExpertParallel::dispatch(const void* x, const int32_t* expert_ids,
                                        const float* weights, int64_t num_tokens,
                                        DispatchLayout* layout) {
  const int n = ep_.size();
  const int epr = experts_per_rank_;
  const int topk = config_.topk;
  const int64_t x_bytes = config_.hidden * int64_t(dtype_size(config_.dtype));
  const int64_t row_bytes = x_bytes + kMetaBytes;
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
  std::vector<uint8_t> send(size_t(num_send * row_bytes));
  const auto* xb = static_cast<const uint8_t*>(x);
  for (int64_t i = 0; i < num_send; ++i) {
    const int64_t pair = layout->send_pair_[size_t(i)];
    uint8_t* row = send.data() + i * row_bytes;
    std::memcpy(row, xb + (pair / topk) * x_bytes, size_t(x_bytes));
    std::memcpy(row + x_bytes, &expert_ids[pair], 4);
    std::memcpy(row + x_bytes + 4, &weights[pair], 4);
  }
  layout->send_counts_.assign(size_t(n), 0);
  for (int p = 0; p < n; ++p) {
    for (int e = 0; e < epr; ++e) layout->send_counts_[size_t(p)] += counts_matrix[size_t(p * epr + e)];
  }
  layout->send_displs_ = prefix(layout->send_counts_);

  // 1. counts: recv_matrix[p][e] = rows peer p sends to my local expert e.
  std::vector<int64_t> recv_matrix(size_t(n) * size_t(epr));
  ep_.all_to_all(counts_matrix.data(), recv_matrix.data(), epr, DType::kI64);
  layout->recv_counts_.assign(size_t(n), 0);
  for (int p = 0; p < n; ++p) {
    for (int e = 0; e < epr; ++e) layout->recv_counts_[size_t(p)] += recv_matrix[size_t(p * epr + e)];
  }
  layout->recv_displs_ = prefix(layout->recv_counts_);
  const int64_t num_recv = layout->recv_displs_.back() + layout->recv_counts_.back();

  // 2. payload.
  std::vector<uint8_t> recv(size_t(num_recv * row_bytes));
  ep_.all_to_allv(send.data(), scaled(layout->send_counts_, row_bytes),
                  scaled(layout->send_displs_, row_bytes), recv.data(),
                  scaled(layout->recv_counts_, row_bytes), scaled(layout->recv_displs_, row_bytes),
                  DType::kU8);

  // Group by local expert: expert e, then source rank p, then the source's order.
  DispatchedRows out;
  out.expert_offsets.assign(size_t(epr) + 1, 0);
  for (int e = 0; e < epr; ++e) {
    int64_t rows = 0;
    for (int p = 0; p < n; ++p) rows += recv_matrix[size_t(p * epr + e)];
    out.expert_offsets[size_t(e) + 1] = out.expert_offsets[size_t(e)] + rows;
  }
  layout->recv_slot_.assign(size_t(num_recv), 0);
  {
    std::vector<int64_t> base(out.expert_offsets.begin(), out.expert_offsets.end() - 1);
    int64_t k = 0;
    for (int p = 0; p < n; ++p) {
      for (int e = 0; e < epr; ++e) {
        for (int64_t j = 0; j < recv_matrix[size_t(p * epr + e)]; ++j) {
          layout->recv_slot_[size_t(k++)] = base[size_t(e)]++;
        }
      }
    }
  }
  out.rows.resize(size_t(num_recv * x_bytes));
  out.experts.resize(size_t(num_recv));
  out.weights.resize(size_t(num_recv));
  for (int64_t k = 0; k < num_recv; ++k) {
    const int64_t slot = layout->recv_slot_[size_t(k)];
    const uint8_t* row = recv.data() + k * row_bytes;
    std::memcpy(out.rows.data() + slot * x_bytes, row, size_t(x_bytes));
    std::memcpy(&out.experts[size_t(slot)], row + x_bytes, 4);
    std::memcpy(&out.weights[size_t(slot)], row + x_bytes + 4, 4);
    DCHECK_EQ(out.experts[size_t(slot)] / epr, ep_.rank());
  }
  return out;
}

void ExpertParallel::combine(const void* expert_out, DType out_dtype, const DispatchLayout& layout,
                             const int32_t* expert_ids, const float* weights, bool apply_weights,
                             float* out) {
  CHECK(out_dtype == DType::kF32 || out_dtype == DType::kBF16)
      << "combine takes F32 or BF16 expert outputs, not " << dtype_name(out_dtype);
  const int topk = config_.topk;
  const int64_t hidden = config_.hidden;
  const int64_t row_bytes = hidden * int64_t(dtype_size(out_dtype));
  const int64_t num_recv = layout.num_recv();
  const int64_t num_send = int64_t(layout.send_pair_.size());

  // Back in the order the rows arrived, so each peer receives them in the order it sent them.
  std::vector<uint8_t> send(size_t(num_recv * row_bytes));
  const auto* src = static_cast<const uint8_t*>(expert_out);
  for (int64_t k = 0; k < num_recv; ++k) {
    std::memcpy(send.data() + k * row_bytes, src + layout.recv_slot_[size_t(k)] * row_bytes,
                size_t(row_bytes));
  }
  std::vector<uint8_t> back(size_t(num_send * row_bytes));
  ep_.all_to_allv(send.data(), scaled(layout.recv_counts_, row_bytes),
                  scaled(layout.recv_displs_, row_bytes), back.data(),
                  scaled(layout.send_counts_, row_bytes), scaled(layout.send_displs_, row_bytes),
                  DType::kU8);

  std::vector<int64_t> row_of_pair(size_t(layout.num_tokens_) * size_t(topk), -1);
  for (int64_t i = 0; i < num_send; ++i) row_of_pair[size_t(layout.send_pair_[size_t(i)])] = i;
  std::vector<int> slots(static_cast<size_t>(topk));
  for (int64_t t = 0; t < layout.num_tokens_; ++t) {
    float* acc = out + t * hidden;
    std::fill(acc, acc + hidden, 0.f);
    // Ascending expert id, as the single-rank loop of spec §6.
    int num_slots = 0;
    for (int s = 0; s < topk; ++s) {
      if (expert_ids[t * topk + s] >= 0) slots[size_t(num_slots++)] = s;
    }
    std::sort(slots.begin(), slots.begin() + num_slots,
              [&](int a, int b) { return expert_ids[t * topk + a] < expert_ids[t * topk + b]; });
    for (int j = 0; j < num_slots; ++j) {
      const int64_t pair = t * topk + slots[size_t(j)];
      const int64_t i = row_of_pair[size_t(pair)];
      CHECK_GE(i, 0) << "no returned row for token " << t;
      const uint8_t* row = back.data() + i * row_bytes;
      const float w = apply_weights ? weights[pair] : 1.f;
      const int64_t esize = int64_t(dtype_size(out_dtype));
      for (int64_t c = 0; c < hidden; ++c) {
        const float v = load_f32(row + c * esize, out_dtype);
        acc[c] += apply_weights ? v * w : v;
      }
    }
  }
}

}  // namespace v4rt::parallel
