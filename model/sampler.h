// SPDX-License-Identifier: MIT
// Token sampling from logits: greedy (temperature <= 0), temperature, and nucleus (top-p). Seeded
// and deterministic: the same seed and logits give the same tokens on every platform (own
// uniform draw from a 64-bit Mersenne Twister, ties broken by the lower token id).
// The pieces Sampler is made of (the weights after temperature, the nucleus, the uniform draw) are
// public so that speculative decoding (model/speculative.h) samples from exactly the same
// distribution.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <utility>
#include <vector>

namespace v4rt::model {

// Log-probabilities of a decided token under `logits` (OpenAI's logprobs / top_logprobs).
struct TokenLogprobs {
  float logprob = 0;                           // log-softmax of the token
  std::vector<std::pair<int32_t, float>> top;  // the best top_n tokens, best first (ties: lower id first)
};
TokenLogprobs token_logprobs(std::span<const float> logits, int32_t token, int top_n);

struct SamplerOptions {
  double temperature = 0.0;  // <= 0: greedy
  double top_p = 1.0;        // (0, 1]
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplerOptions& options);
  int32_t sample(std::span<const float> logits);

 private:
  SamplerOptions options_;
  std::mt19937_64 rng_;
};

int32_t argmax(std::span<const float> logits);  // first maximum

// [0, 1) from the top 53 bits of one draw.
double uniform_draw(std::mt19937_64& rng);

// Unnormalised sampling weights exp((logit - max) / temperature) [vocab]; temperature > 0.
std::vector<double> sampling_weights(std::span<const float> logits, double temperature);

// The nucleus of `weights`: the smallest prefix of the ids by descending weight (ties: lower id
// first) whose mass reaches top_p of the total.
struct Nucleus {
  std::vector<int32_t> order;  // every id, descending weight; the nucleus is order[0, keep)
  size_t keep = 0;
  double mass = 0.0;           // sum of the nucleus weights
};
Nucleus nucleus_of(const std::vector<double>& weights, double top_p);

// The probabilities Sampler samples from: softmax(logits / temperature) restricted to the nucleus,
// renormalised. temperature <= 0: one-hot on the argmax.
std::vector<double> sampling_distribution(std::span<const float> logits, double temperature, double top_p);

// An id drawn from the (not necessarily normalised) non-negative `weights` in id order with the
// uniform `u` in [0, 1).
int32_t draw_index(std::span<const double> weights, double u);

}  // namespace v4rt::model
