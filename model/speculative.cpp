// SPDX-License-Identifier: MIT
// Speculative decoding with the MTP draft (see speculative.h).
//
// Positions: the main model has processed tokens [0, N) and tokens_[N] is decided but not yet
// processed. The MTP state has processed the pairs (streams of position i, token i+1) for
// i < N - num_pending_; the streams of the last num_pending_ positions wait in `pending_`. A step
// feeds them (the last pair uses tokens_[N]), drafts d1..dk, verifies [tokens_[N], d1..dk] at
// positions N..N+k and keeps the streams of the accepted positions as the next pending rows.
#include "model/speculative.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>

#include <glog/logging.h>

#include "common/check.h"

namespace v4rt::model {

namespace {

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

}  // namespace

std::vector<double> sampling_distribution(std::span<const float> logits, double temperature, double top_p) {
  CHECK(!logits.empty());
  std::vector<double> p(logits.size(), 0.0);
  if (temperature <= 0.0) {
    p[size_t(argmax(logits))] = 1.0;
    return p;
  }
  const double mx = logits[size_t(argmax(logits))];
  for (size_t i = 0; i < p.size(); ++i) p[i] = std::exp((double(logits[i]) - mx) / temperature);
  if (top_p >= 1.0) {  // the whole vocabulary: no sort
    const double total = std::accumulate(p.begin(), p.end(), 0.0);
    for (double& v : p) v /= total;
    return p;
  }
  std::vector<int32_t> order(p.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return p[size_t(a)] > p[size_t(b)]; });
  const double total = std::accumulate(p.begin(), p.end(), 0.0);
  size_t keep = 0;
  double mass = 0.0;
  while (keep < order.size()) {  // the nucleus, exactly as Sampler::sample
    mass += p[size_t(order[keep])];
    ++keep;
    if (mass >= top_p * total) break;
  }
  for (size_t i = keep; i < order.size(); ++i) p[size_t(order[i])] = 0.0;
  for (size_t i = 0; i < keep; ++i) p[size_t(order[i])] /= mass;
  return p;
}

SpeculativeDecoder::SpeculativeDecoder(Model& model, Mtp& mtp, const SpeculativeOptions& options)
    : model_(model), mtp_(mtp), options_(options), rng_(options.sampler.seed) {
  V4RT_REQUIRE(options.depth >= 1 && options.depth < model.config().sliding_window - 1,
               "draft depth " << options.depth << " must be in [1, " << model.config().sliding_window - 2 << ")");
  V4RT_REQUIRE(options.sampler.top_p > 0.0 && options.sampler.top_p <= 1.0, "top_p " << options.sampler.top_p << " must be in (0, 1]");
  V4RT_REQUIRE(options.prefill_chunk >= 1, "prefill chunk must be >= 1");
  const ModelConfig& cfg = model.config();
  const int64_t row = int64_t(cfg.hc_mult) * cfg.hidden_size;
  pending_capacity_ = std::max<int64_t>(options.prefill_chunk, options.depth + 1) + 1;
  pending_ = model.backend().alloc(size_t(pending_capacity_ * row) * sizeof(float));
  draft_hidden_ = model.backend().alloc(size_t(2 * row) * sizeof(float));
}

double SpeculativeDecoder::uniform() { return double(rng_() >> 11) * (1.0 / 9007199254740992.0); }

int32_t SpeculativeDecoder::draw(const std::vector<double>& dist) {
  double total = 0.0;
  int32_t last = -1;
  for (size_t i = 0; i < dist.size(); ++i) {
    total += dist[i];
    if (dist[i] > 0.0) last = int32_t(i);
  }
  CHECK(last >= 0 && total > 0.0) << "empty distribution";
  double r = uniform() * total;
  for (size_t i = 0; i < dist.size(); ++i) {
    if (dist[i] <= 0.0) continue;
    r -= dist[i];
    if (r < 0.0) return int32_t(i);
  }
  return last;
}

std::vector<double> SpeculativeDecoder::dist(std::span<const float> logits) const {
  return sampling_distribution(logits, options_.sampler.temperature, options_.sampler.top_p);
}

TensorView SpeculativeDecoder::pending_rows(int64_t begin, int64_t end) const {
  const ModelConfig& cfg = model_.config();
  CHECK(begin >= 0 && begin <= end && end <= pending_capacity_);
  const int64_t row = int64_t(cfg.hc_mult) * cfg.hidden_size;
  return TensorView(static_cast<float*>(pending_.data()) + begin * row, DType::kF32, {end - begin, cfg.hc_mult, cfg.hidden_size},
                    model_.backend().device());
}

int32_t SpeculativeDecoder::start(std::span<const int32_t> prompt) {
  V4RT_REQUIRE(!prompt.empty(), "empty prompt");
  seq_ = model_.new_sequence();
  mtp_state_ = mtp_.new_state();
  tokens_.assign(prompt.begin(), prompt.end());
  num_pending_ = 0;
  const ModelConfig& cfg = model_.config();
  const int64_t row = int64_t(cfg.hc_mult) * cfg.hidden_size;
  std::vector<std::vector<float>> logits;
  const int64_t s = int64_t(prompt.size());
  for (int64_t b = 0; b < s; b += options_.prefill_chunk) {
    const int64_t e = std::min<int64_t>(s, b + options_.prefill_chunk);
    StepChunk c;
    c.sequence = seq_.get();
    c.tokens = prompt.subspan(size_t(b), size_t(e - b));
    c.hidden = pending_rows(num_pending_, num_pending_ + (e - b));
    model_.step(std::span<const StepChunk>(&c, 1), e == s ? &logits : nullptr);
    num_pending_ += e - b;
    if (e < s) {  // the MTP takes every pair whose next token is known; the last row waits
      const int64_t p0 = mtp_state_->position();
      if (num_pending_ > 1)
        mtp_.forward(*mtp_state_, pending_rows(0, num_pending_ - 1),
                     std::span<const int32_t>(tokens_).subspan(size_t(p0 + 1), size_t(num_pending_ - 1)), nullptr);
      kernels::Backend& be = model_.backend();
      if (num_pending_ > 1)
        be.copy_rows(kernels::view_reshape(pending_rows(0, 1), {1, row}),
                     kernels::view_reshape(pending_rows(num_pending_ - 1, num_pending_), {1, row}));
      num_pending_ = 1;
    }
  }
  const int32_t first = draw(dist(logits[0]));
  tokens_.push_back(first);
  return first;
}

void SpeculativeDecoder::step(std::vector<int32_t>* out) {
  CHECK(seq_) << "step before start";
  const ModelConfig& cfg = model_.config();
  const int64_t vocab = cfg.vocab_size;
  const int k = options_.depth;
  const int64_t n = seq_->position();
  CHECK_EQ(int64_t(tokens_.size()), n + 1);
  CHECK_EQ(mtp_state_->position() + num_pending_, n);
  const bool greedy = options_.sampler.temperature <= 0.0;

  // --- draft ---
  double t0 = now_s();
  const int64_t row = int64_t(cfg.hc_mult) * cfg.hidden_size;
  auto hidden_row = [&](int i) {
    return TensorView(static_cast<float*>(draft_hidden_.data()) + i * row, DType::kF32, {1, cfg.hc_mult, cfg.hidden_size},
                      model_.backend().device());
  };
  std::vector<int32_t> chunk = {tokens_[size_t(n)]};
  std::vector<std::vector<double>> q;  // draft distributions (sampled mode)
  std::vector<float> qlog;
  mtp_.forward(*mtp_state_, pending_rows(0, num_pending_),
               std::span<const int32_t>(tokens_).subspan(size_t(n - num_pending_ + 1), size_t(num_pending_)), &qlog,
               k > 1 ? hidden_row(0) : TensorView());
  if (k > 1) mtp_state_->mark(k - 1);
  for (int i = 1; i <= k; ++i) {
    if (i > 1) {
      const int32_t prev = chunk.back();
      mtp_.forward(*mtp_state_, hidden_row((i - 2) % 2), std::span<const int32_t>(&prev, 1), &qlog,
                   i < k ? hidden_row((i - 1) % 2) : TensorView());
    }
    if (greedy) {
      chunk.push_back(argmax(qlog));
    } else {
      q.push_back(dist(qlog));
      chunk.push_back(draw(q.back()));
    }
  }
  if (k > 1) mtp_state_->rollback(n);  // the chained positions held drafted streams
  if (greedy && options_.replace_drafts) {
    std::vector<int32_t> d(chunk.begin() + 1, chunk.end());
    options_.replace_drafts(n + 1, d);
    CHECK_EQ(d.size(), size_t(k));
    std::copy(d.begin(), d.end(), chunk.begin() + 1);
  }
  num_pending_ = 0;
  double t1 = now_s();
  stats_.draft_s += t1 - t0;

  // --- verify ---
  seq_->mark(k + 1);
  std::vector<std::vector<float>> logits;
  StepChunk c;
  c.sequence = seq_.get();
  c.tokens = chunk;
  c.all_logits = true;
  c.hidden = pending_rows(0, k + 1);
  model_.step(std::span<const StepChunk>(&c, 1), &logits);
  const std::vector<float>& lg = logits[0];
  auto row_logits = [&](int i) { return std::span<const float>(lg.data() + size_t(i) * size_t(vocab), size_t(vocab)); };
  int accepted = 0;
  int32_t next = -1;
  for (int i = 1; i <= k && next < 0; ++i) {
    const int32_t d = chunk[size_t(i)];
    if (greedy) {
      const int32_t target = argmax(row_logits(i - 1));
      if (d == target) {
        ++accepted;
      } else {
        next = target;
      }
      continue;
    }
    const std::vector<double> p = dist(row_logits(i - 1));
    const std::vector<double>& qi = q[size_t(i - 1)];
    if (uniform() * qi[size_t(d)] < p[size_t(d)]) {  // accept with probability min(1, p/q)
      ++accepted;
      continue;
    }
    if (options_.rule == SpeculativeOptions::Rule::kResampleFromTarget) {
      next = draw(p);
    } else {
      std::vector<double> r(p.size());
      double mass = 0.0;
      for (size_t j = 0; j < r.size(); ++j) mass += (r[j] = std::max(0.0, p[j] - qi[j]));
      next = draw(mass > 0.0 ? r : p);
    }
  }
  if (next < 0) next = greedy ? argmax(row_logits(k)) : draw(dist(row_logits(k)));
  if (accepted < k) {
    seq_->rollback(n + accepted + 1);
  } else {
    seq_->release();
  }
  num_pending_ = accepted + 1;  // streams of positions n .. n+accepted
  for (int i = 1; i <= accepted; ++i) {
    tokens_.push_back(chunk[size_t(i)]);
    out->push_back(chunk[size_t(i)]);
  }
  tokens_.push_back(next);
  out->push_back(next);
  stats_.verify_s += now_s() - t1;
  stats_.steps += 1;
  stats_.drafted += k;
  stats_.accepted += accepted;
  stats_.emitted += accepted + 1;
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
