// SPDX-License-Identifier: MIT
// `v4rt bench serve`: the serving benchmark other engines publish (vLLM / SGLang bench_serving), run
// as a client of a running `v4rt serve`. This header holds the parts that need no server: the
// prompts (random token ids or windows of a tokenized text file), the SSE reader, the per-request
// record and the per-concurrency summary (percentiles, throughputs, failures) with its JSON line.
// bench_serve_stats.cpp implements them; bench_serve.cpp drives the HTTP requests and the CLI.
//
// Definitions (as vLLM's benchmark_serving):
//   TTFT  time from sending the request to the first streamed chunk that carries text
//   TPOT  per request, (latency - TTFT) / (output tokens - 1), requests with > 1 output token
//   ITL   gaps between successive text-carrying chunks, pooled over requests (a chunk may carry
//         more than one token when the server emits several between two reads)
//   E2EL  end-to-end latency of a request
//   throughput  tokens of completed requests / wall time of the level (first send to last end)
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace v4rt::launch::bench_serve {

// ---- prompts ----------------------------------------------------------------------------------

// Token ids the random prompts draw from: the ordinary byte-level BPE tokens (above BOS / EOS /
// PAD, below the added special tokens), so a prompt never holds a control token.
inline constexpr int32_t kFirstRandomId = 3;
inline constexpr int32_t kEndRandomId = 128000;

// `num_prompts` prompts of `input_len` ids drawn uniformly from [kFirstRandomId, kEndRandomId)
// with std::mt19937_64(seed): the same seed gives the same prompts.
std::vector<std::vector<int32_t>> random_prompts(int num_prompts, int input_len, uint64_t seed);
// `num_prompts` windows of `input_len` consecutive ids of `corpus` (a tokenized text file) at
// offsets drawn with `seed`, wrapping around the end. Throws v4rt::Error when the corpus is empty.
std::vector<std::vector<int32_t>> corpus_prompts(const std::vector<int32_t>& corpus, int num_prompts,
                                                 int input_len, uint64_t seed);
// Send times (seconds from the start of a level) of `num_prompts` requests: all 0 for an infinite
// rate, else a Poisson process of `request_rate` per second (exponential gaps drawn with `seed`).
std::vector<double> arrival_times(int num_prompts, double request_rate, uint64_t seed);

// ---- server-sent events -----------------------------------------------------------------------

// Splits a byte stream into SSE events and hands over the payload of every `data:` line; comment
// lines (`: keepalive`) and other fields are skipped. Bytes may arrive cut anywhere.
class SseReader {
 public:
  void feed(std::string_view bytes, const std::function<void(std::string_view data)>& on_data);

 private:
  std::string pending_;  // bytes after the last complete line
};

// ---- results ----------------------------------------------------------------------------------

struct RequestResult {
  bool sent = false;             // false: the level ended (time limit) before it was sent
  bool ok = false;
  std::string error;             // why it failed: HTTP status and message, transport error, time limit
  int64_t prompt_tokens = 0;     // usage.prompt_tokens (the ids sent when the server did not say)
  int64_t output_tokens = 0;     // usage.completion_tokens
  double start_s = 0;            // send time, seconds from the start of the level
  double latency_s = 0;          // end to end
  double ttft_s = -1;            // streaming only; < 0 when unknown
  std::vector<double> itl_s;     // streaming only
};

struct Percentiles {
  size_t count = 0;
  double mean = std::numeric_limits<double>::quiet_NaN();
  double p50 = std::numeric_limits<double>::quiet_NaN();
  double p90 = std::numeric_limits<double>::quiet_NaN();
  double p99 = std::numeric_limits<double>::quiet_NaN();
  double max = std::numeric_limits<double>::quiet_NaN();
};

// Linear interpolation between closest ranks (numpy's default); q in [0, 100]. NaN when empty.
double percentile(std::vector<double> values, double q);
Percentiles percentiles_of(const std::vector<double>& values);

// What one concurrency level measured. Counts: completed + failed + not_sent == num_prompts.
struct LevelSummary {
  int concurrency = 0;
  double request_rate = 0;       // requests/s offered; infinity: all at once (bounded by concurrency)
  int num_prompts = 0;
  int completed = 0;
  int failed = 0;                // sent and not completed (HTTP error, transport error, time limit)
  int not_sent = 0;              // never sent: the level hit its time limit first
  std::map<std::string, int> errors;  // failure reason -> count
  int output_len_mismatch = 0;   // completed requests whose output length differs from output_len
  bool time_limit_hit = false;
  double duration_s = 0;
  int64_t input_tokens = 0;      // of completed requests
  int64_t output_tokens = 0;     // of completed requests
  double request_throughput = 0; // completed requests / s
  double input_tok_s = 0, output_tok_s = 0, total_tok_s = 0;
  int gpus = 1;
  Percentiles ttft_ms, tpot_ms, itl_ms, e2el_ms;
};

// Summarizes one level. `output_len` is the requested output length (for the mismatch count).
LevelSummary summarize(const std::vector<RequestResult>& results, double duration_s, int output_len, int gpus);

// What every JSON line of a run repeats (the settings), merged with each level's figures.
struct RunInfo {
  std::string url, model, label, dataset, date;
  int ranks = 0, input_len = 0, output_len = 0;
  bool stream = true;
  uint64_t seed = 0;
};

// One JSON object per level, flat keys (scripts/scaling/plot_serve.py reads them): settings, counts,
// errors, throughputs (and per GPU), ttft/tpot/itl/e2el mean, p50, p90, p99 in ms (null when not
// measured, e.g. TTFT without streaming).
nlohmann::json level_json(const RunInfo& run, const LevelSummary& s);

// The table: a header, then one row per level.
std::string table_header();
std::string table_row(const LevelSummary& s);

}  // namespace v4rt::launch::bench_serve
