// SPDX-License-Identifier: MIT
// What the fuzz targets share: the failure hook, the target table and the tokenizer that the text
// targets load once per process.
#include <cstdio>
#include <cstdlib>
#include <memory>

#include "common/check.h"
#include "model/text/tokenizer.h"
#include "tests/fuzz/fuzz_targets.h"

namespace v4rt::fuzz {

void fuzz_fail(const std::string& what) {
  std::fprintf(stderr, "fuzz property violated: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

const FuzzTarget* fuzz_targets(size_t* count) {
  static const FuzzTarget kTargets[] = {
      {"safetensors_header", fuzz_safetensors_header, false},
      {"token_ids", fuzz_token_ids, false},
      {"model_config", fuzz_model_config, false},
      {"runtime_config", fuzz_runtime_config, false},
      {"plan_yaml", fuzz_plan_yaml, false},
      {"tokenizer", fuzz_tokenizer, true},
      {"chat_encoder", fuzz_chat_encoder, true},
      {"output_parser", fuzz_output_parser, false},
      {"http_request", fuzz_http_request, true},
  };
  *count = sizeof(kTargets) / sizeof(kTargets[0]);
  return kTargets;
}

const model::text::Tokenizer* shared_tokenizer() {
  // Loaded once and kept for the life of the process (a fuzzer runs millions of inputs).
  static const model::text::Tokenizer* tokenizer = []() -> const model::text::Tokenizer* {
    try {
      return new model::text::Tokenizer(model::text::find_tokenizer_path());
    } catch (const v4rt::Error& e) {
      std::fprintf(stderr, "no tokenizer: %s\n", e.what());
      return nullptr;
    }
  }();
  return tokenizer;
}

}  // namespace v4rt::fuzz
