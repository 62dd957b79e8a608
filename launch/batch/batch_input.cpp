// SPDX-License-Identifier: MIT
// Input line validation (shape of the Batch API envelope only: the body is validated later by the
// same parser the server uses) and output line building.
#include "launch/batch/batch_input.h"

#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>

#include "common/check.h"
#include "launch/batch/digest.h"

namespace v4rt::launch::batch {

namespace {

// Seeds of the derived values, so the request seed, the batch id and the request id of one
// custom_id are independent.
constexpr uint64_t kSeedSalt = 0x5EEDull;
constexpr uint64_t kBatchIdSalt = 0xBA7Cull;
constexpr uint64_t kRequestIdSalt = 0x4E9ull;

// Compact, as the server writes its responses; invalid UTF-8 from the model becomes U+FFFD.
std::string dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

bool blank(std::string_view s) { return s.find_first_not_of(" \t\r") == std::string_view::npos; }

std::string item_key(const BatchItem& item) {
  return item.custom_id.empty() ? "#line" + std::to_string(item.line_idx) : item.custom_id;
}

Json envelope(const BatchItem& item, uint64_t job_seed) {
  Json j;
  j["id"] = "batch_req_" + hex64(hash64(item_key(item), job_seed ^ kBatchIdSalt));
  j["custom_id"] = item.custom_id.empty() ? Json(nullptr) : Json(item.custom_id);
  return j;
}

void check_envelope(const std::string& line, BatchItem* item, const std::set<std::string>& seen) {
  const std::string at = "line " + std::to_string(item->line_idx + 1) + ": ";
  auto fail = [&](const char* code, const std::string& message) {
    item->error_code = code;
    item->error_message = at + message;
  };
  Json j;
  if (!model::text::json_try_parse(line, &j)) return fail("invalid_json", "not valid JSON");
  if (!j.is_object()) return fail("invalid_json", "not a JSON object");
  if (j.contains("custom_id") && j["custom_id"].is_string()) item->custom_id = j["custom_id"].get<std::string>();
  if (item->custom_id.empty()) return fail("missing_custom_id", "'custom_id' must be a non-empty string");
  if (seen.count(item->custom_id))
    return fail("duplicate_custom_id", "custom_id '" + item->custom_id + "' appears on an earlier line");
  if (j.contains("method") && !(j["method"].is_string() && j["method"].get<std::string>() == "POST"))
    return fail("invalid_method", "'method' must be \"POST\"");
  if (!j.contains("url") || !j["url"].is_string())
    return fail("invalid_url", "'url' must be \"/v1/chat/completions\" or \"/v1/completions\"");
  const std::string url = j["url"].get<std::string>();
  if (url == "/v1/chat/completions") {
    item->chat = true;
  } else if (url == "/v1/completions") {
    item->chat = false;
  } else {
    return fail("invalid_url", "url '" + url + "' is not supported (\"/v1/chat/completions\" or \"/v1/completions\")");
  }
  if (!j.contains("body") || !j["body"].is_object()) return fail("invalid_body", "'body' must be a JSON object");
  if (j["body"].contains("stream") && j["body"]["stream"].is_boolean() && j["body"]["stream"].get<bool>())
    return fail("invalid_body", "'body.stream' must be false in a batch");
  item->body = std::move(j["body"]);
}

}  // namespace

std::string hex64(uint64_t v) {
  static const char* kHex = "0123456789abcdef";
  std::string s(16, '0');
  for (int i = 15; i >= 0; --i, v >>= 4) s[size_t(i)] = kHex[v & 15];
  return s;
}

uint64_t request_seed(uint64_t job_seed, const std::string& custom_id) { return hash64(custom_id, job_seed ^ kSeedSalt); }

BatchInput parse_batch_input(const std::string& text, const std::string& source) {
  (void)source;
  BatchInput in;
  in.bytes = int64_t(text.size());
  in.sha256 = sha256_hex(text);
  std::set<std::string> seen;
  size_t pos = 0;
  int64_t idx = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    const std::string_view line(text.data() + pos, end - pos);
    if (!blank(line)) {
      BatchItem item;
      item.line_idx = idx;
      check_envelope(std::string(line), &item, seen);
      if (!item.custom_id.empty()) seen.insert(item.custom_id);
      in.items.push_back(std::move(item));
    }
    ++idx;
    pos = end + 1;
  }
  in.num_lines = idx;
  return in;
}

BatchInput read_batch_input(const std::string& path) {
  // Opening a directory succeeds; reading it throws std::ios_failure from the stream buffer.
  std::error_code ec;
  V4RT_REQUIRE(!std::filesystem::is_directory(path, ec), path << ": is a directory, not a batch input file (JSONL)");
  std::ifstream f(path, std::ios::binary);
  V4RT_REQUIRE(f, path << ": cannot open the batch input");
  std::string text;
  try {
    text.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  } catch (const std::exception& e) {
    V4RT_FAIL(path << ": cannot read the batch input: " << e.what());
  }
  V4RT_REQUIRE(!f.bad(), path << ": read error");
  return parse_batch_input(text, path);
}

std::string result_line(const BatchItem& item, uint64_t job_seed, int status_code, const Json& body) {
  Json j = envelope(item, job_seed);
  j["response"] = {{"status_code", status_code},
                   {"request_id", "req_" + hex64(hash64(item_key(item), job_seed ^ kRequestIdSalt))},
                   {"body", body}};
  j["error"] = nullptr;
  return dump(j);
}

std::string error_line(const BatchItem& item, uint64_t job_seed, const std::string& code, const std::string& message) {
  Json j = envelope(item, job_seed);
  j["response"] = nullptr;
  j["error"] = {{"code", code}, {"message", message}};
  return dump(j);
}

}  // namespace v4rt::launch::batch
