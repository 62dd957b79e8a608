// SPDX-License-Identifier: MIT
// Fuzz targets for file inputs: the safetensors header parser on a whole (possibly corrupt) shard
// file, and the token-id file reader of `v4rt logits/generate --ids`. An accepted header must
// describe ranges that lie inside the data area, match shape x dtype size and do not overlap; those
// invariants are re-checked here independently of the parser.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <vector>

#include "common/check.h"
#include "model/safetensors.h"
#include "model/token_ids.h"
#include "tests/fuzz/fuzz_targets.h"

namespace v4rt::fuzz {

void fuzz_safetensors_header(const uint8_t* data, size_t size) {
  namespace st = model::safetensors;
  st::Header h;
  try {
    h = st::parse_header(data, size, size, "fuzz.safetensors");
  } catch (const v4rt::Error&) {
    return;
  }
  V4RT_FUZZ_REQUIRE(h.data_offset >= 8 && h.data_offset <= size, "data area starts inside the file");
  const uint64_t data_size = size - h.data_offset;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const st::Entry& e : h.entries) {
    V4RT_FUZZ_REQUIRE(e.begin <= e.end && e.end <= data_size, "range of '" + e.name + "' inside the data area");
    uint64_t numel = 1;
    for (int64_t d : e.shape) {
      V4RT_FUZZ_REQUIRE(d >= 0, "dimension of '" + e.name + "' non-negative");
      numel *= uint64_t(d);
    }
    V4RT_FUZZ_REQUIRE(numel * dtype_size(e.dtype) == e.end - e.begin, "byte count of '" + e.name + "'");
    if (e.end > e.begin) ranges.emplace_back(e.begin, e.end);
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) V4RT_FUZZ_REQUIRE(ranges[i].first >= ranges[i - 1].second, "no overlap");
}

void fuzz_token_ids(const uint8_t* data, size_t size) {
  if (size == 0) return;
  // read_token_ids takes a path: byte 0 picks the form (text list or safetensors), the rest is the
  // file's content, written to a per-process temp file.
  static const std::string base =
      (std::filesystem::temp_directory_path() / ("v4rt_fuzz_ids_" + std::to_string(getpid()))).string();
  const std::string path = base + ((data[0] & 1) ? ".safetensors" : ".txt");
  std::FILE* f = std::fopen(path.c_str(), "wb");
  V4RT_FUZZ_REQUIRE(f != nullptr, "temp file " + path);
  if (size > 1) std::fwrite(data + 1, 1, size - 1, f);
  std::fclose(f);
  try {
    const std::vector<int32_t> ids = model::read_token_ids(path);
    if (!(data[0] & 1)) V4RT_FUZZ_REQUIRE(ids.size() <= size, "at most one id per input byte");
  } catch (const v4rt::Error&) {
  }
  std::remove(path.c_str());
}

}  // namespace v4rt::fuzz
