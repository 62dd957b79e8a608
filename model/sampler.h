// SPDX-License-Identifier: MIT
// Token sampling from logits: greedy (temperature <= 0), temperature, and nucleus (top-p). Seeded
// and deterministic: the same seed and logits give the same tokens on every platform (own
// uniform draw from a 64-bit Mersenne Twister, ties broken by the lower token id).
#pragma once

#include <cstdint>
#include <random>
#include <span>

namespace v4rt::model {

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
  double uniform();  // [0, 1)
  SamplerOptions options_;
  std::mt19937_64 rng_;
};

int32_t argmax(std::span<const float> logits);  // first maximum

}  // namespace v4rt::model
