// SPDX-License-Identifier: MIT
// Expected to FAIL (run through tests/cluster/expect_failure.sh): the sharded model (tp2 x sp2, 4
// ranks) is driven as `v4rt generate` drives it; world rank 2 kills itself with SIGKILL in the
// middle of decode. Every other rank, waiting in a TP/SP collective or for the next step plan, must
// end within seconds, with mpirun naming the dead rank, never hang.
#include <signal.h>

#include <cstdio>
#include <string>

#include "launch/model_run.h"
#include "runtime/step_plan.h"
#include "model/token_ids.h"

int main() {
  v4rt::launch::RunOptions options;
  options.model_dir = std::string(V4RT_GOLDEN_DIR) + "/tiny-a/model";
  options.config = std::string(V4RT_SOURCE_DIR) + "/configs/tp2_sp2.yaml";
  options.timeout_s = 30.0;  // longer than the test's limit: the end must come from the kill itself
  v4rt::launch::ModelRun run(options);
  constexpr int64_t kPrompt = 64, kKillAt = kPrompt + 3;
  const int rank = run.world_rank();
  run.model().set_layer_observer([rank](int layer, int64_t pos_begin, const v4rt::TensorView&) {
    if (rank == 2 && pos_begin == kKillAt && layer == 2) {
      std::fprintf(stderr, "rank 2: SIGKILL at decode position %lld, layer %d\n", static_cast<long long>(pos_begin), layer);
      std::fflush(stderr);
      raise(SIGKILL);
    }
  });
  if (!run.leader()) {
    run.follow();
  } else {
    const std::vector<int32_t> ids =
        v4rt::model::read_token_ids(std::string(V4RT_GOLDEN_DIR) + "/tiny-a/reference.safetensors");
    namespace rt = v4rt::runtime;
    rt::StepPlan plan;
    plan.add_chunk(1, 0, std::span<const int32_t>(ids).first(size_t(kPrompt)), rt::kLogitsLast);
    std::vector<std::vector<float>> logits;
    for (int64_t pos = kPrompt; pos < 200; ++pos) {
      plan.step_idx = uint64_t(pos);
      run.lead().run(plan, &logits);
      plan = rt::StepPlan{};
      plan.add_chunk(1, pos, std::span<const int32_t>(ids).subspan(size_t(pos), 1), rt::kLogitsLast);
    }
  }
  std::printf("rank %d: unexpected normal exit\n", rank);
  return 0;
}
