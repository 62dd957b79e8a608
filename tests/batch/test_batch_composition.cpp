// SPDX-License-Identifier: MIT
// Batching must not change results: Model::step on the embedded tiny model gives bit-identical
// logits for a sequence whether it runs alone in one prefill chunk or shares its steps with other
// sequences while its prompt is split into chunks of another size. (A batch job's outputs then
// depend only on the input, the seed and the layout, not on how requests were grouped.)
#include <gtest/gtest.h>

#include <cstring>

#include "kernels/backend.h"
#include "model/checkpoint.h"
#include "model/model.h"
#include "tests/batch/batch_test_util.h"

namespace v4rt::launch::batch {
namespace {

std::vector<int32_t> tokens(int n, int32_t base) {
  std::vector<int32_t> t;
  for (int i = 0; i < n; ++i) t.push_back(base + (i * 7919) % 5000);
  return t;
}

bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(BatchComposition, StepLogitsDoNotDependOnBatchOrChunking) {
  auto ckpt = model::Checkpoint::open(testing::tiny_model_dir());
  auto backend = kernels::make_cpu_backend();
  auto m = model::Model::load(*ckpt, {}, *backend);
  const std::vector<int32_t> prompt = tokens(21, 1000), decode = {4242, 777, 31337};
  const std::vector<int32_t> other_b = tokens(9, 20000), other_c = tokens(30, 40000);

  // Alone: the whole prompt in one chunk, then one decode token per step.
  std::vector<std::vector<float>> alone;
  {
    auto seq = m->new_sequence();
    std::vector<std::vector<float>> logits;
    model::StepChunk c{seq.get(), std::span<const int32_t>(prompt), false};
    m->step(std::span<const model::StepChunk>(&c, 1), &logits);
    alone.push_back(logits[0]);
    for (const int32_t& t : decode) {
      c.tokens = std::span<const int32_t>(&t, 1);
      m->step(std::span<const model::StepChunk>(&c, 1), &logits);
      alone.push_back(logits[0]);
    }
  }

  // Shared: the prompt in chunks of 8 + 13, each step also carrying other sequences (before and
  // after it), then decode steps next to another sequence's decode.
  std::vector<std::vector<float>> shared;
  {
    auto a = m->new_sequence(), b = m->new_sequence(), c = m->new_sequence();
    std::vector<std::vector<float>> logits;
    const std::span<const int32_t> p(prompt);
    std::vector<model::StepChunk> step1 = {{b.get(), std::span<const int32_t>(other_b), false},
                                           {a.get(), p.subspan(0, 8), false}};
    m->step(step1, &logits);
    std::vector<model::StepChunk> step2 = {{c.get(), std::span<const int32_t>(other_c), false},
                                           {a.get(), p.subspan(8), false},
                                           {b.get(), std::span<const int32_t>(&decode[0], 1), false}};
    m->step(step2, &logits);
    shared.push_back(logits[1]);
    for (const int32_t& t : decode) {
      std::vector<model::StepChunk> s = {{c.get(), std::span<const int32_t>(&decode[2], 1), false},
                                         {a.get(), std::span<const int32_t>(&t, 1), false}};
      m->step(s, &logits);
      shared.push_back(logits[1]);
    }
  }

  ASSERT_EQ(alone.size(), shared.size());
  for (size_t i = 0; i < alone.size(); ++i) {
    ASSERT_EQ(int64_t(alone[i].size()), m->config().vocab_size);
    float max_diff = 0;
    for (size_t k = 0; k < alone[i].size(); ++k) max_diff = std::max(max_diff, std::abs(alone[i][k] - shared[i][k]));
    EXPECT_TRUE(bitwise_equal(alone[i], shared[i])) << "position " << i << ": max |diff| " << max_diff;
  }
}

}  // namespace
}  // namespace v4rt::launch::batch
