// SPDX-License-Identifier: MIT
// Metrics and their Prometheus text rendering (names prefixed v4rt_, seconds for times).
#include "runtime/metrics.h"

#include <cmath>
#include <sstream>

namespace v4rt::runtime {

namespace {

std::string fmt(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  std::ostringstream os;
  os.precision(10);
  os << v;
  return os.str();
}

void write_counter(const std::string& name, const std::string& help, uint64_t v, std::string* out) {
  *out += "# HELP " + name + " " + help + "\n# TYPE " + name + " counter\n" + name + " " + std::to_string(v) + "\n";
}

void write_gauge(const std::string& name, const std::string& help, int64_t v, std::string* out) {
  *out += "# HELP " + name + " " + help + "\n# TYPE " + name + " gauge\n" + name + " " + std::to_string(v) + "\n";
}

void write_gauge(const std::string& name, const std::string& help, double v, std::string* out) {
  *out += "# HELP " + name + " " + help + "\n# TYPE " + name + " gauge\n" + name + " " + fmt(v) + "\n";
}

}  // namespace

void Histogram::observe(double v) {
  std::lock_guard<std::mutex> lock(mu_);
  size_t i = 0;
  while (i < bounds_.size() && v > bounds_[i]) ++i;
  ++counts_[i];
  sum_ += v;
  ++total_;
}

uint64_t Histogram::count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return total_;
}

double Histogram::quantile(double q) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (total_ == 0) return 0;
  const double target = q * double(total_);
  uint64_t acc = 0;
  for (size_t i = 0; i < counts_.size(); ++i) {
    acc += counts_[i];
    if (double(acc) >= target) return i < bounds_.size() ? bounds_[i] : INFINITY;
  }
  return INFINITY;
}

void Histogram::write(const std::string& name, const std::string& help, std::string* out) const {
  std::lock_guard<std::mutex> lock(mu_);
  *out += "# HELP " + name + " " + help + "\n# TYPE " + name + " histogram\n";
  uint64_t acc = 0;
  for (size_t i = 0; i < counts_.size(); ++i) {
    acc += counts_[i];
    const std::string le = i < bounds_.size() ? fmt(bounds_[i]) : "+Inf";
    *out += name + "_bucket{le=\"" + le + "\"} " + std::to_string(acc) + "\n";
  }
  *out += name + "_sum " + fmt(sum_) + "\n" + name + "_count " + std::to_string(total_) + "\n";
}

Metrics::Metrics()
    : ttft_s({0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}),
      itl_s({0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}),
      step_tokens({1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096}),
      step_sequences({1, 2, 4, 8, 16, 32, 64, 128, 256}) {}

void Metrics::count_request(const std::string& endpoint, int status) {
  std::lock_guard<std::mutex> lock(mu_);
  ++requests_[{endpoint, status}];
}

void Metrics::set_gauges(const SchedulerGauges& g) {
  std::lock_guard<std::mutex> lock(mu_);
  gauges_ = g;
}

SchedulerGauges Metrics::gauges() const {
  std::lock_guard<std::mutex> lock(mu_);
  return gauges_;
}

void Metrics::add_spec_time(double draft_s, double verify_s) {
  std::lock_guard<std::mutex> lock(mu_);
  spec_draft_s_ += draft_s;
  spec_verify_s_ += verify_s;
}

void Metrics::spec_time(double* draft_s, double* verify_s) const {
  std::lock_guard<std::mutex> lock(mu_);
  *draft_s = spec_draft_s_;
  *verify_s = spec_verify_s_;
}

std::string Metrics::prometheus_text() const {
  std::string out;
  {
    std::lock_guard<std::mutex> lock(mu_);
    out += "# HELP v4rt_requests_total HTTP requests by endpoint and status\n# TYPE v4rt_requests_total counter\n";
    for (const auto& [key, n] : requests_)
      out += "v4rt_requests_total{endpoint=\"" + key.first + "\",status=\"" + std::to_string(key.second) + "\"} " +
             std::to_string(n) + "\n";
  }
  write_counter("v4rt_prompt_tokens_total", "Prompt tokens of admitted requests", prompt_tokens, &out);
  write_counter("v4rt_prefill_tokens_total", "Prompt tokens run through the model", prefill_tokens, &out);
  write_counter("v4rt_prefix_reused_tokens_total", "Prompt tokens taken from the prefix cache", prefix_reused_tokens, &out);
  write_counter("v4rt_generation_tokens_total", "Generated tokens", generation_tokens, &out);
  write_counter("v4rt_steps_total", "Model steps", steps, &out);
  write_counter("v4rt_requests_finished_total", "Generations that ended normally (stop or length)", requests_finished, &out);
  write_counter("v4rt_requests_cancelled_total", "Generations cancelled (client gone)", requests_cancelled, &out);
  write_counter("v4rt_requests_timed_out_total", "Generations stopped by the request timeout", requests_timed_out, &out);
  write_counter("v4rt_requests_rejected_total", "Requests refused at admission (queue full, too large)", requests_rejected, &out);
  const uint64_t steps = spec_steps, drafted = spec_drafted, accepted = spec_accepted, emitted = spec_emitted;
  write_counter("v4rt_spec_verify_steps_total", "Speculative verify steps (one per sequence and step)", steps, &out);
  write_counter("v4rt_spec_draft_tokens_total", "Draft tokens proposed by the MTP block", drafted, &out);
  write_counter("v4rt_spec_accepted_tokens_total", "Draft tokens accepted by verification", accepted, &out);
  write_counter("v4rt_spec_emitted_tokens_total", "Tokens decided by verify steps (accepted drafts + one each)", emitted, &out);
  write_gauge("v4rt_spec_acceptance_rate", "Accepted over proposed draft tokens since start",
              drafted ? double(accepted) / double(drafted) : 0.0, &out);
  write_gauge("v4rt_spec_tokens_per_step", "Tokens per verify step since start",
              steps ? double(emitted) / double(steps) : 0.0, &out);
  {
    std::lock_guard<std::mutex> lock(mu_);
    out += "# HELP v4rt_spec_draft_seconds_total Wall time of the draft plans\n# TYPE v4rt_spec_draft_seconds_total counter\n";
    out += "v4rt_spec_draft_seconds_total " + fmt(spec_draft_s_) + "\n";
    out += "# HELP v4rt_spec_verify_seconds_total Wall time of the verify plans\n# TYPE v4rt_spec_verify_seconds_total counter\n";
    out += "v4rt_spec_verify_seconds_total " + fmt(spec_verify_s_) + "\n";
  }
  const SchedulerGauges g = gauges();
  write_gauge("v4rt_queue_depth", "Requests waiting for admission", g.num_waiting, &out);
  write_gauge("v4rt_running_sequences", "Sequences in the running batch", g.num_running, &out);
  write_gauge("v4rt_kv_bytes_used", "KV/state bytes charged to running sequences and the prefix tree", g.kv_bytes_used, &out);
  write_gauge("v4rt_kv_bytes_budget", "KV/state byte budget", g.kv_bytes_budget, &out);
  write_gauge("v4rt_kv_blocks_used", "64-token blocks held by running sequences", g.kv_blocks_used, &out);
  write_gauge("v4rt_kv_pool_reserved_bytes", "Compact KV pool: slab bytes allocated on the device", kv_pool_reserved_bytes.load(), &out);
  write_gauge("v4rt_kv_pool_used_bytes", "Compact KV pool: bytes of the blocks sequences hold", kv_pool_used_bytes.load(), &out);
  const PrefixTreeStats& p = g.prefix;
  write_counter("v4rt_prefix_cache_lookups_total", "Admitted requests looked up in the prefix tree", uint64_t(p.lookups), &out);
  write_counter("v4rt_prefix_cache_hits_total", "Lookups that resumed from a prefix point", uint64_t(p.hits), &out);
  write_counter("v4rt_prefix_cache_reused_tokens_total", "Prompt tokens resumed from prefix points", uint64_t(p.reused_tokens), &out);
  write_gauge("v4rt_prefix_cache_bytes", "Bytes the prefix tree holds (points and entry blocks)", p.bytes, &out);
  write_gauge("v4rt_prefix_cache_points", "Resumable points held", p.points, &out);
  write_gauge("v4rt_prefix_cache_blocks", "Entry blocks held", p.blocks, &out);
  write_counter("v4rt_prefix_cache_evicted_points_total", "Prefix points evicted (least recently used)", uint64_t(p.evicted_points), &out);
  write_counter("v4rt_prefix_cache_evicted_bytes_total", "Bytes evicted from the prefix tree", uint64_t(p.evicted_bytes), &out);
  ttft_s.write("v4rt_time_to_first_token_seconds", "Arrival to first generated token", &out);
  itl_s.write("v4rt_inter_token_latency_seconds", "Time between consecutive generated tokens", &out);
  step_tokens.write("v4rt_batch_tokens", "Tokens per model step (prefill chunks + decode)", &out);
  step_sequences.write("v4rt_batch_sequences", "Sequences per model step", &out);
  return out;
}

}  // namespace v4rt::runtime
