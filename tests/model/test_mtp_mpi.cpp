// SPDX-License-Identifier: MIT
// `v4rt generate --mtp N` under mpirun on every parallel layout (tp2, sp2, ep2 on 2 ranks; tp2_sp2,
// sp4 on 4): the drafts, verify chunks and rollbacks travel in the step plans, and the greedy
// tokens equal single-rank greedy decoding without drafts computed in this process (plain
// Model::step, no MTP). Two synthetic checkpoints with an MTP block: the tiny preset with a
// 512-token vocabulary at --mtp 2 (drafts rejected: chained drafts and a rollback on every step)
// and a 16-token, 3-layer variant at --mtp 1 where the untrained draft agrees with the main model
// often enough that accepted drafts (the state kept whole) and rejected ones (rolled back) both
// occur: the test checks the reported acceptance rate is strictly between 0 and 1.
// Every mpirun runs under `timeout`, so a hung collective fails the test instead of hanging it.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <utility>

#include "tests/model/test_mtp_util.h"
#include "tests/mpi_env.h"

namespace v4rt::model {
namespace {

const std::string kV4rt = V4RT_BINARY_DIR "/launch/v4rt";

using testing::CmdResult;
using testing::run_shell;

std::string join(const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t id : ids) {
    if (!s.empty()) s += ' ';
    s += std::to_string(id);
  }
  return s;
}

// `generate` stops after the end-of-sequence token; plain_greedy() does not.
std::vector<int32_t> until_eos(std::vector<int32_t> ids, int64_t eos) {
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] == eos) ids.resize(i + 1);
  return ids;
}

double acceptance_of(const std::string& err) {
  std::smatch m;
  if (!std::regex_search(err, m, std::regex("acceptance rate ([0-9.]+)"))) return -1.0;
  return std::stod(m[1].str());
}

struct Layout {
  const char* name;
  int np;
};

class MtpMpi : public ::testing::Test {
 protected:
  void SetUp() override {
    v4rt::testing::set_mpirun_env();
    ASSERT_TRUE(std::filesystem::exists(kV4rt)) << kV4rt;
  }

  // Greedy tokens of `generate --mtp 2` on each layout equal `want`; returns the smallest
  // acceptance rate reported.
  std::pair<double, double> check_layouts(const testing::LoadedModel& lm, int depth, const std::vector<int32_t>& prompt,
                                          int max_tokens, const std::vector<int32_t>& want,
                                          const std::vector<Layout>& layouts) {
    std::ofstream(tmp_ / "ids.txt") << join(prompt) << "\n";
    double min_acceptance = 1.0, max_acceptance = 0.0;
    for (const Layout& l : layouts) {
      const std::string cmd = "timeout 240 " V4RT_MPIEXEC " -n " + std::to_string(l.np) + " --oversubscribe " + kV4rt +
                              " generate --ids " + (tmp_ / "ids.txt") + " --max-tokens " + std::to_string(max_tokens) +
                              " --mtp " + std::to_string(depth) + " --model " + lm.dir.str() + " --config " + V4RT_SOURCE_DIR "/configs/" + l.name +
                              ".yaml";
      const CmdResult r = run_shell(cmd, tmp_);
      EXPECT_EQ(r.code, 0) << l.name << ": " << r.err;
      EXPECT_EQ(r.out.substr(0, r.out.find('\n')), join(want)) << "layout " << l.name << "\n" << r.err;
      const double a = acceptance_of(r.err);
      EXPECT_GE(a, 0.0) << l.name << ": no acceptance line in\n" << r.err;
      std::printf("%-8s np %d: acceptance rate %.3f\n", l.name, l.np, a);
      min_acceptance = std::min(min_acceptance, a);
      max_acceptance = std::max(max_acceptance, a);
    }
    return {min_acceptance, max_acceptance};
  }

  testing::TempDir tmp_;
};

const std::vector<Layout> kLayouts = {{"tp2", 2}, {"sp2", 2}, {"ep2", 2}, {"tp2_sp2", 4}, {"sp4", 4}};

TEST_F(MtpMpi, GreedyEqualsSingleRankWithoutDrafts) {
  testing::LoadedModel lm(testing::tiny_mtp_config(/*vocab_size=*/512));
  const std::vector<int32_t> prompt = testing::test_prompt(512, 9, 3);
  const std::vector<int32_t> want = until_eos(testing::plain_greedy(*lm.model, prompt, 16), lm.model->config().eos_token_id);
  check_layouts(lm, 2, prompt, 16, want, kLayouts);
}

TEST_F(MtpMpi, GreedyWithAcceptedDraftsEqualsSingleRank) {
  testing::LoadedModel lm(slice_layers(testing::tiny_mtp_config(/*vocab_size=*/16), 3), /*seed=*/5);
  const std::vector<int32_t> prompt = testing::test_prompt(16, 5, 60);
  const std::vector<int32_t> want = until_eos(testing::plain_greedy(*lm.model, prompt, 24), lm.model->config().eos_token_id);
  const auto [lo, hi] = check_layouts(lm, 1, prompt, 24, want, kLayouts);
  EXPECT_GT(lo, 0.0) << "no draft was accepted on some layout";
  EXPECT_LT(hi, 1.0) << "no draft was rejected on some layout";
}

}  // namespace
}  // namespace v4rt::model
