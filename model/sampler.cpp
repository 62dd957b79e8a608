// SPDX-License-Identifier: MIT
// Greedy / temperature / top-p sampling (see sampler.h).
#include "model/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "common/check.h"

namespace v4rt::model {

int32_t argmax(std::span<const float> logits) {
  CHECK(!logits.empty());
  int32_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i)
    if (logits[i] > logits[size_t(best)]) best = int32_t(i);
  return best;
}

Sampler::Sampler(const SamplerOptions& options) : options_(options), rng_(options.seed) {
  V4RT_REQUIRE(options.top_p > 0.0 && options.top_p <= 1.0, "top_p " << options.top_p << " must be in (0, 1]");
}

double Sampler::uniform() { return double(rng_() >> 11) * (1.0 / 9007199254740992.0); }

int32_t Sampler::sample(std::span<const float> logits) {
  if (options_.temperature <= 0.0) return argmax(logits);
  const double mx = logits[size_t(argmax(logits))];
  std::vector<double> p(logits.size());
  for (size_t i = 0; i < p.size(); ++i) p[i] = std::exp((double(logits[i]) - mx) / options_.temperature);
  std::vector<int32_t> order(p.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return p[size_t(a)] > p[size_t(b)]; });
  const double total = std::accumulate(p.begin(), p.end(), 0.0);
  // Nucleus: the smallest prefix (by descending probability) whose mass reaches top_p.
  size_t keep = 0;
  double mass = 0.0;
  while (keep < order.size()) {
    mass += p[size_t(order[keep])];
    ++keep;
    if (mass >= options_.top_p * total) break;
  }
  double r = uniform() * mass;
  for (size_t i = 0; i < keep; ++i) {
    r -= p[size_t(order[i])];
    if (r < 0.0) return order[i];
  }
  return order[keep - 1];
}

}  // namespace v4rt::model
