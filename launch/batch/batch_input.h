// SPDX-License-Identifier: MIT
// The batch input file (OpenAI Batch API JSONL) and the output lines. Each non-blank input line is
// {"custom_id", "method": "POST", "url": "/v1/chat/completions" | "/v1/completions", "body"}; a
// line that is not valid JSON, lacks a custom_id, repeats one, names another url or method, or has
// no body object becomes an error item (reported as an error output line; the job goes on). Output
// lines are {"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error": null}
// or {"id", "custom_id", "response": null, "error": {"code", "message"}}. Ids derive from the job
// seed and the custom_id, so a rerun writes the same bytes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/text/json_format.h"

namespace v4rt::launch::batch {

using Json = model::text::Json;

struct BatchItem {
  int64_t line_idx = 0;          // 0-based line of the input file
  std::string custom_id;         // empty when the line has none
  bool chat = true;              // /v1/chat/completions, else /v1/completions
  Json body;                     // the request body (valid items only)
  std::string error_code;        // non-empty: the line is invalid
  std::string error_message;     // "line N: ..." (1-based N)
  bool valid() const { return error_code.empty(); }
};

struct BatchInput {
  std::vector<BatchItem> items;  // one per non-blank line, in file order
  std::string sha256;            // of the file's bytes
  int64_t bytes = 0;
  int64_t num_lines = 0;         // lines in the file, blank ones included
};

// Reads and checks every line. Throws v4rt::Error naming the file when it cannot be read.
BatchInput read_batch_input(const std::string& path);
// Parses the lines of `text` (the file's content); `source` names it in messages.
BatchInput parse_batch_input(const std::string& text, const std::string& source);

// 16 lowercase hex digits of a 64-bit value.
std::string hex64(uint64_t v);
// The seed a request without its own `seed` samples with.
uint64_t request_seed(uint64_t job_seed, const std::string& custom_id);

// Output lines (compact JSON, no newline).
std::string result_line(const BatchItem& item, uint64_t job_seed, int status_code, const Json& body);
std::string error_line(const BatchItem& item, uint64_t job_seed, const std::string& code, const std::string& message);

}  // namespace v4rt::launch::batch
