// SPDX-License-Identifier: MIT
// Helpers shared by the MTP tests: a synthetic checkpoint with an MTP block written into a temp dir,
// the loaded model + MTP block on the CPU backend, plain (non-speculative) greedy decoding, and the
// chi-square upper tail.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "model/checkpoint.h"
#include "model/model.h"
#include "model/mtp.h"
#include "model/presets.h"
#include "model/sampler.h"
#include "model/synthetic.h"
#include "tests/model/test_util.h"

namespace v4rt::model::testing {

// The tiny preset, with or without an MTP block; vocab_size > 0 replaces the 129,280-token
// vocabulary (a small one writes and loads fast).
inline ModelConfig tiny_config(int64_t vocab_size = 0, bool mtp = false) {
  ModelConfig c = preset_config("tiny", mtp);
  if (vocab_size > 0) c.vocab_size = vocab_size;
  validate(c, "test config");
  return c;
}
inline ModelConfig tiny_mtp_config(int64_t vocab_size = 0) { return tiny_config(vocab_size, /*mtp=*/true); }

// A checkpoint written into its own temp dir, loaded on the CPU backend, with its MTP block when
// the config has one.
struct LoadedModel {
  TempDir dir;
  std::unique_ptr<kernels::Backend> backend;
  std::unique_ptr<Checkpoint> ckpt;
  std::unique_ptr<Model> model;
  std::unique_ptr<Mtp> mtp;

  explicit LoadedModel(const ModelConfig& config, uint64_t seed = 1) {
    SyntheticOptions so;
    so.seed = seed;
    write_synthetic_checkpoint(config, dir.str(), so);
    backend = kernels::make_cpu_backend();
    ckpt = Checkpoint::open(dir.str());
    model = Model::load(*ckpt, ModelOptions{}, *backend);
    if (config.num_nextn_predict_layers > 0) mtp = Mtp::load(*ckpt, *model);
  }
};

// Logits of one chunk appended to `seq`.
inline std::vector<float> step_logits(Model& m, SequenceState& seq, const std::vector<int32_t>& tokens,
                                      bool all = false) {
  StepChunk c;
  c.sequence = &seq;
  c.tokens = tokens;
  c.all_logits = all;
  std::vector<std::vector<float>> out;
  m.step(std::span<const StepChunk>(&c, 1), &out);
  return out[0];
}

// Greedy decoding without drafts: prefill, then one token per step (as `v4rt generate`).
inline std::vector<int32_t> plain_greedy(Model& m, const std::vector<int32_t>& prompt, int max_tokens) {
  auto seq = m.new_sequence();
  std::vector<float> lg = step_logits(m, *seq, prompt);
  std::vector<int32_t> out;
  for (int i = 0; i < max_tokens; ++i) {
    out.push_back(argmax(lg));
    if (i + 1 < max_tokens) lg = step_logits(m, *seq, {out.back()});
  }
  return out;
}

// Deterministic prompts over [2, vocab).
inline std::vector<int32_t> test_prompt(int64_t vocab, int length, uint32_t salt) {
  std::vector<int32_t> p;
  uint64_t z = 0x9e3779b97f4a7c15ull * (salt + 1);
  for (int i = 0; i < length; ++i) {
    z = z * 6364136223846793005ull + 1442695040888963407ull;
    p.push_back(int32_t(2 + (z >> 33) % uint64_t(vocab - 2)));
  }
  return p;
}

// Q(a, x): the regularized upper incomplete gamma function (series below a+1, continued fraction
// above; Numerical Recipes gser/gcf), so the chi-square p-value is Q(df/2, chi2/2).
inline double gamma_q(double a, double x) {
  if (x <= 0.0) return 1.0;
  const double gln = std::lgamma(a);
  if (x < a + 1.0) {
    double ap = a, sum = 1.0 / a, del = sum;
    for (int n = 0; n < 10000; ++n) {
      ap += 1.0;
      del *= x / ap;
      sum += del;
      if (std::fabs(del) < std::fabs(sum) * 1e-15) break;
    }
    return 1.0 - sum * std::exp(-x + a * std::log(x) - gln);
  }
  double b = x + 1.0 - a, c = 1.0 / 1e-300, d = 1.0 / b, h = d;
  for (int i = 1; i < 10000; ++i) {
    const double an = -i * (i - a);
    b += 2.0;
    d = an * d + b;
    if (std::fabs(d) < 1e-300) d = 1e-300;
    c = b + an / c;
    if (std::fabs(c) < 1e-300) c = 1e-300;
    d = 1.0 / d;
    const double del = d * c;
    h *= del;
    if (std::fabs(del - 1.0) < 1e-15) break;
  }
  return std::exp(-x + a * std::log(x) - gln) * h;
}

// Pearson chi-square goodness of fit of `counts` (n samples) against probabilities `expected`;
// cells with expected count < 5 are pooled into one. Returns the p-value; *df_out the degrees.
inline double chi_square_p(const std::vector<int64_t>& counts, const std::vector<double>& expected, int* df_out = nullptr) {
  int64_t n = 0;
  for (int64_t c : counts) n += c;
  double chi2 = 0.0, pool_e = 0.0;
  int64_t pool_c = 0;
  int cells = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    const double e = expected[i] * double(n);
    if (e < 5.0) {
      pool_e += e;
      pool_c += counts[i];
      continue;
    }
    chi2 += (double(counts[i]) - e) * (double(counts[i]) - e) / e;
    ++cells;
  }
  if (pool_e > 0.0 || pool_c > 0) {
    const double e = std::max(pool_e, 1e-12);
    chi2 += (double(pool_c) - e) * (double(pool_c) - e) / e;
    ++cells;
  }
  const int df = std::max(1, cells - 1);
  if (df_out) *df_out = df;
  return gamma_q(0.5 * df, 0.5 * chi2);
}

}  // namespace v4rt::model::testing
