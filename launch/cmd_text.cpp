// SPDX-License-Identifier: MIT
// Text commands around the model (chat-format.md):
//   v4rt tokenize       text -> ids (JSON array); special tokens only with --allow-special
//   v4rt detokenize     ids (JSON array or whitespace list) -> text
//   v4rt chat-encode    OpenAI-style messages (+ tools) -> the V4 prompt text, or its ids
//   v4rt parse-output   a completion -> OpenAI-style assistant message (reasoning/content/tools)
// Input comes from a flag, a file, or stdin; results go to stdout.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>

#include "common/check.h"
#include "launch/commands.h"
#include "model/text/chat_encoder.h"
#include "model/text/json_format.h"
#include "model/text/output_parser.h"
#include "model/text/tokenizer.h"

namespace v4rt::launch {
namespace {

namespace text = v4rt::model::text;

struct TokenizerFlags {
  std::string tokenizer;  // explicit tokenizer.json
  std::string model;      // model directory holding tokenizer.json
};

void add_tokenizer_flags(CLI::App* cmd, TokenizerFlags* f) {
  cmd->add_option("--tokenizer", f->tokenizer, "tokenizer.json to load (default: search order of "
                                               "model/text/tokenizer.h)");
  cmd->add_option("--model", f->model, "Model directory whose tokenizer.json to use");
}

text::Tokenizer load_tokenizer(const TokenizerFlags& f) {
  return text::Tokenizer(text::find_tokenizer_path(f.tokenizer, f.model));
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  V4RT_REQUIRE(in, "cannot open " << path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string read_stdin() {
  std::stringstream ss;
  ss << std::cin.rdbuf();
  return ss.str();
}

void write_out(const std::string& s) { std::fwrite(s.data(), 1, s.size(), stdout); }

std::string ids_json(const std::vector<int32_t>& ids) {
  std::string out = "[";
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(ids[i]);
  }
  return out + "]\n";
}

// "[1, 2, 3]" or "1 2 3" (commas and newlines allowed too).
std::vector<int32_t> parse_ids(const std::string& s, const std::string& what) {
  std::vector<int32_t> ids;
  size_t i = 0;
  while (i < s.size()) {
    const char c = s[i];
    if (c == '[' || c == ']' || c == ',' || std::isspace(static_cast<unsigned char>(c))) {
      ++i;
      continue;
    }
    size_t end = i;
    if (s[end] == '-') ++end;
    while (end < s.size() && std::isdigit(static_cast<unsigned char>(s[end]))) ++end;
    V4RT_REQUIRE(end > i && (s[i] != '-' || end > i + 1),
                 what << ": expected a token id at byte " << i << ", found '" << c << "'");
    ids.push_back(static_cast<int32_t>(std::stoll(s.substr(i, end - i))));
    i = end;
  }
  return ids;
}

// --- tokenize / detokenize ---------------------------------------------------------------------
struct TokenizeOptions {
  TokenizerFlags tok;
  std::string text, file;
  bool text_set = false;
  bool allow_special = false;
};

void run_tokenize(const TokenizeOptions& o) {
  const text::Tokenizer tok = load_tokenizer(o.tok);
  const std::string input = o.text_set ? o.text : !o.file.empty() ? read_file(o.file) : read_stdin();
  write_out(ids_json(tok.encode(input, o.allow_special)));
}

struct DetokenizeOptions {
  TokenizerFlags tok;
  std::string ids, file;
};

void run_detokenize(const DetokenizeOptions& o) {
  const text::Tokenizer tok = load_tokenizer(o.tok);
  const std::string src = !o.ids.empty() ? o.ids : !o.file.empty() ? read_file(o.file) : read_stdin();
  const auto ids = parse_ids(src, !o.ids.empty() ? "--ids" : !o.file.empty() ? o.file : "stdin");
  write_out(tok.decode(ids));
}

// --- chat-encode --------------------------------------------------------------------------------
struct ChatEncodeOptions {
  TokenizerFlags tok;
  std::string messages, tools, effort, dialect = "original";
  bool thinking = false;
  bool ids = false;
};

void run_chat_encode(const ChatEncodeOptions& o) {
  // The messages file is a JSON array, or an object {"messages": [...], "tools": [...]}.
  const text::Json input = text::json_parse(read_file(o.messages), o.messages);
  text::Json messages = input, tools;
  if (input.is_object()) {
    V4RT_REQUIRE(input.contains("messages"), o.messages << ": object without \"messages\"");
    messages = input["messages"];
    if (input.contains("tools")) tools = input["tools"];
  }
  if (!o.tools.empty()) tools = text::json_parse(read_file(o.tools), o.tools);
  text::ChatOptions co;
  co.thinking = o.thinking;
  co.effort = text::effort_prefix_for(o.effort, text::parse_effort_dialect(o.dialect));
  const text::ChatPrompt prompt = text::chat_encode(messages, tools, co);
  if (!o.ids) {
    write_out(prompt.text());
    return;
  }
  const text::Tokenizer tok = load_tokenizer(o.tok);
  const auto spans = prompt.spans();
  write_out(ids_json(tok.encode_spans(spans)));
}

// --- parse-output -------------------------------------------------------------------------------
struct ParseOutputOptions {
  std::string file, tools;
  bool thinking = false;
  bool length = false;
  bool no_tools = false;
};

void run_parse_output(const ParseOutputOptions& o) {
  const std::string completion = !o.file.empty() ? read_file(o.file) : read_stdin();
  text::ParserOptions po;
  po.thinking = o.thinking;
  po.tool_calls_enabled = !o.no_tools;
  if (!o.tools.empty()) po.tools = text::json_parse(read_file(o.tools), o.tools);
  const text::ParsedMessage msg = text::parse_completion(completion, po, o.length);
  text::Json out = text::Json::object();
  out["message"] = msg.to_json();
  out["finish_reason"] = msg.finish_reason;
  // Calls the parser had to drop (malformed markup), each named with the reason: never silent.
  if (!msg.warnings.empty()) out["warnings"] = msg.warnings;
  write_out(out.dump(2) + "\n");
}

}  // namespace

void register_text(CLI::App& app) {
  {
    auto o = std::make_shared<TokenizeOptions>();
    auto* cmd = app.add_subcommand("tokenize", "Text to token ids (JSON array); no BOS is added");
    add_tokenizer_flags(cmd, &o->tok);
    auto* t = cmd->add_option("--text", o->text, "Text to encode (default: --file or stdin)");
    cmd->add_option("--file", o->file, "File whose bytes to encode")->excludes(t);
    cmd->add_flag("--allow-special", o->allow_special,
                  "Turn special-token strings (<｜User｜>, </think>, ...) into control tokens");
    cmd->callback([o, t] {
      o->text_set = t->count() > 0;
      run_tokenize(*o);
    });
  }
  {
    auto o = std::make_shared<DetokenizeOptions>();
    auto* cmd = app.add_subcommand("detokenize", "Token ids to text");
    add_tokenizer_flags(cmd, &o->tok);
    auto* i = cmd->add_option("--ids", o->ids, "Ids as a JSON array or whitespace list "
                                               "(default: --file or stdin)");
    cmd->add_option("--file", o->file, "File holding the ids")->excludes(i);
    cmd->callback([o] { run_detokenize(*o); });
  }
  {
    auto o = std::make_shared<ChatEncodeOptions>();
    auto* cmd = app.add_subcommand("chat-encode", "Render OpenAI-style messages as a V4 prompt");
    add_tokenizer_flags(cmd, &o->tok);
    cmd->add_option("--messages", o->messages,
                    "JSON file: a message array, or {\"messages\": [...], \"tools\": [...]}")
        ->required();
    cmd->add_option("--tools", o->tools, "JSON file with the request's tool list");
    cmd->add_flag("--thinking", o->thinking, "Thinking mode (prompt ends with <think>)");
    cmd->add_option("--effort", o->effort,
                    "reasoning_effort: minimal|low|medium|high|xhigh|max|ultra|none");
    cmd->add_option("--dialect", o->dialect, "Effort table of the checkpoint: original|v0731")
        ->check(CLI::IsMember({"original", "v0731"}));
    cmd->add_flag("--ids", o->ids, "Print the prompt's token ids instead of its text");
    cmd->callback([o] { run_chat_encode(*o); });
  }
  {
    auto o = std::make_shared<ParseOutputOptions>();
    auto* cmd = app.add_subcommand("parse-output",
                                   "Parse a completion into an OpenAI-style assistant message");
    cmd->add_option("--file", o->file, "Completion text (default: stdin)");
    cmd->add_flag("--thinking", o->thinking, "The prompt ended with <think> (start in reasoning)");
    cmd->add_option("--tools", o->tools, "JSON file with the request's tools (for unwrapping)");
    cmd->add_flag("--no-tools", o->no_tools, "Drop tool-call blocks (tool_choice \"none\")");
    cmd->add_flag("--length", o->length, "Generation stopped at the token limit");
    cmd->callback([o] { run_parse_output(*o); });
  }
}

}  // namespace v4rt::launch
