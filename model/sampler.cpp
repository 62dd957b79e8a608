// SPDX-License-Identifier: MIT
// Greedy / temperature / top-p sampling (see sampler.h).
#include "model/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "common/check.h"

namespace v4rt::model {

int32_t argmax(std::span<const float> logits) {
  CHECK(!logits.empty());
  int32_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i)
    if (logits[i] > logits[size_t(best)]) best = int32_t(i);
  return best;
}

double uniform_draw(std::mt19937_64& rng) { return double(rng() >> 11) * (1.0 / 9007199254740992.0); }

std::vector<double> sampling_weights(std::span<const float> logits, double temperature) {
  CHECK(temperature > 0.0 && !logits.empty());
  const double mx = logits[size_t(argmax(logits))];
  std::vector<double> p(logits.size());
  for (size_t i = 0; i < p.size(); ++i) p[i] = std::exp((double(logits[i]) - mx) / temperature);
  return p;
}

namespace {

// Ids by descending weight, equal weights in id order: the order of a stable sort by `>`. Large
// vocabularies go through a stable LSD radix sort of the weights' bits (non-negative finite
// doubles order as their bit patterns), 4 passes of 16 bits, each skipped when every key shares
// the digit: about ten times faster than the comparison sort on 129K ids, with the same order.
std::vector<int32_t> descending_order(const std::vector<double>& p) {
  std::vector<int32_t> order(p.size());
  std::iota(order.begin(), order.end(), 0);
  const bool radix = p.size() >= 4096 && std::all_of(p.begin(), p.end(), [](double v) { return v >= 0.0 && std::isfinite(v); });
  if (!radix) {
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return p[size_t(a)] > p[size_t(b)]; });
    return order;
  }
  constexpr int kBits = 16, kBuckets = 1 << kBits;
  // Scratch kept per thread: fresh megabyte buffers cost more in page faults than a pass.
  thread_local std::vector<uint64_t> key, key_tmp;
  thread_local std::vector<int32_t> tmp;
  key.resize(p.size());
  key_tmp.resize(p.size());
  tmp.resize(p.size());
  for (size_t i = 0; i < p.size(); ++i) {
    uint64_t bits;
    std::memcpy(&bits, &p[i], sizeof(bits));
    key[i] = ~bits;  // ascending key = descending weight
  }
  std::vector<size_t> count(kBuckets);
  for (int shift = 0; shift < 64; shift += kBits) {
    std::fill(count.begin(), count.end(), 0);
    for (uint64_t k : key) ++count[(k >> shift) & (kBuckets - 1)];
    if (count[(key[0] >> shift) & (kBuckets - 1)] == key.size()) continue;  // one digit value
    size_t sum = 0;
    for (size_t& c : count) {
      const size_t n = c;
      c = sum;
      sum += n;
    }
    for (size_t i = 0; i < key.size(); ++i) {
      const size_t at = count[(key[i] >> shift) & (kBuckets - 1)]++;
      key_tmp[at] = key[i];
      tmp[at] = order[i];
    }
    key.swap(key_tmp);
    order.swap(tmp);
  }
  return order;
}

}  // namespace

Nucleus nucleus_of(const std::vector<double>& p, double top_p) {
  Nucleus n;
  n.order = descending_order(p);
  const double total = std::accumulate(p.begin(), p.end(), 0.0);
  while (n.keep < n.order.size()) {
    n.mass += p[size_t(n.order[n.keep])];
    ++n.keep;
    if (n.mass >= top_p * total) break;
  }
  return n;
}

std::vector<double> sampling_distribution(std::span<const float> logits, double temperature, double top_p) {
  CHECK(!logits.empty());
  if (temperature <= 0.0) {
    std::vector<double> p(logits.size(), 0.0);
    p[size_t(argmax(logits))] = 1.0;
    return p;
  }
  std::vector<double> p = sampling_weights(logits, temperature);
  if (top_p >= 1.0) {  // the whole vocabulary: no sort
    const double total = std::accumulate(p.begin(), p.end(), 0.0);
    for (double& v : p) v /= total;
    return p;
  }
  const Nucleus n = nucleus_of(p, top_p);
  for (size_t i = n.keep; i < n.order.size(); ++i) p[size_t(n.order[i])] = 0.0;
  for (size_t i = 0; i < n.keep; ++i) p[size_t(n.order[i])] /= n.mass;
  return p;
}

int32_t draw_index(std::span<const double> weights, double u) {
  double total = 0.0;
  int32_t last = -1;
  for (size_t i = 0; i < weights.size(); ++i) {
    total += weights[i];
    if (weights[i] > 0.0) last = int32_t(i);
  }
  CHECK(last >= 0 && total > 0.0) << "empty distribution";
  double r = u * total;
  for (size_t i = 0; i < weights.size(); ++i) {
    if (weights[i] <= 0.0) continue;
    r -= weights[i];
    if (r < 0.0) return int32_t(i);
  }
  return last;
}

Sampler::Sampler(const SamplerOptions& options) : options_(options), rng_(options.seed) {
  V4RT_REQUIRE(options.top_p > 0.0 && options.top_p <= 1.0, "top_p " << options.top_p << " must be in (0, 1]");
}

int32_t Sampler::sample(std::span<const float> logits) {
  if (options_.temperature <= 0.0) return argmax(logits);
  const std::vector<double> p = sampling_weights(logits, options_.temperature);
  const Nucleus n = nucleus_of(p, options_.top_p);
  // Draw in nucleus order (descending weight), so the seeded results never depend on the tail.
  double r = uniform_draw(rng_) * n.mass;
  for (size_t i = 0; i < n.keep; ++i) {
    r -= p[size_t(n.order[i])];
    if (r < 0.0) return n.order[i];
  }
  return n.order[n.keep - 1];
}

TokenLogprobs token_logprobs(std::span<const float> logits, int32_t token, int top_n) {
  TokenLogprobs out;
  float max_v = -INFINITY;
  for (float v : logits) max_v = std::max(max_v, v);
  double sum = 0;
  for (float v : logits) sum += std::exp(double(v) - max_v);
  const double log_z = double(max_v) + std::log(sum);
  out.logprob = float(double(logits[size_t(token)]) - log_z);
  if (top_n <= 0) return out;
  std::vector<int32_t> idx(logits.size());
  std::iota(idx.begin(), idx.end(), 0);
  const size_t n = std::min(idx.size(), size_t(top_n));
  std::partial_sort(idx.begin(), idx.begin() + ptrdiff_t(n), idx.end(), [&](int32_t a, int32_t b) {
    return logits[size_t(a)] > logits[size_t(b)] || (logits[size_t(a)] == logits[size_t(b)] && a < b);
  });
  for (size_t i = 0; i < n; ++i) out.top.emplace_back(idx[i], float(double(logits[size_t(idx[i])]) - log_z));
  return out;
}

}  // namespace v4rt::model
