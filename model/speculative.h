// SPDX-License-Identifier: MIT
// Speculative decoding with the MTP block (spec §7) as the draft model: each step drafts `depth`
// tokens with the MTP block, verifies them in one main-model chunk of depth+1 tokens (all logits),
// accepts a prefix and rolls both states back past the first rejection. Greedy: a draft is
// accepted when it equals the main model's argmax, so the output equals greedy decoding without
// drafts token for token. Sampled: standard rejection sampling (accept d with min(1, p(d)/q(d)),
// else draw from norm(max(0, p - q)); all accepted: draw from the next p), so the output has the
// distribution of non-speculative sampling with the same temperature / top-p. Seeded: the same
// seed gives the same tokens (the draws differ from Sampler's, the distribution does not).
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
  int64_t steps = 0;        // verify steps
  int64_t drafted = 0;      // draft tokens proposed
  int64_t accepted = 0;     // draft tokens accepted
  int64_t emitted = 0;      // tokens decided by the steps (accepted drafts + one per step)
  double draft_s = 0.0;     // MTP block (feeding the verified streams + drafting)
  double verify_s = 0.0;    // main-model verify chunks, rollback included
  double acceptance_rate() const { return drafted ? double(accepted) / double(drafted) : 0.0; }
  double tokens_per_step() const { return steps ? double(emitted) / double(steps) : 0.0; }
};

// The probabilities Sampler samples from: softmax(logits / temperature) restricted to the nucleus
// (smallest prefix by descending probability, ties by lower id, reaching top_p), renormalised.
// temperature <= 0: one-hot on the argmax.
std::vector<double> sampling_distribution(std::span<const float> logits, double temperature, double top_p);

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
  MtpState& mtp_state() { return *mtp_state_; }

 private:
  int32_t draw(const std::vector<double>& dist);  // a token from `dist` with the decoder's RNG
  double uniform();
  std::vector<double> dist(std::span<const float> logits) const;
  TensorView pending_rows(int64_t begin, int64_t end) const;

  Model& model_;
  Mtp& mtp_;
  SpeculativeOptions options_;
  std::mt19937_64 rng_;
  std::unique_ptr<SequenceState> seq_;
  std::unique_ptr<MtpState> mtp_state_;
  std::vector<int32_t> tokens_;  // every committed token; tokens_[seq_->position()] is the next input
  Buffer pending_;               // [capacity, hc, D] main streams of the positions the MTP has not seen
  int64_t pending_capacity_ = 0;
  int64_t num_pending_ = 0;
  Buffer draft_hidden_;          // [2, hc, D] the MTP block's output streams (chained drafts)
  SpeculativeStats stats_;
};

}  // namespace v4rt::model
