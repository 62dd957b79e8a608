// SPDX-License-Identifier: MIT
// Speculative decoding with the MTP block (spec §7) as the draft model: each step drafts `depth`
// tokens with the MTP block, verifies them in one main-model chunk of depth+1 tokens (all logits),
// accepts a prefix and rolls both states back past the first rejection. Greedy: a draft is
// accepted when it equals the main model's argmax, so the output equals greedy decoding without
// drafts token for token. Sampled: standard rejection sampling (accept d with min(1, p(d)/q(d)),
// else draw from norm(max(0, p - q)); all accepted: draw from the next p), so the output has the
// distribution of non-speculative sampling with the same temperature / top-p. Seeded: the same
// seed gives the same tokens (the draws differ from Sampler's, the distribution does not).
//
// Three parts, so that a sharded job and a batch of sequences run the same step:
//   SpeculativeSequence  one sequence's rank-local mechanics (MTP state, the main streams the block
//                        has not seen, mark / rollback); deterministic given the tokens, so every
//                        rank applies the same operations (the MTP forward and the verify chunk
//                        are collective under a sharded layout, like Model::step)
//   SpeculativeSampler   the decisions (draft tokens, acceptance, the next token): the leader's
//   SpeculativeDecoder   both over one sequence on one rank (tests, `v4rt bench mtp`)
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <span>
#include <vector>

#include "model/model.h"
#include "model/mtp.h"
#include "model/sampler.h"

namespace v4rt::model {

struct SpeculativeOptions {
  int depth = 1;                // draft tokens per verify step (>= 1)
  SamplerOptions sampler;       // temperature <= 0: greedy
  int prefill_chunk = 256;      // prompt tokens per main-model chunk
  // kResampleFromTarget is a deliberately wrong rule (on rejection draw from p instead of the
  // residual) that tests use to show the distribution test can fail. Never use it otherwise.
  enum class Rule : uint8_t { kExact, kResampleFromTarget };
  Rule rule = Rule::kExact;
  // Greedy only, for tests: may replace the MTP block's drafts (one per depth) before the verify,
  // given the position of the first draft. Exercises every acceptance count with any draft model.
  std::function<void(int64_t position, std::vector<int32_t>& drafts)> replace_drafts;
};

struct SpeculativeStats {
  int64_t steps = 0;        // verify steps (per sequence)
  int64_t drafted = 0;      // draft tokens proposed
  int64_t accepted = 0;     // draft tokens accepted
  int64_t emitted = 0;      // tokens decided by the steps (accepted drafts + one per step)
  double draft_s = 0.0;     // MTP block (feeding the verified streams + drafting)
  double verify_s = 0.0;    // main-model verify chunks, rollback included
  double acceptance_rate() const { return drafted ? double(accepted) / double(drafted) : 0.0; }
  double tokens_per_step() const { return steps ? double(emitted) / double(steps) : 0.0; }
  void add(const SpeculativeStats& o);
};

// The speculative part of a resumable point (prefix cache, model/prefix_state.h): the MTP block's
// state (window only) and the main streams waiting for it, taken between steps (after a prompt
// chunk: one waiting row). With the main sequence's TailSnapshot it resumes a speculative sequence.
struct SpeculativeTail {
  std::unique_ptr<MtpState> mtp_state;
  Buffer pending;                     // [num_pending, hc, D]
  int64_t num_pending = 0;
  std::vector<int32_t> pending_next;  // next tokens of pending rows [0, num_pending - 1)
  int64_t bytes = 0;                  // MTP window rows + waiting rows (F32)
};

// Largest draft depth the model's window allows (a verify chunk must stay inside the window).
int max_draft_depth(const ModelConfig& config);

// One sequence's speculative state on this rank. The order of calls per sequence:
//   (prompt_chunk, Model::step, after_prompt_chunk)+ then per step: draft(1..depth),
//   verify_chunk, Model::step, resolve(accepted).
// Positions: the main model has processed [0, N); the MTP state has processed the pairs (streams of
// position i, token i+1) for i < N - num_pending(); the streams of the last num_pending()
// positions wait here (with the next tokens of all but the last).
class SpeculativeSequence {
 public:
  SpeculativeSequence(Model& model, Mtp& mtp, SequenceState& sequence);

  SequenceState& sequence() { return seq_; }
  MtpState& mtp_state() { return *mtp_state_; }
  int64_t num_pending() const { return num_pending_; }
  bool verifying() const { return verifying_; }
  // A deep copy over `sequence`, a copy of this one's SequenceState (prefix reuse): the MTP state
  // and the waiting streams are copied. Not between draft() and resolve().
  std::unique_ptr<SpeculativeSequence> clone(SequenceState& sequence) const;
  // The speculative tail at this position (not between draft() and resolve()), and a sequence
  // resumed from one over `sequence`, a state at the same position (model/prefix_state.h).
  SpeculativeTail snapshot() const;
  static std::unique_ptr<SpeculativeSequence> resume(Model& model, Mtp& mtp, SequenceState& sequence,
                                                     const SpeculativeTail& tail);

  // A non-speculative chunk (prompt): the StepChunk for Model::step (it keeps the final streams;
  // the tokens are copied), then after_prompt_chunk() feeds the MTP block every pair whose next
  // token is now known. Collective (MTP forward).
  StepChunk prompt_chunk(std::span<const int32_t> tokens, bool all_logits);
  void after_prompt_chunk();
  // Draft level `level` of `depth`: level 1 feeds the waiting streams (the last one's next token is
  // `token`, the decided but unprocessed token); a later level feeds the block's own output with
  // the previous draft `token`. `logits` (may be nullptr) gets the draft logits [vocab].
  // Collective (MTP forward).
  void draft(int level, int depth, int32_t token, std::vector<float>* logits);
  // The verify chunk [next, d1..dk] after draft(depth): marks the main state; all logits, streams kept.
  StepChunk verify_chunk(std::span<const int32_t> tokens);
  // After the verify step: keep the first `accepted` drafts (rank-local).
  void resolve(int accepted);

 private:
  TensorView rows(int64_t begin, int64_t end) const;  // [end-begin, hc, D] of pending_
  TensorView draft_row(int i) const;                  // [1, hc, D] of draft_hidden_
  void reserve_rows(int64_t rows);                    // keeps the first num_pending_ rows

  Model& model_;
  Mtp& mtp_;
  SequenceState& seq_;
  std::unique_ptr<MtpState> mtp_state_;
  Buffer pending_;                    // [capacity, hc, D] streams of the positions the MTP has not seen
  int64_t capacity_ = 0;
  int64_t num_pending_ = 0;
  std::vector<int32_t> pending_next_; // next tokens of pending rows [0, num_pending_ - 1)
  Buffer draft_hidden_;               // [2, hc, D] the MTP block's output streams (chained drafts)
  std::vector<int32_t> chunk_tokens_; // the chunk in flight (prompt or verify)
  bool verifying_ = false;
  int64_t verify_base_ = 0;           // main position before the verify chunk
  int64_t mtp_base_ = 0;              // MTP position after draft level 1
};

// The leader's decisions for one sequence (its own seeded RNG).
class SpeculativeSampler {
 public:
  explicit SpeculativeSampler(const SamplerOptions& options,
                              SpeculativeOptions::Rule rule = SpeculativeOptions::Rule::kExact);
  bool greedy() const { return options_.temperature <= 0.0; }
  // A token from the main model's logits (the first token after the prompt).
  int32_t sample(std::span<const float> logits);
  // The draft of the next level from the MTP block's logits (its distribution is kept for verify).
  int32_t draft(std::span<const float> draft_logits);
  struct Verdict {
    int accepted = 0;   // drafts kept
    int32_t next = -1;  // the token after them
  };
  // `logits` [k+1, vocab]: row i is the main model's after the chunk's token i; drafts d1..dk.
  Verdict verify(std::span<const float> logits, std::span<const int32_t> drafts);

 private:
  double uniform() { return uniform_draw(rng_); }
  int32_t draw(const std::vector<double>& dist) { return draw_index(dist, uniform()); }
  std::vector<double> dist(std::span<const float> logits) const;

  SamplerOptions options_;
  SpeculativeOptions::Rule rule_;
  std::mt19937_64 rng_;
  std::vector<std::vector<double>> q_;  // draft distributions of the current step (sampled mode)
};

// One sequence on one rank.
class SpeculativeDecoder {
 public:
  SpeculativeDecoder(Model& model, Mtp& mtp, const SpeculativeOptions& options);

  // Prefills `prompt` into a new sequence and returns the first generated token.
  int32_t start(std::span<const int32_t> prompt);
  // One draft + verify step; appends the 1..depth+1 tokens it decides to *out.
  void step(std::vector<int32_t>* out);
  // start() then steps until `max_tokens` tokens or the end-of-sequence token `eos` (>= 0; included).
  std::vector<int32_t> generate(std::span<const int32_t> prompt, int max_tokens, int64_t eos = -1);

  const SpeculativeStats& stats() const { return stats_; }
  void reset_stats() { stats_ = SpeculativeStats(); }
  SequenceState& sequence() { return *seq_; }
  MtpState& mtp_state() { return spec_->mtp_state(); }

 private:
  Model& model_;
  Mtp& mtp_;
  SpeculativeOptions options_;
  SpeculativeSampler sampler_;
  std::unique_ptr<SequenceState> seq_;
  std::unique_ptr<SpeculativeSequence> spec_;
  std::vector<int32_t> tokens_;  // every committed token; tokens_[seq_->position()] is the next input
  SpeculativeStats stats_;
};

}  // namespace v4rt::model
