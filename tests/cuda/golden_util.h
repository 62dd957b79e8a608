// SPDX-License-Identifier: MIT
// golden/tiny-a for the whole-model tests of this folder (reference tensors and the relative
// Frobenius error from tests/golden_util.h): a driver that feeds the golden ids through
// Model::step (prefill in chunks, then one token at a time) and an observer that keeps the
// per-layer residual-stream errors.
#pragma once

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "kernels/backend.h"
#include "model/model.h"
#include "tests/golden_util.h"

namespace v4rt::model::golden_util {

inline std::string case_dir() { return v4rt::testing::golden_case_dir("tiny-a"); }
inline const v4rt::testing::GoldenReference& golden() { return v4rt::testing::golden_reference("tiny-a"); }
using v4rt::testing::rel_err;

// Feeds ids [0, len): the prompt [0, prompt) in chunks (`chunks`, the last one repeating; empty =
// one chunk), then one token at a time. Returns the logits after every token, [len, vocab].
inline std::vector<float> run(Model& m, int64_t len, int64_t prompt, std::vector<int64_t> chunks) {
  const auto& ids = golden().ids;
  const int64_t vocab = m.config().vocab_size;
  if (chunks.empty()) chunks = {prompt};
  auto seq = m.new_sequence();
  std::vector<float> all(size_t(len * vocab));
  const auto t0 = std::chrono::steady_clock::now();
  int64_t pos = 0;
  size_t ci = 0;
  while (pos < len) {
    int64_t n = 1;
    if (pos < prompt) n = std::min(chunks[std::min(ci++, chunks.size() - 1)], prompt - pos);
    StepChunk c{seq.get(), std::span<const int32_t>(ids.data() + pos, size_t(n)), true, {}};
    std::vector<std::vector<float>> logits;
    m.step(std::span<const StepChunk>(&c, 1), &logits);
    if (logits[0].size() != size_t(n * vocab)) return {};
    std::memcpy(all.data() + pos * vocab, logits[0].data(), logits[0].size() * 4);
    pos += n;
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("  [run len=%lld prompt=%lld: %.3f s]\n", static_cast<long long>(len), static_cast<long long>(prompt),
              secs);
  return all;
}

inline double prefill_err(const std::vector<float>& all) {
  const auto& ref = golden().f32.at("prefill_logits");
  return all.size() < ref.size() ? 1e9 : rel_err(all.data(), ref.data(), ref.size());
}

inline double decode_err(const std::vector<float>& all, int64_t vocab) {
  const auto& ref = golden().f32.at("decode_logits");
  return all.size() < size_t(520 * vocab) + ref.size() ? 1e9 : rel_err(all.data() + 520 * vocab, ref.data(), ref.size());
}

// An observer for a one-chunk 520-token prefill: the error of the 4 residual streams of the last
// 32 positions after every layer against prefill_hidden_after_layer_L.
inline LayerObserver hidden_error_observer(kernels::Backend& backend, int64_t hc, int64_t hidden,
                                           std::map<int, double>* errs) {
  return [&backend, hc, hidden, errs](int layer, int64_t pos_begin, const TensorView& x) {
    const int64_t n = x.shape[0];
    if (pos_begin != 0 || n != 520) return;
    const size_t count = size_t(32 * hc * hidden);
    const size_t es = dtype_size(x.dtype);
    std::vector<uint8_t> raw(count * es);
    backend.copy_to_host(raw.data(), static_cast<const uint8_t*>(x.data) + size_t((n - 32) * hc * hidden) * es,
                         raw.size());
    std::vector<float> host(count);
    for (size_t i = 0; i < count; ++i) {
      if (x.dtype == DType::kF32) {
        std::memcpy(&host[i], raw.data() + 4 * i, 4);
      } else {
        uint16_t h;
        std::memcpy(&h, raw.data() + 2 * i, 2);
        host[i] = bf16_to_f32(h);
      }
    }
    const auto& ref = golden().f32.at("prefill_hidden_after_layer_" + std::to_string(layer));
    (*errs)[layer] = rel_err(host.data(), ref.data(), ref.size());
  };
}

}  // namespace v4rt::model::golden_util
