// SPDX-License-Identifier: MIT
// The built `v4rt` binary: init-model writes a tiny checkpoint that inspect accepts, and inspect on
// a corrupt checkpoint exits non-zero with a one-line error naming the file and tensor; every
// command that steps the model takes --no-graphs.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "test_util.h"

namespace v4rt::model {
namespace {

using testing::TempDir;

const std::string kV4rt = V4RT_BINARY_DIR "/launch/v4rt";

using testing::CmdResult;

CmdResult run_v4rt(const std::string& args, const TempDir& tmp) { return testing::run_shell(kV4rt + " " + args, tmp); }

size_t count_lines(const std::string& s) {
  size_t n = 0;
  for (char c : s) n += c == '\n';
  return n;
}

TEST(Cli, InitModelThenInspect) {
  ASSERT_TRUE(std::filesystem::exists(kV4rt)) << kV4rt;
  TempDir tmp;
  const std::string dir = tmp / "tiny";
  CmdResult w = run_v4rt("init-model --preset tiny --out " + dir + " --seed 3 --mtp", tmp);
  ASSERT_EQ(w.code, 0) << w.err;
  CmdResult i = run_v4rt("inspect --model " + dir + " --memory", tmp);
  EXPECT_EQ(i.code, 0) << i.err;
  EXPECT_NE(i.out.find("validation: ok"), std::string::npos) << i.out;
  EXPECT_NE(i.out.find("peak RSS"), std::string::npos) << i.out;
  EXPECT_NE(i.out.find("mtp.0"), std::string::npos) << i.out;
}

TEST(Cli, InspectCorruptCheckpointFailsWithOneLine) {
  TempDir tmp;
  const std::string dir = tmp / "ck";
  testing::copy_dir(V4RT_GOLDEN_DIR "/tiny-a/model", dir);
  std::filesystem::permissions(dir, std::filesystem::perms::owner_all, std::filesystem::perm_options::add);
  for (const auto& e : std::filesystem::directory_iterator(dir))
    std::filesystem::permissions(e.path(), std::filesystem::perms::owner_write, std::filesystem::perm_options::add);
  const std::string shard = dir + "/model-00002-of-00002.safetensors";
  std::string victim;
  testing::edit_shard_header(shard, [&](nlohmann::ordered_json& h) {
    for (auto it = h.begin(); it != h.end(); ++it)
      if (it.key() != "__metadata__") victim = it.key();
    h[victim]["data_offsets"] = {1u << 30, (1u << 30) + 4u};
    h[victim]["shape"] = {1};
    h[victim]["dtype"] = "F32";
  });
  CmdResult r = run_v4rt("inspect --model " + dir, tmp);
  EXPECT_NE(r.code, 0);
  EXPECT_EQ(count_lines(r.err), 1u) << r.err;
  EXPECT_NE(r.err.find(shard), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("'" + victim + "'"), std::string::npos) << r.err;

  CmdResult big = run_v4rt("init-model --preset flash --out " + (tmp / "flash"), tmp);
  EXPECT_NE(big.code, 0);
  EXPECT_NE(big.err.find("--layers"), std::string::npos) << big.err;
}

// parse-output names a call it had to drop (malformed markup) under "warnings", and the markup
// never reaches the content.
TEST(Cli, ParseOutputReportsDroppedCalls) {
  TempDir tmp;
  const std::string text = tmp / "completion.txt";
  {
    std::ofstream f(text, std::ios::binary);
    f << "Checking.\n\n<\xef\xbd\x9c" "DSML\xef\xbd\x9ctool_calls>\n<\xef\xbd\x9c" "DSML\xef\xbd\x9cinvoke "
         "name=\"get_weather\">not json</\xef\xbd\x9c" "DSML\xef\xbd\x9cinvoke>\n</\xef\xbd\x9c"
         "DSML\xef\xbd\x9ctool_calls>";
  }
  const CmdResult r = run_v4rt("parse-output --file " + text, tmp);
  ASSERT_EQ(r.code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["message"]["content"], "Checking.");
  EXPECT_FALSE(j["message"].contains("tool_calls") && !j["message"]["tool_calls"].empty()) << r.out;
  ASSERT_TRUE(j.contains("warnings")) << r.out;
  ASSERT_EQ(j["warnings"].size(), 1u);
  EXPECT_NE(j["warnings"][0].get<std::string>().find("get_weather"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("DSML"), std::string::npos) << r.out;
}

// --no-graphs is listed by every command that runs decode steps on a backend it makes, and is
// accepted: on the CPU backend (no graphs either way) generate's tokens do not change, and `bench
// step` reports "graphs: off" with a `graphs` CSV column of 0.
TEST(Cli, NoGraphsFlag) {
  TempDir tmp;
  for (const char* cmd : {"generate", "logits", "batch", "serve", "bench step", "bench mtp", "bench prefill"}) {
    const CmdResult h = run_v4rt(std::string(cmd) + " --help", tmp);
    EXPECT_EQ(h.code, 0) << cmd << ": " << h.err;
    EXPECT_NE(h.out.find("--no-graphs"), std::string::npos) << cmd << ":\n" << h.out;
    EXPECT_NE(h.out.find("cuda_graphs: false"), std::string::npos) << cmd << ":\n" << h.out;
  }
  const std::string dir = tmp / "tiny";
  ASSERT_EQ(run_v4rt("init-model --preset tiny --out " + dir, tmp).code, 0);
  std::ofstream(tmp / "ids.txt") << "11 22 33 44 55\n";
  const std::string gen = "generate --model " + dir + " --ids " + (tmp / "ids.txt") + " --max-tokens 3";
  const CmdResult with = run_v4rt(gen, tmp);
  ASSERT_EQ(with.code, 0) << with.err;
  const CmdResult without = run_v4rt(gen + " --no-graphs", tmp);
  ASSERT_EQ(without.code, 0) << without.err;
  EXPECT_EQ(with.out, without.out);

  const std::string csv = tmp / "step.csv";
  const CmdResult b = run_v4rt("bench step --preset tiny --synthetic --layers 2 --context 128 --iters 1 --backend cpu "
                               "--no-graphs --dir " + (tmp / "bench") + " --csv " + csv, tmp);
  ASSERT_EQ(b.code, 0) << b.err;
  EXPECT_NE(b.out.find("  graphs: off\n"), std::string::npos) << b.out;
  const std::string rows = testing::read_text(csv);
  EXPECT_NE(rows.find(",roofline_ms,graphs\n"), std::string::npos) << rows;
  EXPECT_NE(rows.find("\"step\",1,"), std::string::npos) << rows;
  EXPECT_EQ(rows.substr(rows.size() - 3), ",0\n") << rows;
}

}  // namespace
}  // namespace v4rt::model
