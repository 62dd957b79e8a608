// SPDX-License-Identifier: MIT
// Device draws under mpirun (np 2: tp2, sp2, ep2; np 4: tp2 x sp2, sp4) on golden tiny-a: only the
// leader passes `sampled` to its Executor, the followers run the same plan without it, and the
// ranks still run the same Model::step batches (their collectives line up; a mismatch would hang
// past the test timeout or fail a collective). The leader's greedy draw equals the argmax of the
// logits a host-sampled chunk of the same prompt gets in the same step, over a prefill step mixing
// every kind of chunk and two decode steps.
#include <gtest/gtest.h>

#include <memory>
#include <span>
#include <vector>

#include "cluster/groups.h"
#include "kernels/backend.h"
#include "model/checkpoint.h"
#include "model/distributed.h"
#include "model/model.h"
#include "model/sampler.h"
#include "runtime/executor.h"
#include "runtime/step_plan.h"
#include "tests/cluster/mpi_test.h"
#include "tests/golden_util.h"
#include "tests/model/test_mtp_util.h"
#include "tests/parallel/layout_util.h"

namespace v4rt::runtime {
namespace {

using model::testing::test_prompt;  // deterministic prompts over [2, vocab)

void check_layout(const char* name, const parallel::Layout& layout) {
  if (v4rt::testing::world_size() != layout.world()) GTEST_SKIP() << name << " needs " << layout.world() << " ranks";
  SCOPED_TRACE(name);
  static std::unique_ptr<model::Checkpoint> ckpt =
      model::Checkpoint::open(v4rt::testing::golden_case_dir("tiny-a") + "/model");
  static std::unique_ptr<kernels::Backend> backend = kernels::make_cpu_backend();
  cluster::ProcessGroups groups = cluster::make_mpi_groups(parallel::group_shape(layout), v4rt::testing::kTestTimeoutS);
  model::ModelOptions options;
  options.parallel = model::make_parallel_context(layout, ckpt->config(), *backend, groups);
  auto m = model::Model::load(*ckpt, options, *backend);
  const bool leader = v4rt::testing::world_rank() == 0;
  const int64_t vocab = m->config().vocab_size;
  Executor executor(*m);
  const std::vector<int32_t> a = test_prompt(vocab, 37, 1), b = test_prompt(vocab, 90, 2);

  // Seq 1 (host logits) and seq 2 (device draw) prefill the same prompt; seq 3 is an inner chunk.
  StepPlan plan;
  plan.step_idx = 1;
  plan.add_chunk(1, 0, a, kLogitsLast);
  plan.add_chunk(2, 0, a, kSampleLast);
  plan.chunks.back().sample = {0, 0.0f, 1.0f, 0, 2};
  plan.add_chunk(3, 0, b, kLogitsNone);
  for (int step = 0; step < 3; ++step) {
    std::vector<std::vector<float>> logits;
    std::vector<model::SampledToken> sampled;
    if (leader) {
      executor.run(plan, &logits, nullptr, &sampled);
      const int32_t want = model::argmax(logits[0]);
      ASSERT_EQ(sampled[1].id, want) << "step " << step;
      EXPECT_TRUE(logits[1].empty());
      EXPECT_NEAR(sampled[1].logprob, model::token_logprobs(logits[0], want, 0).logprob, 1e-5f);
    } else {
      executor.run(plan, nullptr);
    }
    // The next step decodes the drawn token in both sequences (the leader's id, broadcast as a
    // plan would carry it).
    int32_t next = leader ? sampled[1].id : 0;
    groups.world->broadcast(&next, 1, DType::kI32, 0);
    const int64_t pos = executor.position(1);
    ASSERT_EQ(executor.position(2), pos);
    plan = StepPlan{};
    plan.step_idx = uint64_t(step + 2);
    plan.add_chunk(1, pos, std::span<const int32_t>(&next, 1), kLogitsLast);
    plan.add_chunk(2, pos, std::span<const int32_t>(&next, 1), kSampleLast);
    plan.chunks.back().sample = {0, 0.0f, 1.0f, 0, 0};
  }
}

TEST(DeviceSamplingMpi, Tp2) { check_layout("tp2", v4rt::testing::test_layout(2, 1, 1, 1)); }
TEST(DeviceSamplingMpi, Sp2) { check_layout("sp2", v4rt::testing::test_layout(1, 2, 1, 1)); }
TEST(DeviceSamplingMpi, Ep2) { check_layout("ep2 (dp2)", v4rt::testing::test_layout(1, 1, 2, 2)); }
TEST(DeviceSamplingMpi, Tp2Sp2) { check_layout("tp2 sp2", v4rt::testing::test_layout(2, 2, 1, 1)); }
TEST(DeviceSamplingMpi, Sp4) { check_layout("sp4", v4rt::testing::test_layout(1, 4, 1, 1)); }

}  // namespace
}  // namespace v4rt::runtime
