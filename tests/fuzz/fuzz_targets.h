// SPDX-License-Identifier: MIT
// The fuzz targets: one function per parser at an edge of v4rt, each taking arbitrary bytes. The
// same functions run under libFuzzer (fuzz_entry.cpp, one executable per target) and under gtest
// on the seed corpus and on every saved regression input (test_fuzz_regressions.cpp), so a finding
// keeps being checked in the ordinary unit build.
//
// Contract checked by every target: bad input either parses or throws v4rt::Error; any other
// exception escapes (libFuzzer reports it as a crash), and a broken property (round trip, chunking
// independence, invariants of an accepted result) calls fuzz_fail, which aborts with a message.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace v4rt::model::text {
class Tokenizer;
}  // namespace v4rt::model::text

namespace v4rt::fuzz {

// Prints "fuzz property violated: <what>" and aborts (libFuzzer saves the input as a crash).
[[noreturn]] void fuzz_fail(const std::string& what);

#define V4RT_FUZZ_REQUIRE(cond, what)                                                              \
  do {                                                                                             \
    if (!(cond)) ::v4rt::fuzz::fuzz_fail(std::string(#cond) + ": " + std::string(what));         \
  } while (0)

// safetensors header parser (model/safetensors.h): the input is a whole shard file.
void fuzz_safetensors_header(const uint8_t* data, size_t size);
// Token-id file reader (model/token_ids.h): byte 0 picks text list or safetensors, the rest is the file.
void fuzz_token_ids(const uint8_t* data, size_t size);
// Hugging Face config.json parser (model/config.h): the input is the JSON text.
void fuzz_model_config(const uint8_t* data, size_t size);
// Runtime YAML (launch/runtime_config.h): the input is the YAML text.
void fuzz_runtime_config(const uint8_t* data, size_t size);
// Planner hardware table / calibration YAML (launch/plan/hardware.h): byte 0 picks which.
void fuzz_plan_yaml(const uint8_t* data, size_t size);
// Tokenizer encode/decode (model/text/tokenizer.h): byte 0 picks the mode, the rest is text or ids.
void fuzz_tokenizer(const uint8_t* data, size_t size);
// Chat encoder (model/text/chat_encoder.h): the input is a JSON array of messages or an object
// {"messages": [...], "tools": [...]}.
void fuzz_chat_encoder(const uint8_t* data, size_t size);
// DSML / reasoning stream parser (model/text/output_parser.h): the input is generated text, fed
// whole, byte by byte and in random chunkings, which must all agree.
void fuzz_output_parser(const uint8_t* data, size_t size);
// The server's OpenAI request parsing (launch/serve/openai_api.h): byte 0 picks chat (even) or
// completions (odd), the rest is the request body.
void fuzz_http_request(const uint8_t* data, size_t size);

struct FuzzTarget {
  const char* name;  // also the corpus folder: tests/fuzz/corpus/<name>/
  void (*run)(const uint8_t* data, size_t size);
  bool needs_tokenizer;
};

// Every target, in a fixed order.
const FuzzTarget* fuzz_targets(size_t* count);

// The tokenizer the text targets share (loaded once from find_tokenizer_path()); nullptr when no
// tokenizer.json is available.
const model::text::Tokenizer* shared_tokenizer();

}  // namespace v4rt::fuzz
