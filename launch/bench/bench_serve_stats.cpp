// SPDX-License-Identifier: MIT
// `v4rt bench serve` without a server: prompts, arrival times, the SSE reader, percentiles, the
// per-level summary, its JSON line and table row (definitions in bench_serve.h).
#include "launch/bench/bench_serve.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>

#include "common/check.h"

namespace v4rt::launch::bench_serve {

// ---- prompts ----------------------------------------------------------------------------------

std::vector<std::vector<int32_t>> random_prompts(int num_prompts, int input_len, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> id(kFirstRandomId, kEndRandomId - 1);
  std::vector<std::vector<int32_t>> out(size_t(std::max(num_prompts, 0)));
  for (auto& p : out) {
    p.resize(size_t(input_len));
    for (int32_t& t : p) t = id(rng);
  }
  return out;
}

std::vector<std::vector<int32_t>> corpus_prompts(const std::vector<int32_t>& corpus, int num_prompts,
                                                 int input_len, uint64_t seed) {
  V4RT_REQUIRE(!corpus.empty(), "the prompt file holds no tokens");
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<size_t> offset(0, corpus.size() - 1);
  std::vector<std::vector<int32_t>> out(size_t(std::max(num_prompts, 0)));
  for (auto& p : out) {
    size_t at = offset(rng);
    p.resize(size_t(input_len));
    for (int32_t& t : p) {
      t = corpus[at];
      at = (at + 1) % corpus.size();
    }
  }
  return out;
}

std::vector<double> arrival_times(int num_prompts, double request_rate, uint64_t seed) {
  std::vector<double> out(size_t(std::max(num_prompts, 0)), 0.0);
  if (!std::isfinite(request_rate)) return out;
  std::mt19937_64 rng(seed);
  std::exponential_distribution<double> gap(request_rate);
  double t = 0;
  for (double& a : out) {
    a = t;
    t += gap(rng);
  }
  return out;
}

// ---- server-sent events -----------------------------------------------------------------------

void SseReader::feed(std::string_view bytes, const std::function<void(std::string_view)>& on_data) {
  pending_.append(bytes);
  size_t begin = 0;
  for (size_t nl; (nl = pending_.find('\n', begin)) != std::string::npos; begin = nl + 1) {
    std::string_view line(pending_.data() + begin, nl - begin);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.substr(0, 5) != "data:") continue;  // blank separators, comments, other fields
    line.remove_prefix(5);
    if (!line.empty() && line.front() == ' ') line.remove_prefix(1);
    on_data(line);
  }
  pending_.erase(0, begin);
}

// ---- results ----------------------------------------------------------------------------------

double percentile(std::vector<double> values, double q) {
  if (values.empty()) return std::numeric_limits<double>::quiet_NaN();
  std::sort(values.begin(), values.end());
  const double rank = std::clamp(q, 0.0, 100.0) / 100.0 * double(values.size() - 1);
  const size_t lo = size_t(std::floor(rank));
  const size_t hi = std::min(lo + 1, values.size() - 1);
  return values[lo] + (rank - double(lo)) * (values[hi] - values[lo]);
}

Percentiles percentiles_of(const std::vector<double>& values) {
  Percentiles p;
  p.count = values.size();
  if (values.empty()) return p;
  p.mean = std::accumulate(values.begin(), values.end(), 0.0) / double(values.size());
  p.p50 = percentile(values, 50);
  p.p90 = percentile(values, 90);
  p.p99 = percentile(values, 99);
  p.max = *std::max_element(values.begin(), values.end());
  return p;
}

LevelSummary summarize(const std::vector<RequestResult>& results, double duration_s, int output_len, int gpus) {
  LevelSummary s;
  s.num_prompts = int(results.size());
  s.duration_s = duration_s;
  s.gpus = std::max(gpus, 1);
  std::vector<double> ttft, tpot, itl, e2el;
  for (const RequestResult& r : results) {
    if (!r.sent) {
      ++s.not_sent;
      continue;
    }
    if (!r.ok) {
      ++s.failed;
      ++s.errors[r.error.empty() ? "unknown error" : r.error];
      continue;
    }
    ++s.completed;
    s.input_tokens += r.prompt_tokens;
    s.output_tokens += r.output_tokens;
    if (r.output_tokens != output_len) ++s.output_len_mismatch;
    e2el.push_back(r.latency_s * 1e3);
    if (r.ttft_s >= 0) {
      ttft.push_back(r.ttft_s * 1e3);
      if (r.output_tokens > 1) tpot.push_back((r.latency_s - r.ttft_s) * 1e3 / double(r.output_tokens - 1));
    }
    for (double g : r.itl_s) itl.push_back(g * 1e3);
  }
  if (duration_s > 0) {
    s.request_throughput = s.completed / duration_s;
    s.input_tok_s = double(s.input_tokens) / duration_s;
    s.output_tok_s = double(s.output_tokens) / duration_s;
    s.total_tok_s = s.input_tok_s + s.output_tok_s;
  }
  s.ttft_ms = percentiles_of(ttft);
  s.tpot_ms = percentiles_of(tpot);
  s.itl_ms = percentiles_of(itl);
  s.e2el_ms = percentiles_of(e2el);
  return s;
}

namespace {

nlohmann::json number_or_null(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

void put_percentiles(nlohmann::json* j, const char* name, const Percentiles& p) {
  const std::string n = name;
  (*j)[n + "_mean_ms"] = number_or_null(p.mean);
  (*j)[n + "_p50_ms"] = number_or_null(p.p50);
  (*j)[n + "_p90_ms"] = number_or_null(p.p90);
  (*j)[n + "_p99_ms"] = number_or_null(p.p99);
  (*j)[n + "_count"] = p.count;
}

std::string ms_pair(const Percentiles& p) {
  if (p.count == 0) return "-";
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.1f/%.1f", p.p50, p.p99);
  return buf;
}

}  // namespace

nlohmann::json level_json(const RunInfo& run, const LevelSummary& s) {
  nlohmann::json j;
  j["bench"] = "serve";
  j["date"] = run.date;
  j["label"] = run.label;
  j["url"] = run.url;
  j["model"] = run.model;
  j["ranks"] = run.ranks;
  j["gpus"] = s.gpus;
  j["dataset"] = run.dataset;
  j["seed"] = run.seed;
  j["input_len"] = run.input_len;
  j["output_len"] = run.output_len;
  j["stream"] = run.stream;
  j["concurrency"] = s.concurrency;
  j["request_rate"] = number_or_null(s.request_rate);  // null: infinite (all at once)
  j["num_prompts"] = s.num_prompts;
  j["completed"] = s.completed;
  j["failed"] = s.failed;
  j["not_sent"] = s.not_sent;
  j["errors"] = s.errors;
  j["output_len_mismatch"] = s.output_len_mismatch;
  j["time_limit_hit"] = s.time_limit_hit;
  j["duration_s"] = s.duration_s;
  j["total_input_tokens"] = s.input_tokens;
  j["total_output_tokens"] = s.output_tokens;
  j["request_throughput"] = s.request_throughput;
  j["input_tok_s"] = s.input_tok_s;
  j["output_tok_s"] = s.output_tok_s;
  j["total_tok_s"] = s.total_tok_s;
  j["input_tok_s_per_gpu"] = s.input_tok_s / s.gpus;
  j["output_tok_s_per_gpu"] = s.output_tok_s / s.gpus;
  j["total_tok_s_per_gpu"] = s.total_tok_s / s.gpus;
  put_percentiles(&j, "ttft", s.ttft_ms);
  put_percentiles(&j, "tpot", s.tpot_ms);
  put_percentiles(&j, "itl", s.itl_ms);
  put_percentiles(&j, "e2el", s.e2el_ms);
  return j;
}

std::string table_header() {
  char buf[512];
  std::snprintf(buf, sizeof(buf), "%6s %6s %6s %6s %8s %8s %10s %10s %10s %10s %10s %14s %14s %14s %14s\n", "conc",
                "done", "failed", "unsent", "dur_s", "req/s", "in_tok/s", "out_tok/s", "tot_tok/s", "out/GPU",
                "tot/GPU", "TTFT p50/p99", "TPOT p50/p99", "ITL p50/p99", "E2E p50/p99");
  return buf;
}

std::string table_row(const LevelSummary& s) {
  char buf[512];
  std::snprintf(buf, sizeof(buf), "%6d %6d %6d %6d %8.2f %8.3f %10.1f %10.1f %10.1f %10.1f %10.1f %14s %14s %14s %14s\n",
                s.concurrency, s.completed, s.failed, s.not_sent, s.duration_s, s.request_throughput, s.input_tok_s,
                s.output_tok_s, s.total_tok_s, s.output_tok_s / s.gpus, s.total_tok_s / s.gpus,
                ms_pair(s.ttft_ms).c_str(), ms_pair(s.tpot_ms).c_str(), ms_pair(s.itl_ms).c_str(),
                ms_pair(s.e2el_ms).c_str());
  return buf;
}

}  // namespace v4rt::launch::bench_serve
