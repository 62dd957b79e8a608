// SPDX-License-Identifier: MIT
// Scheduler: queue, admission by KV memory, step planning under a token budget, sampling and the
// end of generations. Every public method takes the one mutex; the engine thread calls
// next_plan()/complete(), HTTP threads call submit().
#include "runtime/scheduler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "common/check.h"
#include "common/parallel_for.h"
#include "model/prefix_state.h"
#include "model/state.h"
#include "runtime/prefix_store.h"
#include <glog/logging.h>

namespace v4rt::runtime {

namespace {

constexpr int64_t kKvBlockTokens = 64;  // accounting unit of the kv_blocks gauge

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

}  // namespace

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::kNone: return "none";
    case FinishReason::kEos: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kCancelled: return "cancelled";
    case FinishReason::kTimeout: return "timeout";
    case FinishReason::kError: return "error";
  }
  return "?";
}

void TokenStream::push(TokenEvent event) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    pending_.push_back(std::move(event));
  }
  cv_.notify_all();
}

void TokenStream::finish(FinishReason reason, std::string message) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (reason_ != FinishReason::kNone) return;
    reason_ = reason;
    message_ = std::move(message);
  }
  cv_.notify_all();
}

FinishReason TokenStream::wait(std::vector<TokenEvent>* out, std::chrono::milliseconds timeout, std::string* message) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, timeout, [&] { return !pending_.empty() || reason_ != FinishReason::kNone; });
  for (TokenEvent& e : pending_) out->push_back(std::move(e));
  pending_.clear();
  if (message) *message = message_;
  return reason_;
}

void record_plan_time(const StepPlan& plan, double seconds, Metrics* metrics) {
  if (!plan.drafts.empty()) {
    metrics->add_spec_time(seconds, 0.0);
  } else if (std::any_of(plan.chunks.begin(), plan.chunks.end(),
                         [](const PlanChunk& c) { return c.kind == ChunkKind::kVerify; })) {
    metrics->add_spec_time(0.0, seconds);
  }
}

model::SpeculativeStats speculative_stats(const Metrics& metrics) {
  model::SpeculativeStats s;
  s.steps = int64_t(metrics.spec_steps);
  s.drafted = int64_t(metrics.spec_drafted);
  s.accepted = int64_t(metrics.spec_accepted);
  s.emitted = int64_t(metrics.spec_emitted);
  metrics.spec_time(&s.draft_s, &s.verify_s);
  return s;
}

Scheduler::Scheduler(const SchedulerOptions& options, const model::ModelConfig& config, Metrics* metrics,
                     const model::EntryOwnership& ownership)
    : options_(options), config_(config), metrics_(metrics) {
  CHECK(metrics_ != nullptr);
  const PrefixCacheOptions& pc = options_.prefix_cache;
  if (pc.enabled) {
    model::validate_block_tokens(config_, pc.block_tokens);
    V4RT_REQUIRE(pc.every_n >= 0, "prefix_cache.every_n must be >= 0, got " << pc.every_n);
    V4RT_REQUIRE(pc.budget_fraction > 0 && pc.budget_fraction <= 1,
                 "prefix_cache.budget_fraction must be in (0, 1], got " << pc.budget_fraction);
    PrefixTreeOptions to;
    to.block_tokens = pc.block_tokens;
    tree_budget_ = std::max<int64_t>(1, int64_t(double(options_.kv_budget_bytes) * pc.budget_fraction));
    to.budget_bytes = tree_budget_;
    set_model_byte_sizes(to, config_, ownership, options_.kv_storage);
    tree_ = std::make_unique<PrefixTree>(std::move(to));
  }
  CHECK_GT(options_.max_batch_tokens, 0);
  CHECK_GT(options_.max_running, 0);
  V4RT_REQUIRE(options_.prefill_chunk >= 0, "prefill_chunk must be >= 0, got " << options_.prefill_chunk);
  if (options_.mtp_depth > 0) {
    V4RT_REQUIRE(options_.mtp_depth <= model::max_draft_depth(config),
                 "--mtp " << options_.mtp_depth << " must be in [1, " << model::max_draft_depth(config) << "]");
    V4RT_REQUIRE(options_.max_batch_tokens >= options_.mtp_depth + 1,
                 "server.max_batch_tokens " << options_.max_batch_tokens << " is below one verify chunk of "
                                            << options_.mtp_depth + 1 << " tokens");
  }
}

Scheduler::~Scheduler() = default;

SubmitResult Scheduler::submit(std::shared_ptr<Request> request) {
  const int64_t need = model::state_bytes(config_, int64_t(request->prompt.size()) + request->sampling.max_tokens,
                                          options_.kv_storage);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_) return {503, "the server is not serving: " + stop_reason_};
    if (need > options_.kv_budget_bytes)
      return {413, "the request needs " + std::to_string(need) + " bytes of KV state (prompt " +
                       std::to_string(request->prompt.size()) + " + max_tokens " +
                       std::to_string(request->sampling.max_tokens) + " tokens), more than the budget of " +
                       std::to_string(options_.kv_budget_bytes)};
    if (num_waiting_ >= size_t(options_.max_queue))
      return {429, "the request queue is full (" + std::to_string(options_.max_queue) + " waiting)"};
    waiting_[request->priority].push_back(std::move(request));
    ++num_waiting_;
    update_gauges_locked();
  }
  cv_.notify_all();
  return {};
}

void Scheduler::finish_locked(Running& r, FinishReason reason, StepPlan* plan) {
  r.req->stream->finish(reason, reason == FinishReason::kTimeout ? "request timeout" : "");
  switch (reason) {
    case FinishReason::kCancelled: ++metrics_->requests_cancelled; break;
    case FinishReason::kTimeout: ++metrics_->requests_timed_out; break;
    case FinishReason::kEos:
    case FinishReason::kLength: ++metrics_->requests_finished; break;
    default: break;
  }
  reserved_ -= r.reserved;
  r.reserved = 0;
  if (tree_) {
    inflight_.remove(r.seq);
    if (r.pinned) tree_->unpin(r.pinned);
    r.pinned = 0;
    // The end of a finished sequence (prompt + completion) is the point its next turn extends;
    // the store precedes the release in the next plan, so the state is still there to snapshot.
    if (r.fed > 0 && (reason == FinishReason::kEos || reason == FinishReason::kLength)) {
      const int64_t end = r.fed;
      queue_store_locked(r.seq, end, tree_->insert(std::span<const int32_t>(r.tokens.data(), size_t(end)),
                                                   std::span<const int64_t>(&end, 1)));
    }
  }
  pending_releases_.push_back(r.seq);
  (void)plan;
  r.req.reset();
}

void Scheduler::queue_store_locked(SeqId seq, int64_t upto, const InsertResult& result) {
  // Always sent, even when the tree had every point already: it drops the kept snapshot.
  PlanStore st;
  st.seq = seq;
  st.upto = upto;
  st.block_tokens = options_.prefix_cache.block_tokens;
  for (const PointSpec& p : result.points) st.points.push_back({p.id, p.position});
  for (const BlockSpec& b : result.blocks) st.blocks.push_back({b.id, b.index, b.end});
  pending_stores_.push_back(std::move(st));
  pending_frees_.insert(pending_frees_.end(), result.freed.begin(), result.freed.end());
  enforce_budget_locked();
}

void Scheduler::enforce_budget_locked() {
  // The tree holds at most its share of the budget, and never what the running sequences hold.
  const int64_t cap = std::min(tree_budget_, options_.kv_budget_bytes - reserved_);
  if (tree_->bytes() <= cap) return;
  const std::vector<PrefixId> freed = tree_->evict(tree_->bytes() - cap);
  pending_frees_.insert(pending_frees_.end(), freed.begin(), freed.end());
}

void Scheduler::record_point_locked(Running& r, int64_t position) {
  CHECK(!r.points.empty() && r.points.front() == position)
      << "sequence " << r.seq << ": a chunk ended at " << position << ", not at its next prefix point";
  r.points.erase(r.points.begin());
  queue_store_locked(r.seq, position, tree_->insert(std::span<const int32_t>(r.tokens.data(), size_t(position)),
                                                    std::span<const int64_t>(&position, 1)));
  // Requests waiting for this point may start now; they wait on the remaining ones only.
  if (r.points.empty()) {
    inflight_.remove(r.seq);
  } else {
    inflight_.add(r.seq, r.req->prompt, r.points);
  }
}

void Scheduler::sweep_locked(StepPlan* plan) {
  const Clock::time_point now = Clock::now();
  for (auto& r : running_) {
    if (r->req->stream->cancelled()) {
      finish_locked(*r, FinishReason::kCancelled, plan);
    } else if (now > r->req->deadline) {
      finish_locked(*r, FinishReason::kTimeout, plan);
    }
  }
  std::erase_if(running_, [](const auto& r) { return !r->req; });
  for (auto& [prio, queue] : waiting_) {
    for (auto& req : queue) {
      if (req->stream->cancelled()) {
        req->stream->finish(FinishReason::kCancelled);
        ++metrics_->requests_cancelled;
        req.reset();
      } else if (now > req->deadline) {
        req->stream->finish(FinishReason::kTimeout, "request timeout while queued");
        ++metrics_->requests_timed_out;
        req.reset();
      }
    }
    const size_t before = queue.size();
    std::erase_if(queue, [](const auto& q) { return !q; });
    num_waiting_ -= before - queue.size();
  }
}

bool Scheduler::admit_locked(StepPlan* plan) {
  bool admitted = false;
  for (auto& [prio, queue] : waiting_) {
    for (auto it = queue.begin(); it != queue.end() && int(running_.size()) < options_.max_running;) {
      const Admission a = try_admit_locked(*it, plan);
      if (a == Admission::kNoMemory) return admitted;  // head of line waits for memory
      if (a == Admission::kWaitsForPoint) {            // another request computes its prefix
        ++it;
        continue;
      }
      it = queue.erase(it);
      --num_waiting_;
      admitted = true;
    }
    if (!queue.empty()) break;  // a lower priority never overtakes a waiting higher one
  }
  return admitted;
}

Scheduler::Admission Scheduler::try_admit_locked(const std::shared_ptr<Request>& req, StepPlan* plan) {
  const int64_t need = model::state_bytes(config_, int64_t(req->prompt.size()) + req->sampling.max_tokens, options_.kv_storage);
  PrefixId hold = 0;  // pinned while the budget is made: eviction must not take the point it resumes from
  if (tree_) {
    const PrefixMatch peek = tree_->match(req->prompt, /*record=*/false);
    if (inflight_.longest(req->prompt, peek.position, nullptr) > 0) return Admission::kWaitsForPoint;
    hold = peek.point;
    if (hold) tree_->pin(hold);
    const int64_t over = reserved_ + tree_->bytes() + need - options_.kv_budget_bytes;
    if (over > 0) {
      const std::vector<PrefixId> freed = tree_->evict(over);
      plan->frees.insert(plan->frees.end(), freed.begin(), freed.end());
    }
  }
  if (reserved_ + tree_bytes() + need > options_.kv_budget_bytes) {
    if (hold) tree_->unpin(hold);
    return Admission::kNoMemory;
  }
  const model::SamplerOptions so{req->sampling.temperature, req->sampling.top_p, req->sampling.seed};
  auto r = std::make_unique<Running>(
      Running{req, next_seq_++, req->prompt, 0, 0, need, model::Sampler(so), Clock::now(), nullptr, hold, {}});
  if (options_.mtp_depth > 0) r->spec = std::make_unique<model::SpeculativeSampler>(so);
  if (tree_) start_from_prefix_locked(*r, plan);
  reserved_ += need;
  req->stream->prompt_tokens = int64_t(req->prompt.size());
  req->stream->cached_tokens = r->fed;
  metrics_->prompt_tokens += req->prompt.size();
  running_.push_back(std::move(r));
  return Admission::kAdmitted;
}

void Scheduler::start_from_prefix_locked(Running& r, StepPlan* plan) {
  const PrefixMatch m = tree_->match(r.req->prompt);  // counted now that the request starts
  CHECK_EQ(m.point, r.pinned) << "prefix match of sequence " << r.seq << " changed while admitting it";
  if (m.point) {
    plan->resumes.push_back({r.seq, m.position, m.point, m.blocks});
    r.fed = m.position;
    metrics_->prefix_reused_tokens += uint64_t(m.position);
  }
  r.points = PrefixTree::plan_points(int64_t(r.req->prompt.size()), r.fed, r.req->boundaries,
                                     options_.prefix_cache.every_n);
  if (!r.points.empty()) inflight_.add(r.seq, r.req->prompt, r.points);
}

bool Scheduler::speculating(const Running& r) const {
  return options_.mtp_depth > 0 && !r.req->sampling.forced && r.fed >= int64_t(r.req->prompt.size()) &&
         int64_t(r.tokens.size()) == r.fed + 1;
}

Scheduler::Running* Scheduler::find_locked(SeqId seq) {
  for (auto& r : running_)
    if (r->seq == seq) return r.get();
  return nullptr;
}

void Scheduler::pack_chunks_locked(StepPlan* plan, int64_t budget) {
  // Decode tokens first (rotating the start so no sequence starves when they exceed the budget),
  // then prefill chunks in admission order. Speculating sequences decode in turns only.
  const size_t n = running_.size();
  std::vector<Running*> order;
  for (size_t i = 0; i < n; ++i) {
    Running* r = running_[(i + decode_rotation_) % n].get();
    if (r->fed >= int64_t(r->req->prompt.size()) && !speculating(*r)) order.push_back(r);
  }
  for (auto& r : running_)
    if (r->fed < int64_t(r->req->prompt.size())) order.push_back(r.get());
  if (n) decode_rotation_ = (decode_rotation_ + 1) % n;
  for (Running* r : order) {
    if (budget <= 0) break;
    const int64_t left = int64_t(r->tokens.size()) - r->fed;
    if (left <= 0) continue;
    int64_t take = std::min(left, budget);
    const bool prefill = r->fed < int64_t(r->req->prompt.size());
    if (options_.prefill_chunk > 0 && prefill) take = std::min<int64_t>(take, options_.prefill_chunk);
    // A chunk ends at the next prefix point: the executor snapshots the tail there.
    const bool at_point = prefill && !r->points.empty() && r->points.front() <= r->fed + take;
    if (at_point) take = r->points.front() - r->fed;
    PlanChunk c;
    c.seq = r->seq;
    c.start_pos = r->fed;
    c.num_tokens = int32_t(take);
    c.want_logits = r->fed + take == int64_t(r->tokens.size()) ? kLogitsLast : kLogitsNone;
    c.kind = options_.mtp_depth > 0 ? ChunkKind::kHidden : ChunkKind::kPlain;
    c.take_point = at_point ? 1 : 0;
    if (c.want_logits == kLogitsLast && draws_on_device(*r)) {
      const SamplingParams& sp = r->req->sampling;
      c.want_logits = kSampleLast;
      c.sample = {sp.seed, float(sp.temperature), float(sp.top_p), 0, sp.logprobs ? sp.top_logprobs : 0};
    }
    plan->chunks.push_back(c);
    plan->tokens.insert(plan->tokens.end(), r->tokens.begin() + r->fed, r->tokens.begin() + r->fed + take);
    budget -= take;
  }
}

void Scheduler::continue_step_locked(StepPlan* plan) {
  const int depth = options_.mtp_depth;
  const int done = int(turns_.front().drafts.size());
  if (done < depth) {
    for (const Turn& t : turns_) plan->drafts.push_back({t.seq, done + 1, depth, t.drafts.back()});
    return;
  }
  int64_t budget = options_.max_batch_tokens;
  for (const Turn& t : turns_) {
    Running* r = find_locked(t.seq);
    CHECK(r) << "sequence " << t.seq << " left during its speculative step";
    PlanChunk c;
    c.seq = t.seq;
    c.start_pos = r->fed;
    c.num_tokens = depth + 1;
    c.want_logits = kLogitsAll;
    c.kind = ChunkKind::kVerify;
    plan->chunks.push_back(c);
    plan->tokens.push_back(r->tokens.back());
    plan->tokens.insert(plan->tokens.end(), t.drafts.begin(), t.drafts.end());
    budget -= depth + 1;
  }
  pack_chunks_locked(plan, budget);
}

void Scheduler::take_prefix_ops_locked(StepPlan* plan) {
  for (PlanStore& st : pending_stores_) plan->stores.push_back(std::move(st));
  pending_stores_.clear();
  plan->frees.insert(plan->frees.end(), pending_frees_.begin(), pending_frees_.end());
  pending_frees_.clear();
}

bool Scheduler::next_plan(StepPlan* plan, std::chrono::milliseconds wait) {
  std::unique_lock<std::mutex> lock(mu_);
  if (!turns_.empty()) {  // a speculative step in flight goes on at once
    *plan = StepPlan{};
    take_prefix_ops_locked(plan);
    continue_step_locked(plan);
    plan->step_idx = ++step_idx_;
    return true;
  }
  const Clock::time_point until = Clock::now() + wait;
  for (;;) {
    *plan = StepPlan{};
    plan->resolves = std::move(pending_resolves_);
    pending_resolves_.clear();
    plan->releases = std::move(pending_releases_);
    pending_releases_.clear();
    take_prefix_ops_locked(plan);
    sweep_locked(plan);
    for (SeqId s : pending_releases_) plan->releases.push_back(s);
    pending_releases_.clear();
    take_prefix_ops_locked(plan);  // the inserts of sequences the sweep finished
    if (!stopped_) admit_locked(plan);

    int64_t budget = options_.max_batch_tokens;
    if (options_.mtp_depth > 0) {  // a speculative step of the decoding sequences (rotated)
      const size_t n = running_.size();
      for (size_t i = 0; i < n; ++i) {
        Running* r = running_[(i + decode_rotation_) % n].get();
        if (!speculating(*r) || budget < options_.mtp_depth + 1) continue;
        turns_.push_back({r->seq, {}});
        plan->drafts.push_back({r->seq, 1, options_.mtp_depth, r->tokens.back()});
        budget -= options_.mtp_depth + 1;
      }
      if (!turns_.empty()) {
        update_gauges_locked();
        plan->step_idx = ++step_idx_;
        return true;
      }
    }
    pack_chunks_locked(plan, budget);
    update_gauges_locked();
    if (!plan->empty()) {
      plan->step_idx = ++step_idx_;
      return true;
    }
    if (Clock::now() >= until) return false;
    cv_.wait_until(lock, std::min(until, Clock::now() + std::chrono::milliseconds(50)));
  }
}

bool Scheduler::draws_on_device(const Running& r) const {
  return options_.device_sampling && !r.req->sampling.forced && !r.spec;
}

int32_t Scheduler::decide(Running& r, std::span<const float> logits) const {
  const SamplingParams& sp = r.req->sampling;
  if (sp.forced) {
    return r.generated < int(sp.forced_tokens.size()) ? sp.forced_tokens[size_t(r.generated)] : options_.eos_token_id;
  }
  return r.spec ? r.spec->sample(logits) : r.sampler.sample(logits);
}

bool Scheduler::emit_locked(Running& r, int32_t token, std::span<const float> logits, bool fed_already,
                            const model::SampledToken* drawn) {
  const SamplingParams& sp = r.req->sampling;
  const Clock::time_point now = Clock::now();
  if (r.generated == 0) {
    metrics_->ttft_s.observe(seconds(now - r.req->arrival));
  } else {
    metrics_->itl_s.observe(seconds(now - r.last_token));
  }
  r.last_token = now;
  ++r.generated;
  ++metrics_->generation_tokens;
  if (token == options_.eos_token_id && !sp.ignore_eos) {
    finish_locked(r, FinishReason::kEos, nullptr);
    return false;
  }
  TokenEvent ev;
  ev.token = token;
  if (sp.logprobs && drawn) {
    ev.logprob = drawn->logprob;
    ev.top = drawn->top;
  } else if (sp.logprobs) {
    model::TokenLogprobs lp = model::token_logprobs(logits, token, sp.top_logprobs);
    ev.logprob = lp.logprob;
    ev.top = std::move(lp.top);
  }
  r.req->stream->push(std::move(ev));
  if (!fed_already) r.tokens.push_back(token);
  if (r.generated >= sp.max_tokens) {
    finish_locked(r, FinishReason::kLength, nullptr);
    return false;
  }
  return true;
}

void Scheduler::complete_drafts_locked(const StepPlan& plan, const std::vector<std::vector<float>>& draft_logits) {
  CHECK_EQ(plan.drafts.size(), turns_.size());
  CHECK_EQ(draft_logits.size(), plan.drafts.size());
  for (size_t i = 0; i < turns_.size(); ++i) {
    CHECK_EQ(plan.drafts[i].seq, turns_[i].seq);
    CHECK_EQ(int64_t(draft_logits[i].size()), config_.vocab_size) << "draft logits of sequence " << turns_[i].seq;
    Running* r = find_locked(turns_[i].seq);
    CHECK(r) << "sequence " << turns_[i].seq << " left during its speculative step";
    turns_[i].drafts.push_back(r->spec->draft(draft_logits[i]));
  }
}

const Scheduler::Turn& Scheduler::turn_of(SeqId seq) const {
  auto t = std::find_if(turns_.begin(), turns_.end(), [&](const Turn& x) { return x.seq == seq; });
  CHECK(t != turns_.end()) << "verify chunk of sequence " << seq << " outside its step";
  return *t;
}

void Scheduler::apply_verdict_locked(Running& r, const model::SpeculativeSampler::Verdict& v,
                                     std::span<const float> logits) {
  const Turn& t = turn_of(r.seq);
  const size_t vocab = size_t(config_.vocab_size);
  pending_resolves_.push_back({r.seq, v.accepted});
  metrics_->spec_steps += 1;
  metrics_->spec_drafted += t.drafts.size();
  metrics_->spec_accepted += uint64_t(v.accepted);
  metrics_->spec_emitted += uint64_t(v.accepted) + 1;
  // The state holds [next, d1..d_accepted] once the verdict is applied (with the next plan).
  r.fed += 1 + v.accepted;
  r.tokens.insert(r.tokens.end(), t.drafts.begin(), t.drafts.begin() + v.accepted);
  if (r.req->stream->cancelled()) {
    finish_locked(r, FinishReason::kCancelled, nullptr);
    return;
  }
  for (int j = 0; j < v.accepted; ++j)
    if (!emit_locked(r, t.drafts[size_t(j)], logits.subspan(size_t(j) * vocab, vocab), true)) return;
  emit_locked(r, v.next, logits.subspan(size_t(v.accepted) * vocab, vocab), false);
}

void Scheduler::complete(const StepPlan& plan, const std::vector<std::vector<float>>& logits,
                         const std::vector<std::vector<float>>& draft_logits,
                         const std::vector<model::SampledToken>& sampled) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!plan.drafts.empty()) {
    complete_drafts_locked(plan, draft_logits);
    return;
  }
  std::map<SeqId, Running*> by_seq;
  for (auto& r : running_) by_seq[r->seq] = r.get();
  // The sequences that decide tokens from this step's logits, in chunk order. The decisions
  // (sampling, speculative verdicts; each sequence has its own sampler) run in parallel, their
  // effects (streams, finishes, the prefix cache) in chunk order.
  struct Decision {
    Running* r = nullptr;
    std::span<const float> logits;
    bool verify = false;
    int32_t token = 0;
    model::SpeculativeSampler::Verdict verdict;
    const model::SampledToken* drawn = nullptr;  // a device draw: token decided already
  };
  std::vector<Decision> decisions;
  int64_t prefill = 0;
  bool verified = false;
  for (size_t i = 0; i < plan.chunks.size(); ++i) {
    const PlanChunk& c = plan.chunks[i];
    auto it = by_seq.find(c.seq);
    if (it == by_seq.end()) continue;  // finished meanwhile (cannot happen: one engine thread)
    Running& r = *it->second;
    if (c.kind == ChunkKind::kVerify) {
      CHECK_LT(i, logits.size());
      CHECK_EQ(logits[i].size(), size_t(c.num_tokens) * size_t(config_.vocab_size)) << "verify logits of sequence " << c.seq;
      decisions.push_back({&r, logits[i], true, 0, {}, nullptr});
      verified = true;
      continue;
    }
    if (c.start_pos < int64_t(r.req->prompt.size())) prefill += c.num_tokens;
    r.fed += c.num_tokens;
    if (c.take_point) record_point_locked(r, r.fed);
    if (c.want_logits == kLogitsNone) continue;
    const bool drawn = c.want_logits == kSampleLast;
    if (drawn) {
      CHECK_LT(i, sampled.size());
      CHECK(sampled[i].id >= 0 && sampled[i].id < config_.vocab_size) << "device draw of sequence " << c.seq;
    } else {
      CHECK_LT(i, logits.size());
      CHECK_EQ(int64_t(logits[i].size()), config_.vocab_size) << "logits of sequence " << c.seq;
    }
    if (r.req->stream->cancelled()) {
      finish_locked(r, FinishReason::kCancelled, nullptr);
      continue;
    }
    if (drawn) {
      decisions.push_back({&r, {}, false, sampled[i].id, {}, &sampled[i]});
    } else {
      decisions.push_back({&r, logits[i], false, 0, {}, nullptr});
    }
  }
  // Counted before any token is streamed: a client that reads /metrics after its answer sees them.
  metrics_->prefill_tokens += uint64_t(prefill);
  parallel_for(decisions.size(), [&](size_t k) {
    Decision& d = decisions[k];
    if (d.verify) {
      d.verdict = d.r->spec->verify(d.logits, turn_of(d.r->seq).drafts);
    } else if (!d.drawn) {
      d.token = decide(*d.r, d.logits);
    }
  });
  for (Decision& d : decisions) {
    if (d.verify) {
      apply_verdict_locked(*d.r, d.verdict, d.logits);
    } else {
      emit_locked(*d.r, d.token, d.logits, /*fed_already=*/false, d.drawn);
    }
  }
  if (verified) turns_.clear();
  std::erase_if(running_, [](const auto& r) { return !r->req; });
  ++metrics_->steps;
  metrics_->step_tokens.observe(double(plan.tokens.size()));
  metrics_->step_sequences.observe(double(plan.chunks.size()));
  update_gauges_locked();
}

void Scheduler::fail_all(const std::string& why) {
  std::lock_guard<std::mutex> lock(mu_);
  stopped_ = true;
  stop_reason_ = why;
  turns_.clear();
  pending_resolves_.clear();
  for (auto& r : running_) {
    r->req->stream->finish(FinishReason::kError, why);
    pending_releases_.push_back(r->seq);  // the next plan (if any) frees the states on every rank
  }
  running_.clear();
  for (auto& [prio, queue] : waiting_)
    for (auto& req : queue) req->stream->finish(FinishReason::kError, why);
  waiting_.clear();
  num_waiting_ = 0;
  update_gauges_locked();
}

StepPlan Scheduler::shutdown_plan() {
  std::lock_guard<std::mutex> lock(mu_);
  stopped_ = true;
  if (stop_reason_.empty()) stop_reason_ = "shutting down";
  StepPlan plan;
  turns_.clear();
  pending_resolves_.clear();
  plan.releases = std::move(pending_releases_);
  pending_releases_.clear();
  for (auto& r : running_) {
    r->req->stream->finish(FinishReason::kError, stop_reason_);
    plan.releases.push_back(r->seq);
  }
  running_.clear();
  for (auto& [prio, queue] : waiting_)
    for (auto& req : queue) req->stream->finish(FinishReason::kError, stop_reason_);
  waiting_.clear();
  num_waiting_ = 0;
  reserved_ = 0;  // the prefix payloads go with the executors
  plan.shutdown = 1;
  plan.step_idx = ++step_idx_;
  return plan;
}

void Scheduler::update_gauges_locked() {
  SchedulerGauges g;
  g.num_waiting = int64_t(num_waiting_);
  g.num_running = int64_t(running_.size());
  g.kv_bytes_used = reserved_ + tree_bytes();
  g.kv_bytes_budget = options_.kv_budget_bytes;
  int64_t blocks = 0;
  for (const auto& r : running_) blocks += (int64_t(r->tokens.size()) + kKvBlockTokens - 1) / kKvBlockTokens;
  g.kv_blocks_used = blocks;
  if (tree_) g.prefix = tree_->stats();
  metrics_->set_gauges(g);
}

SchedulerGauges Scheduler::gauges() const { return metrics_->gauges(); }

}  // namespace v4rt::runtime
