// SPDX-License-Identifier: MIT
// Token-id files for the CLI and tests: a safetensors file holding an integer tensor `input_ids`,
// or a text file of integers separated by whitespace, commas or brackets (so a JSON list works).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace v4rt::model {

// Throws v4rt::Error naming the file (and the offending text) when it cannot be read.
std::vector<int32_t> read_token_ids(const std::string& path);

}  // namespace v4rt::model
