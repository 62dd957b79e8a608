// SPDX-License-Identifier: MIT
// libFuzzer entry point: one executable per target, chosen at compile time by V4RT_FUZZ_TARGET
// (a function of fuzz_targets.h). Built with -fsanitize=fuzzer,address,undefined.
#include <cstddef>
#include <cstdint>

#include "tests/fuzz/fuzz_targets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  v4rt::fuzz::V4RT_FUZZ_TARGET(data, size);
  return 0;
}
