// SPDX-License-Identifier: MIT
// Server metrics in the Prometheus text exposition format (GET /metrics): request and token
// counters, queue depth, running batch, KV memory, the prefix cache's tree, speculative decoding (drafts proposed and
// accepted, tokens per verify step, time drafting and verifying), and histograms of time to first
// token, inter-token latency and tokens per step. Updated from HTTP threads and the engine thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "runtime/prefix_tree.h"

namespace v4rt::runtime {

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}
  void observe(double v);
  // Appends the _bucket / _sum / _count lines of `name`.
  void write(const std::string& name, const std::string& help, std::string* out) const;
  uint64_t count() const;
  double quantile(double q) const;  // from the buckets (upper bound of the bucket holding q)

 private:
  mutable std::mutex mu_;
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket (last: +Inf)
  double sum_ = 0;
  uint64_t total_ = 0;
};

// Gauges the scheduler owns; read under its lock and copied here at every step.
struct SchedulerGauges {
  int64_t num_waiting = 0;
  int64_t num_running = 0;
  int64_t kv_bytes_used = 0;      // running sequences + the prefix tree
  int64_t kv_bytes_budget = 0;
  int64_t kv_blocks_used = 0;     // 64-token blocks of running sequences
  PrefixTreeStats prefix;         // the prefix tree (zero when the cache is off)
};

class Metrics {
 public:
  Metrics();
  // Requests by endpoint and HTTP status.
  void count_request(const std::string& endpoint, int status);
  std::atomic<uint64_t> prompt_tokens{0};
  std::atomic<uint64_t> prefill_tokens{0};         // tokens actually run through the model in prefill
  std::atomic<uint64_t> prefix_reused_tokens{0};   // prompt tokens taken from the prefix cache
  std::atomic<uint64_t> generation_tokens{0};
  std::atomic<uint64_t> steps{0};
  // The compact KV pool of the leader's model (model/kv_pool.h): slab bytes allocated, and the
  // bytes of the blocks sequences hold.
  std::atomic<int64_t> kv_pool_reserved_bytes{0};
  std::atomic<int64_t> kv_pool_used_bytes{0};
  std::atomic<uint64_t> requests_finished{0};
  std::atomic<uint64_t> requests_cancelled{0};
  std::atomic<uint64_t> requests_timed_out{0};
  std::atomic<uint64_t> requests_rejected{0};
  // Speculative decoding (--mtp N): per sequence verify steps, drafts proposed / accepted, tokens
  // decided by the steps (accepted drafts + one each).
  std::atomic<uint64_t> spec_steps{0};
  std::atomic<uint64_t> spec_drafted{0};
  std::atomic<uint64_t> spec_accepted{0};
  std::atomic<uint64_t> spec_emitted{0};
  // Wall time of the draft plans and of the verify plans.
  void add_spec_time(double draft_s, double verify_s);
  void spec_time(double* draft_s, double* verify_s) const;
  Histogram ttft_s;
  Histogram itl_s;
  Histogram step_tokens;
  Histogram step_sequences;

  void set_gauges(const SchedulerGauges& g);
  SchedulerGauges gauges() const;
  std::string prometheus_text() const;

 private:
  mutable std::mutex mu_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;
  SchedulerGauges gauges_;
  double spec_draft_s_ = 0;
  double spec_verify_s_ = 0;
};

}  // namespace v4rt::runtime
