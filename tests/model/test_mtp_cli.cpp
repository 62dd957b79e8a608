// SPDX-License-Identifier: MIT
// `v4rt generate --mtp N` end to end: on a checkpoint written by `v4rt init-model --preset tiny
// --mtp`, greedy output with --mtp 1 and --mtp 3 equals the output without drafting, and the
// acceptance line is printed; on the embedded model's layout (`init-model --preset tiny`, no MTP
// block) --mtp fails with an error naming the missing block; `bench mtp` runs and prints its table.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "tests/model/test_util.h"

namespace v4rt::model {
namespace {

using testing::TempDir;

const std::string kV4rt = V4RT_BINARY_DIR "/launch/v4rt";

using testing::CmdResult;

CmdResult run_v4rt(const std::string& args, const TempDir& tmp) { return testing::run_shell(kV4rt + " " + args, tmp); }

// The first line of stdout: the generated ids.
std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

TEST(MtpCli, GenerateWithMtpEqualsWithout) {
  ASSERT_TRUE(std::filesystem::exists(kV4rt)) << kV4rt;
  TempDir tmp;
  const std::string with = tmp / "tiny_mtp", without = tmp / "tiny";
  ASSERT_EQ(run_v4rt("init-model --preset tiny --mtp --seed 1 --out " + with, tmp).code, 0);
  ASSERT_EQ(run_v4rt("init-model --preset tiny --seed 1 --out " + without, tmp).code, 0);
  testing::write_bytes(tmp / "ids.txt", {'5', ' ', '9', ' ', '1', '0', '0', '0', ' ', '7', '7', '\n'});
  const std::string gen = "generate --ids " + (tmp / "ids.txt") + " --max-tokens 20 --model ";
  const CmdResult plain = run_v4rt(gen + with, tmp);
  ASSERT_EQ(plain.code, 0) << plain.err;
  const std::string want = first_line(plain.out);
  EXPECT_EQ(std::count(want.begin(), want.end(), ' '), 19) << want;
  for (const char* depth : {"1", "3"}) {
    const CmdResult spec = run_v4rt(gen + with + " --mtp " + depth, tmp);
    ASSERT_EQ(spec.code, 0) << spec.err;
    EXPECT_EQ(first_line(spec.out), want) << "--mtp " << depth;
    EXPECT_NE(spec.err.find("acceptance rate"), std::string::npos) << spec.err;
    EXPECT_NE(spec.err.find("tokens per verify step"), std::string::npos) << spec.err;
  }
  // Same main weights without the block: same plain output; --mtp refused, naming the reason.
  const CmdResult embedded = run_v4rt(gen + without, tmp);
  ASSERT_EQ(embedded.code, 0) << embedded.err;
  EXPECT_EQ(first_line(embedded.out), want);
  const CmdResult refused = run_v4rt(gen + without + " --mtp 2", tmp);
  EXPECT_NE(refused.code, 0);
  EXPECT_NE(refused.err.find("no MTP block"), std::string::npos) << refused.err;
}

TEST(MtpCli, BenchMtpPrintsTable) {
  TempDir tmp;
  const CmdResult r = run_v4rt("bench mtp --tokens 6 --prompt-len 4 --depths 1,2 --dir " + (tmp / "ckpt"), tmp);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("plain decode:"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("tokens/step"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("speed-up"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace v4rt::model
