// SPDX-License-Identifier: MIT
// Replays every saved fuzz input through its target in the ordinary unit build: the seed corpus
// (tests/fuzz/corpus/<target>/) and the inputs that once broke a parser
// (tests/fuzz/regressions/<target>/, see docs/RELIABILITY.md). A target aborts on a broken
// property; any exception other than v4rt::Error fails here.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

#include "tests/fuzz/fuzz_targets.h"

namespace v4rt::fuzz {
namespace {

namespace fs = std::filesystem;

std::vector<fs::path> inputs_of(const std::string& kind, const std::string& target) {
  std::vector<fs::path> out;
  const fs::path dir = fs::path(V4RT_SOURCE_DIR) / "tests/fuzz" / kind / target;
  if (!fs::is_directory(dir)) return out;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file()) out.push_back(e.path());
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<uint8_t> read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  EXPECT_TRUE(in) << p;
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

class FuzzInputs : public ::testing::TestWithParam<size_t> {};

TEST_P(FuzzInputs, CorpusAndRegressionsReplay) {
  size_t count = 0;
  const FuzzTarget& t = fuzz_targets(&count)[GetParam()];
  if (t.needs_tokenizer && shared_tokenizer() == nullptr)
    GTEST_SKIP() << "no tokenizer.json (scripts/fetch-tokenizer.sh fetches it)";
  const std::vector<fs::path> corpus = inputs_of("corpus", t.name);
  EXPECT_GE(corpus.size(), 3u) << "seed corpus of " << t.name;
  std::vector<fs::path> all = corpus;
  for (const fs::path& p : inputs_of("regressions", t.name)) all.push_back(p);
  for (const fs::path& p : all) {
    SCOPED_TRACE(p.string());
    const std::vector<uint8_t> bytes = read_all(p);
    EXPECT_NO_THROW(t.run(bytes.data(), bytes.size()));
  }
}

std::string target_name(const ::testing::TestParamInfo<size_t>& info) {
  size_t count = 0;
  return fuzz_targets(&count)[info.param].name;
}

size_t num_targets() {
  size_t count = 0;
  fuzz_targets(&count);
  return count;
}

INSTANTIATE_TEST_SUITE_P(Targets, FuzzInputs, ::testing::Range<size_t>(0, num_targets()), target_name);

}  // namespace
}  // namespace v4rt::fuzz
