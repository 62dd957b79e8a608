// SPDX-License-Identifier: MIT
// Continuous batching (rank 0). Requests wait in a queue (higher priority first, FIFO within a
// priority), are admitted while their KV memory fits the budget (evicting prefix-cache points,
// least recently used first), and every step packs the decode token of each running sequence and
// then prefill chunks under a token budget into one StepPlan.
//
// Prefix cache (docs/PREFIX_CACHE.md): a PrefixTree over token ids names resumable points. A new
// request resumes from the longest point its prompt extends (PlanResume) and pins it until it
// finishes; its prefill chunks end at its planned points (the prompt's last token but one, every
// message boundary, every `every_n` tokens), each inserted into the tree right after its chunk
// (PlanStore); a finished sequence adds the point at its end. A request whose prompt extends a
// point another request is still computing waits for it (InFlightPoints). Tree bytes and running
// states share the KV budget; evicted points are dropped on every rank (PlanFree). After the step, complete() samples
// the next tokens from the logits, streams them to the requests and finishes sequences at EOS, the
// token limit, cancellation (client gone) or the request timeout. A request that could never fit
// is refused at submit(), never left waiting. The scheduler knows nothing of text or HTTP.
//
// Speculative decoding (mtp_depth N > 0, model/speculative.h): a step of the decoding sequences
// takes N + 1 plans. Plan 1 carries the last verdicts, releases, copies and draft level 1 of
// every decoding sequence; plans 2..N one draft level each (the drafts are picked from the MTP
// logits in complete()); the last plan carries a verify chunk [next, d1..dN] per sequence and
// the prompt chunks of the others. complete() accepts a prefix of each sequence's drafts (exact
// for greedy, rejection sampling otherwise), streams the tokens and sends the verdicts with the
// next plan. Every other chunk feeds the MTP block (ChunkKind::kHidden).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "runtime/metrics.h"
#include "runtime/prefix_tree.h"
#include "runtime/step_plan.h"
#include "model/config.h"
#include "model/sampler.h"
#include "model/speculative.h"
#include "model/state.h"

namespace v4rt::runtime {

using Clock = std::chrono::steady_clock;

struct SamplingParams {
  double temperature = 1.0;
  double top_p = 1.0;
  uint64_t seed = 0;
  int max_tokens = 16;
  int top_logprobs = 0;        // alternatives per token (with logprobs)
  bool logprobs = false;
  bool forced = false;         // test hook: emit forced_tokens then EOS instead of sampling
  bool ignore_eos = false;     // EOS is an ordinary token: the generation ends at max_tokens
  std::vector<int32_t> forced_tokens;
};

struct TokenEvent {
  int32_t token = 0;
  float logprob = 0;                             // when logprobs were requested
  std::vector<std::pair<int32_t, float>> top;    // top_logprobs alternatives, best first
};

enum class FinishReason { kNone, kEos, kLength, kCancelled, kTimeout, kError };
const char* finish_reason_name(FinishReason r);

// Engine -> request handler: generated tokens and the end of the generation. Thread-safe.
class TokenStream {
 public:
  void push(TokenEvent event);
  void finish(FinishReason reason, std::string message = "");
  // Waits up to `timeout` for tokens or the end; moves the new tokens into `out` and returns the
  // finish reason (kNone while running).
  FinishReason wait(std::vector<TokenEvent>* out, std::chrono::milliseconds timeout, std::string* message = nullptr);
  // The client went away or no longer wants tokens (e.g. a stop string matched).
  void cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }

  // Set by the scheduler at admission (before the first token).
  std::atomic<int64_t> prompt_tokens{0};
  std::atomic<int64_t> cached_tokens{0};

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<TokenEvent> pending_;
  FinishReason reason_ = FinishReason::kNone;
  std::string message_;
  std::atomic<bool> cancelled_{false};
};

struct Request {
  uint64_t id = 0;
  int priority = 0;                 // higher first
  std::vector<int32_t> prompt;
  // Prompt positions where a chat message ends (increasing; model/text/chat_encoder.h): resumable
  // points for requests that share the conversation up to there. Empty for raw prompts.
  std::vector<int64_t> boundaries;
  SamplingParams sampling;
  Clock::time_point arrival = Clock::now();
  Clock::time_point deadline = Clock::time_point::max();
  std::shared_ptr<TokenStream> stream = std::make_shared<TokenStream>();
};

struct PrefixCacheOptions {
  bool enabled = true;
  int64_t block_tokens = 256;     // entry block size (a multiple of every compress ratio)
  int64_t every_n = 4096;         // a resumable point every N prompt tokens; 0: none
  double budget_fraction = 0.5;   // most of the KV budget the tree may hold, in (0, 1]
};

struct SchedulerOptions {
  int max_batch_tokens = 256;
  int max_running = 32;
  int max_queue = 64;
  int64_t kv_budget_bytes = int64_t(1) << 30;
  PrefixCacheOptions prefix_cache;
  // The format the model's states keep entries and keys in (Model::kv_storage; the Engine sets
  // it): admission and the prefix tree charge its bytes.
  model::KvStorage kv_storage = model::KvStorage::kF32;
  int32_t eos_token_id = 1;
  int mtp_depth = 0;  // draft tokens per verify step; 0: no speculative decoding
  int prefill_chunk = 0;  // most prompt tokens of one sequence per step; 0: the step budget alone
  // Draw tokens on the device (Backend::sample through kSampleLast chunks): only ids and the asked
  // logprobs reach the host. Requests that decode speculatively or emit forced output keep the
  // host sampler (model::Sampler), which stays the reference.
  bool device_sampling = false;
};


// Counts the wall time of a plan the engine ran: a plan of draft levels as drafting, one with
// verify chunks as verifying (others are not speculative).
void record_plan_time(const StepPlan& plan, double seconds, Metrics* metrics);
// The speculative totals of `metrics` (the scheduler's counters and the recorded plan times).
model::SpeculativeStats speculative_stats(const Metrics& metrics);

struct SubmitResult {
  int status = 200;      // 200 admitted to the queue; 413 can never fit; 429 queue full; 503 stopped
  std::string message;
};

class Scheduler {
 public:
  // `ownership`: the SP entry ownership of the ranks (the tree charges a block at the largest
  // rank's share; a single rank owns everything).
  Scheduler(const SchedulerOptions& options, const model::ModelConfig& config, Metrics* metrics,
            const model::EntryOwnership& ownership = {});
  ~Scheduler();

  SubmitResult submit(std::shared_ptr<Request> request);
  // Builds the next plan; waits up to `wait` for work. Returns false when there is nothing to run.
  bool next_plan(StepPlan* plan, std::chrono::milliseconds wait);
  // Consumes the output of `plan` (Executor::run): per chunk a logits row or (kSampleLast) the
  // token drawn on the device, and for a plan of draft levels one row per draft.
  void complete(const StepPlan& plan, const std::vector<std::vector<float>>& logits,
                const std::vector<std::vector<float>>& draft_logits = {},
                const std::vector<model::SampledToken>& sampled = {});
  // Ends every request with kError (engine failure) and refuses new ones.
  void fail_all(const std::string& why);
  // A plan that releases every state and tells followers to stop; refuses new requests.
  StepPlan shutdown_plan();

  SchedulerGauges gauges() const;
  const SchedulerOptions& options() const { return options_; }

 private:
  struct Running {
    std::shared_ptr<Request> req;
    SeqId seq = 0;
    std::vector<int32_t> tokens;  // prompt, then generated tokens
    int64_t fed = 0;              // tokens already in the state
    int generated = 0;
    int64_t reserved = 0;         // bytes charged
    model::Sampler sampler;
    Clock::time_point last_token;
    std::unique_ptr<model::SpeculativeSampler> spec;  // with mtp_depth > 0
    PrefixId pinned = 0;          // the prefix point it resumed from (pinned until it finishes)
    std::vector<int64_t> points;  // planned prefix points not yet reached, increasing
  };
  enum class Admission { kAdmitted, kWaitsForPoint, kNoMemory };
  // A decoding sequence in the speculative step in flight.
  struct Turn {
    SeqId seq = 0;
    std::vector<int32_t> drafts;
  };

  bool admit_locked(StepPlan* plan);
  Admission try_admit_locked(const std::shared_ptr<Request>& req, StepPlan* plan);
  // Prefix tree: the match a request resumes from (PlanResume) and its planned points.
  void start_from_prefix_locked(Running& r, StepPlan* plan);
  // After the chunk of `r` that ends at its next planned point: inserts it (PlanStore next plan).
  void record_point_locked(Running& r, int64_t position);
  // Queues the PlanStore of an insert and its frees, then evicts down to the tree's share.
  void queue_store_locked(SeqId seq, int64_t upto, const InsertResult& result);
  void enforce_budget_locked();
  // Moves the queued stores and frees into `plan` (stores before any resume of the plan).
  void take_prefix_ops_locked(StepPlan* plan);
  int64_t tree_bytes() const { return tree_ ? tree_->bytes() : 0; }
  void sweep_locked(StepPlan* plan);
  void finish_locked(Running& r, FinishReason reason, StepPlan* plan_or_null);
  // The token `r` samples (or is forced to emit) from `logits`. Touches r's samplers only, so the
  // sequences of a step decide in parallel.
  int32_t decide(Running& r, std::span<const float> logits) const;
  // Streams a decided token; `fed_already`: it is in r.tokens (an accepted draft). Its logprobs
  // come from `drawn` (a device draw) or else from `logits`. False once the sequence has finished.
  bool emit_locked(Running& r, int32_t token, std::span<const float> logits, bool fed_already,
                   const model::SampledToken* drawn = nullptr);
  // Whether r's tokens are drawn on the device (kSampleLast chunks).
  bool draws_on_device(const Running& r) const;
  // Prompt / decode chunks of the sequences not in turns_, under `budget` tokens.
  void pack_chunks_locked(StepPlan* plan, int64_t budget);
  // The next plan of the speculative step in flight: a draft level or the verify plan.
  void continue_step_locked(StepPlan* plan);
  void complete_drafts_locked(const StepPlan& plan, const std::vector<std::vector<float>>& draft_logits);
  const Turn& turn_of(SeqId seq) const;
  // Applies a verify verdict: the verdict for the next plan, the accepted drafts and the next
  // token streamed; `logits` [k+1, vocab] the verify chunk's.
  void apply_verdict_locked(Running& r, const model::SpeculativeSampler::Verdict& v, std::span<const float> logits);
  Running* find_locked(SeqId seq);
  bool speculating(const Running& r) const;  // decodes by draft + verify
  void update_gauges_locked();

  SchedulerOptions options_;
  model::ModelConfig config_;
  Metrics* metrics_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<int, std::deque<std::shared_ptr<Request>>, std::greater<int>> waiting_;
  size_t num_waiting_ = 0;
  std::vector<std::unique_ptr<Running>> running_;
  std::unique_ptr<PrefixTree> tree_;  // null when the prefix cache is off
  int64_t tree_budget_ = 0;           // prefix_cache.budget_fraction of the KV budget
  InFlightPoints inflight_;
  std::vector<PlanStore> pending_stores_;  // for the next plan
  std::vector<uint64_t> pending_frees_;
  std::vector<SeqId> pending_releases_;
  std::vector<Turn> turns_;                     // the speculative step in flight (empty: none)
  std::vector<PlanResolve> pending_resolves_;   // verdicts for the next plan
  int64_t reserved_ = 0;  // bytes charged for running sequences (the tree's bytes come on top)
  SeqId next_seq_ = 1;
  uint64_t step_idx_ = 0;
  size_t decode_rotation_ = 0;
  bool stopped_ = false;
  std::string stop_reason_;
};

}  // namespace v4rt::runtime
