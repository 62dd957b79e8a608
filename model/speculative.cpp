// SPDX-License-Identifier: MIT
// Speculative decoding with the MTP draft (see speculative.h).
//
// A step of one sequence: the main model has processed tokens [0, N) and token N is decided but not
// yet processed. Draft level 1 feeds the waiting streams (the last pair uses token N) and drafts
// d1; each later level chains the block's own output streams; then [token N, d1..dk] is verified at
// positions N..N+k and the streams of the accepted positions become the next waiting rows.
#include "model/speculative.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include <glog/logging.h>

#include "common/check.h"

namespace v4rt::model {

namespace {

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

}  // namespace

void SpeculativeStats::add(const SpeculativeStats& o) {
  steps += o.steps;
  drafted += o.drafted;
  accepted += o.accepted;
  emitted += o.emitted;
  draft_s += o.draft_s;
  verify_s += o.verify_s;
}

int max_draft_depth(const ModelConfig& config) { return config.sliding_window - 2; }

// ------------------------------------------------------------------------------------------------
// SpeculativeSequence
// ------------------------------------------------------------------------------------------------

SpeculativeSequence::SpeculativeSequence(Model& model, Mtp& mtp, SequenceState& sequence)
    : model_(model), mtp_(mtp), seq_(sequence), mtp_state_(mtp.new_state()) {
  const ModelConfig& cfg = model.config();
  draft_hidden_ = model.backend().alloc(size_t(2 * cfg.hc_mult * cfg.hidden_size) * sizeof(float));
}

TensorView SpeculativeSequence::rows(int64_t begin, int64_t end) const {
  const ModelConfig& cfg = model_.config();
  CHECK(begin >= 0 && begin <= end && end <= capacity_);
  const int64_t row = int64_t(cfg.hc_mult) * cfg.hidden_size;
  return TensorView(static_cast<float*>(pending_.data()) + begin * row, DType::kF32, {end - begin, cfg.hc_mult, cfg.hidden_size},
                    model_.backend().device());
}

TensorView SpeculativeSequence::draft_row(int i) const {
  const ModelConfig& cfg = model_.config();
  const int64_t row = int64_t(cfg.hc_mult) * cfg.hidden_size;
  return TensorView(static_cast<float*>(draft_hidden_.data()) + i * row, DType::kF32, {1, cfg.hc_mult, cfg.hidden_size},
                    model_.backend().device());
}

void SpeculativeSequence::reserve_rows(int64_t n) {
  if (n <= capacity_) return;
  const ModelConfig& cfg = model_.config();
  const int64_t row = int64_t(cfg.hc_mult) * cfg.hidden_size;
  const int64_t cap = std::max<int64_t>(n, 2 * capacity_);
  Buffer grown = model_.backend().alloc(size_t(cap * row) * sizeof(float));
  if (num_pending_ > 0) {
    const TensorView from = kernels::view_reshape(rows(0, num_pending_), {num_pending_, row});
    const TensorView to(grown.data(), DType::kF32, {num_pending_, row}, model_.backend().device());
    model_.backend().copy_rows(to, from);
  }
  pending_ = std::move(grown);
  capacity_ = cap;
}

std::unique_ptr<SpeculativeSequence> SpeculativeSequence::clone(SequenceState& sequence) const {
  CHECK(!verifying_ && !mtp_state_->marked()) << "cloning a sequence in the middle of a speculative step";
  CHECK_EQ(sequence.position(), seq_.position());
  auto c = std::make_unique<SpeculativeSequence>(model_, mtp_, sequence);
  c->mtp_state_ = mtp_state_->clone();
  c->reserve_rows(std::max<int64_t>(num_pending_, 1));
  if (num_pending_ > 0) {
    const int64_t row = int64_t(model_.config().hc_mult) * model_.config().hidden_size;
    model_.backend().copy_rows(kernels::view_reshape(c->rows(0, num_pending_), {num_pending_, row}),
                               kernels::view_reshape(rows(0, num_pending_), {num_pending_, row}));
  }
  c->num_pending_ = num_pending_;
  c->pending_next_ = pending_next_;
  return c;
}

SpeculativeTail SpeculativeSequence::snapshot() const {
  CHECK(!verifying_ && !mtp_state_->marked()) << "speculative tail in the middle of a speculative step";
  const int64_t row = int64_t(model_.config().hc_mult) * model_.config().hidden_size;
  SpeculativeTail t;
  t.mtp_state = mtp_state_->clone();
  t.num_pending = num_pending_;
  t.pending_next = pending_next_;
  t.pending = model_.backend().alloc(size_t(std::max<int64_t>(num_pending_, 1) * row) * sizeof(float));
  if (num_pending_ > 0) {
    const TensorView to(t.pending.data(), DType::kF32, {num_pending_, row}, model_.backend().device());
    model_.backend().copy_rows(to, kernels::view_reshape(rows(0, num_pending_), {num_pending_, row}));
  }
  const RowTable& window = mtp_state_->layer().window_tail;
  t.bytes = (window.rows() * window.width() + num_pending_ * row) * int64_t(sizeof(float));
  return t;
}

std::unique_ptr<SpeculativeSequence> SpeculativeSequence::resume(Model& model, Mtp& mtp, SequenceState& sequence,
                                                                 const SpeculativeTail& tail) {
  CHECK(tail.mtp_state) << "empty speculative tail";
  CHECK_EQ(tail.mtp_state->position() + tail.num_pending, sequence.position())
      << "speculative tail of another position";
  auto s = std::make_unique<SpeculativeSequence>(model, mtp, sequence);
  s->mtp_state_ = tail.mtp_state->clone();
  s->reserve_rows(std::max<int64_t>(tail.num_pending, 1));
  if (tail.num_pending > 0) {
    const int64_t row = int64_t(model.config().hc_mult) * model.config().hidden_size;
    const TensorView from(tail.pending.data(), DType::kF32, {tail.num_pending, row}, model.backend().device());
    model.backend().copy_rows(kernels::view_reshape(s->rows(0, tail.num_pending), {tail.num_pending, row}), from);
  }
  s->num_pending_ = tail.num_pending;
  s->pending_next_ = tail.pending_next;
  return s;
}

StepChunk SpeculativeSequence::prompt_chunk(std::span<const int32_t> tokens, bool all_logits) {
  CHECK(!verifying_ && !tokens.empty() && !mtp_state_->marked());
  // Waiting rows (after a prompt chunk: 1; after a resolve: accepted + 1) pair up with the chunk's
  // tokens; none waits only before the first chunk.
  CHECK(num_pending_ >= 1 || seq_.position() == 0) << "a prompt chunk between drafting and verifying";
  const int64_t m = int64_t(tokens.size());
  reserve_rows(num_pending_ + m);
  chunk_tokens_.assign(tokens.begin(), tokens.end());
  StepChunk c;
  c.sequence = &seq_;
  c.tokens = chunk_tokens_;
  c.all_logits = all_logits;
  c.hidden = rows(num_pending_, num_pending_ + m);
  return c;
}

void SpeculativeSequence::after_prompt_chunk() {
  const int64_t total = num_pending_ + int64_t(chunk_tokens_.size());
  // Next tokens of rows [0, total - 1): the waiting ones, then the chunk's (its first token follows
  // the waiting row; without one, the chunk starts the sequence and its first token has no pair).
  std::vector<int32_t> next = pending_next_;
  next.insert(next.end(), chunk_tokens_.begin() + (num_pending_ > 0 ? 0 : 1), chunk_tokens_.end());
  CHECK_EQ(int64_t(next.size()), total - 1);
  if (total > 1) {
    mtp_.forward(*mtp_state_, rows(0, total - 1), next, nullptr);
    const int64_t row = int64_t(model_.config().hc_mult) * model_.config().hidden_size;
    model_.backend().copy_rows(kernels::view_reshape(rows(0, 1), {1, row}),
                               kernels::view_reshape(rows(total - 1, total), {1, row}));
  }
  num_pending_ = 1;
  pending_next_.clear();
  CHECK_EQ(mtp_state_->position() + 1, seq_.position());
}

void SpeculativeSequence::draft(int level, int depth, int32_t token, std::vector<float>* logits) {
  CHECK(!verifying_ && level >= 1 && level <= depth);
  if (level == 1) {
    CHECK_GE(num_pending_, 1) << "drafting before the prompt";
    CHECK_EQ(mtp_state_->position() + num_pending_, seq_.position());
    std::vector<int32_t> next = pending_next_;
    next.push_back(token);
    mtp_.forward(*mtp_state_, rows(0, num_pending_), next, logits, depth > 1 ? draft_row(0) : TensorView());
    num_pending_ = 0;
    pending_next_.clear();
    if (depth > 1) {
      mtp_base_ = mtp_state_->position();
      mtp_state_->mark(depth - 1);
    }
    return;
  }
  CHECK(mtp_state_->marked());
  mtp_.forward(*mtp_state_, draft_row((level - 2) % 2), std::span<const int32_t>(&token, 1), logits,
               level < depth ? draft_row((level - 1) % 2) : TensorView());
  if (level == depth) mtp_state_->rollback(mtp_base_);  // the chained positions held drafted streams
}

StepChunk SpeculativeSequence::verify_chunk(std::span<const int32_t> tokens) {
  CHECK(!verifying_ && num_pending_ == 0 && !mtp_state_->marked()) << "verify before drafting";
  const int64_t n = int64_t(tokens.size());
  CHECK_GE(n, 2);
  reserve_rows(n);
  verify_base_ = seq_.position();
  seq_.mark(n);
  chunk_tokens_.assign(tokens.begin(), tokens.end());
  verifying_ = true;
  StepChunk c;
  c.sequence = &seq_;
  c.tokens = chunk_tokens_;
  c.all_logits = true;
  c.hidden = rows(0, n);
  return c;
}

void SpeculativeSequence::resolve(int accepted) {
  CHECK(verifying_) << "resolve without a verify chunk";
  const int k = int(chunk_tokens_.size()) - 1;
  CHECK(accepted >= 0 && accepted <= k) << "accepted " << accepted << " of " << k << " drafts";
  CHECK_EQ(seq_.position(), verify_base_ + k + 1);
  if (accepted < k) {
    seq_.rollback(verify_base_ + accepted + 1);
  } else {
    seq_.release();
  }
  num_pending_ = accepted + 1;  // streams of positions base .. base+accepted
  pending_next_.assign(chunk_tokens_.begin() + 1, chunk_tokens_.begin() + 1 + accepted);
  verifying_ = false;
}

// ------------------------------------------------------------------------------------------------
// SpeculativeSampler
// ------------------------------------------------------------------------------------------------

SpeculativeSampler::SpeculativeSampler(const SamplerOptions& options, SpeculativeOptions::Rule rule)
    : options_(options), rule_(rule), rng_(options.seed) {
  V4RT_REQUIRE(options.top_p > 0.0 && options.top_p <= 1.0, "top_p " << options.top_p << " must be in (0, 1]");
}

std::vector<double> SpeculativeSampler::dist(std::span<const float> logits) const {
  return sampling_distribution(logits, options_.temperature, options_.top_p);
}

int32_t SpeculativeSampler::sample(std::span<const float> logits) {
  return greedy() ? argmax(logits) : draw(dist(logits));
}

int32_t SpeculativeSampler::draft(std::span<const float> draft_logits) {
  if (greedy()) return argmax(draft_logits);
  q_.push_back(dist(draft_logits));
  return draw(q_.back());
}

SpeculativeSampler::Verdict SpeculativeSampler::verify(std::span<const float> logits, std::span<const int32_t> drafts) {
  const size_t k = drafts.size();
  CHECK_EQ(logits.size() % (k + 1), 0u);
  const size_t vocab = logits.size() / (k + 1);
  auto row = [&](size_t i) { return logits.subspan(i * vocab, vocab); };
  CHECK(greedy() || q_.size() == k) << q_.size() << " draft distributions for " << k << " drafts";
  Verdict v;
  for (size_t i = 0; i < k && v.next < 0; ++i) {
    const int32_t d = drafts[i];
    if (greedy()) {
      const int32_t target = argmax(row(i));
      if (d == target) {
        ++v.accepted;
      } else {
        v.next = target;
      }
      continue;
    }
    const std::vector<double> p = dist(row(i));
    const std::vector<double>& qi = q_[i];
    if (uniform() * qi[size_t(d)] < p[size_t(d)]) {  // accept with probability min(1, p/q)
      ++v.accepted;
      continue;
    }
    if (rule_ == SpeculativeOptions::Rule::kResampleFromTarget) {
      v.next = draw(p);
    } else {
      std::vector<double> r(p.size());
      double mass = 0.0;
      for (size_t j = 0; j < r.size(); ++j) mass += (r[j] = std::max(0.0, p[j] - qi[j]));
      v.next = draw(mass > 0.0 ? r : p);
    }
  }
  if (v.next < 0) v.next = sample(row(k));
  q_.clear();
  return v;
}

// ------------------------------------------------------------------------------------------------
// SpeculativeDecoder
// ------------------------------------------------------------------------------------------------

SpeculativeDecoder::SpeculativeDecoder(Model& model, Mtp& mtp, const SpeculativeOptions& options)
    : model_(model), mtp_(mtp), options_(options), sampler_(options.sampler, options.rule) {
  V4RT_REQUIRE(options.depth >= 1 && options.depth <= max_draft_depth(model.config()),
               "draft depth " << options.depth << " must be in [1, " << max_draft_depth(model.config()) << "]");
  V4RT_REQUIRE(options.prefill_chunk >= 1, "prefill chunk must be >= 1");
}

int32_t SpeculativeDecoder::start(std::span<const int32_t> prompt) {
  V4RT_REQUIRE(!prompt.empty(), "empty prompt");
  spec_.reset();
  seq_ = model_.new_sequence();
  spec_ = std::make_unique<SpeculativeSequence>(model_, mtp_, *seq_);
  tokens_.assign(prompt.begin(), prompt.end());
  std::vector<std::vector<float>> logits;
  const int64_t s = int64_t(prompt.size());
  for (int64_t b = 0; b < s; b += options_.prefill_chunk) {
    const int64_t e = std::min<int64_t>(s, b + options_.prefill_chunk);
    const StepChunk c = spec_->prompt_chunk(prompt.subspan(size_t(b), size_t(e - b)), false);
    model_.step(std::span<const StepChunk>(&c, 1), e == s ? &logits : nullptr);
    spec_->after_prompt_chunk();
  }
  const int32_t first = sampler_.sample(logits[0]);
  tokens_.push_back(first);
  return first;
}

void SpeculativeDecoder::step(std::vector<int32_t>* out) {
  CHECK(seq_) << "step before start";
  const int k = options_.depth;
  const int64_t n = seq_->position();
  CHECK_EQ(int64_t(tokens_.size()), n + 1);

  // --- draft ---
  const double t0 = now_s();
  std::vector<int32_t> chunk = {tokens_[size_t(n)]};
  std::vector<float> qlog;
  for (int level = 1; level <= k; ++level) {
    spec_->draft(level, k, chunk.back(), &qlog);
    chunk.push_back(sampler_.draft(qlog));
  }
  if (sampler_.greedy() && options_.replace_drafts) {
    std::vector<int32_t> d(chunk.begin() + 1, chunk.end());
    options_.replace_drafts(n + 1, d);
    CHECK_EQ(d.size(), size_t(k));
    std::copy(d.begin(), d.end(), chunk.begin() + 1);
  }
  const double t1 = now_s();
  stats_.draft_s += t1 - t0;

  // --- verify ---
  std::vector<std::vector<float>> logits;
  const StepChunk c = spec_->verify_chunk(chunk);
  model_.step(std::span<const StepChunk>(&c, 1), &logits);
  const SpeculativeSampler::Verdict v =
      sampler_.verify(logits[0], std::span<const int32_t>(chunk).subspan(1));
  spec_->resolve(v.accepted);
  for (int i = 1; i <= v.accepted; ++i) {
    tokens_.push_back(chunk[size_t(i)]);
    out->push_back(chunk[size_t(i)]);
  }
  tokens_.push_back(v.next);
  out->push_back(v.next);
  stats_.verify_s += now_s() - t1;
  stats_.steps += 1;
  stats_.drafted += k;
  stats_.accepted += v.accepted;
  stats_.emitted += v.accepted + 1;
}

std::vector<int32_t> SpeculativeDecoder::generate(std::span<const int32_t> prompt, int max_tokens, int64_t eos) {
  std::vector<int32_t> out;
  if (max_tokens <= 0) return out;
  out.push_back(start(prompt));
  std::vector<int32_t> more;
  while (int(out.size()) < max_tokens && out.back() != eos) {
    more.clear();
    step(&more);
    for (int32_t t : more) {
      if (int(out.size()) == max_tokens || out.back() == eos) break;
      out.push_back(t);
    }
  }
  return out;
}

}  // namespace v4rt::model
