// SPDX-License-Identifier: MIT
// Byte-level BPE (see tokenizer.h). Layout of the work per encode call:
//   raw text -> added-token scan (byte trie, longest match) -> gaps
//   gap -> Split #1 (digits) -> Split #2 (CJK runs) -> Split #3 (words/punct/space), each Isolated
//       and applied to the pieces of the previous step -> pre-tokens
//   pre-token -> cache hit, or BPE over its bytes (heap by (rank, position), as HF `Word::merge_all`)
// Tokens are handled as raw bytes throughout; the GPT-2 byte<->unicode map is undone at load time.
#define PCRE2_CODE_UNIT_WIDTH 8
#include "model/text/tokenizer.h"

#include <pcre2.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <unordered_map>

#include "common/check.h"
#include "common/install_dirs.h"
#include "common/json_depth.h"
#include "model/text/json_format.h"
#include "model/text/special_tokens.h"
#include "model/text/utf8.h"

#ifndef V4RT_REPO_TOKENIZER
#define V4RT_REPO_TOKENIZER ""
#endif

namespace v4rt::model::text {
namespace {

// The DeepSeek-V3/V4 pre-tokenizer (chat-format §1.2); the loader refuses any other.
const char* const kExpectedPatterns[3] = {
    R"(\p{N}{1,3})",
    "[一-龥぀-ゟ゠-ヿ]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| "
    "?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
};

constexpr size_t kMaxCacheEntries = 1 << 18;

// GPT-2 bytes_to_unicode, inverted: code point -> byte (-1 when the code point is not used).
std::vector<int> unicode_to_byte_table() {
  std::vector<int> table(512, -1);
  int next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    table[printable ? b : next++] = b;
  }
  return table;
}

// Turns a vocabulary string (byte-level alphabet) into the bytes it stands for.
bool byte_level_decode(std::string_view s, const std::vector<int>& table, std::string* out) {
  out->clear();
  size_t i = 0;
  while (i < s.size()) {
    uint32_t cp = 0;
    const size_t n = utf8_decode(s, i, &cp);
    if (n == 0 || cp >= table.size() || table[cp] < 0) return false;
    out->push_back(static_cast<char>(table[cp]));
    i += n;
  }
  return true;
}

// Open-addressing map (left id, right id) -> (rank, merged id).
class MergeTable {
 public:
  struct Entry {
    uint64_t key = kEmpty;
    int32_t rank = 0;
    int32_t merged = 0;
  };
  static constexpr uint64_t kEmpty = ~0ull;

  void init(size_t num_merges) {
    size_t cap = 16;
    while (cap < num_merges * 2) cap <<= 1;
    entries_.assign(cap, Entry{});
    mask_ = cap - 1;
  }
  void insert(int32_t left, int32_t right, int32_t rank, int32_t merged) {
    const uint64_t key = make_key(left, right);
    size_t i = slot(key);
    while (entries_[i].key != kEmpty && entries_[i].key != key) i = (i + 1) & mask_;
    if (entries_[i].key == key) return;  // first (lowest-rank) definition wins
    entries_[i] = Entry{key, rank, merged};
  }
  const Entry* find(int32_t left, int32_t right) const {
    const uint64_t key = make_key(left, right);
    for (size_t i = slot(key);; i = (i + 1) & mask_) {
      if (entries_[i].key == key) return &entries_[i];
      if (entries_[i].key == kEmpty) return nullptr;
    }
  }

 private:
  static uint64_t make_key(int32_t l, int32_t r) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(l)) << 32) | static_cast<uint32_t>(r);
  }
  size_t slot(uint64_t key) const { return (key * 0x9E3779B97F4A7C15ull >> 20) & mask_; }
  std::vector<Entry> entries_;
  size_t mask_ = 0;
};

// Byte trie over the added-token strings, for longest-match scanning.
class TokenTrie {
 public:
  TokenTrie() : nodes_(1) {}
  void insert(std::string_view s, int32_t id) {
    int32_t node = 0;
    for (unsigned char c : s) {
      int32_t child = find_child(node, c);
      if (child < 0) {
        child = static_cast<int32_t>(nodes_.size());
        nodes_[node].kids.emplace_back(c, child);
        nodes_.emplace_back();
      }
      node = child;
    }
    nodes_[node].id = id;
    first_byte_[static_cast<unsigned char>(s[0])] = true;
  }
  bool may_start(unsigned char c) const { return first_byte_[c]; }
  // Longest token starting at text[pos] and ending at or before `end`: {length, id} or {0, -1}.
  std::pair<size_t, int32_t> match(std::string_view text, size_t pos, size_t end) const {
    int32_t node = 0;
    std::pair<size_t, int32_t> best{0, -1};
    for (size_t i = pos; i < end; ++i) {
      node = find_child(node, static_cast<unsigned char>(text[i]));
      if (node < 0) break;
      if (nodes_[node].id >= 0) best = {i + 1 - pos, nodes_[node].id};
    }
    return best;
  }

 private:
  struct Node {
    int32_t id = -1;
    std::vector<std::pair<unsigned char, int32_t>> kids;
  };
  int32_t find_child(int32_t node, unsigned char c) const {
    for (const auto& [b, child] : nodes_[node].kids)
      if (b == c) return child;
    return -1;
  }
  std::vector<Node> nodes_;
  bool first_byte_[256] = {};
};

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

// One compiled Split pattern.
struct Regex {
  pcre2_code* code = nullptr;
  ~Regex() {
    if (code) pcre2_code_free(code);
  }
};

// Per-call PCRE2 state (match data and a JIT stack large enough for long whitespace runs).
struct MatchState {
  pcre2_match_data* data = nullptr;
  pcre2_match_context* context = nullptr;
  pcre2_jit_stack* stack = nullptr;
  explicit MatchState(const pcre2_code* code) {
    data = pcre2_match_data_create_from_pattern(code, nullptr);
    context = pcre2_match_context_create(nullptr);
    stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
    if (stack) pcre2_jit_stack_assign(context, nullptr, stack);
  }
  ~MatchState() {
    if (stack) pcre2_jit_stack_free(stack);
    pcre2_match_context_free(context);
    pcre2_match_data_free(data);
  }
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// Impl
// ---------------------------------------------------------------------------------------------
struct Tokenizer::Impl {
  std::string path;
  std::vector<std::string> id_bytes;        // [vocab_size] bytes of each id
  std::vector<bool> special;                // [vocab_size] added/special token
  int32_t byte_id[256] = {};                // single-byte token ids
  MergeTable merges;
  TokenTrie trie;
  std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>> special_ids;
  Regex split[3];

  mutable std::mutex cache_mutex;
  mutable std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> cache;

  void load(const std::string& file);
  void bpe(std::string_view word, std::vector<int32_t>* out) const;
  template <typename Fn>
  void split_pieces(int level, std::string_view piece, MatchState& ms, Fn&& emit) const;
  void encode_gap(std::string_view gap, MatchState& ms, std::vector<int32_t>* ids) const;
};

void Tokenizer::Impl::load(const std::string& file) {
  path = file;
  std::ifstream in(file, std::ios::binary);
  V4RT_REQUIRE(in, "tokenizer: cannot open " << file);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  // A hostile or corrupt file nested a million levels deep would overflow the stack when the
  // parsed value is copied or destroyed; tokenizer.json itself nests 5 levels.
  V4RT_REQUIRE(json_depth_ok(text), "tokenizer " << file << ": JSON nests deeper than " << kMaxJsonDepth << " levels");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    V4RT_FAIL("tokenizer " << file << ": invalid JSON: " << e.what());
  }
  // `where` as a plain pointer: a std::string temporary argument would make every reference bound
  // to the result look dangling (-Wdangling-reference), though it points into `node`.
  auto need = [&](const nlohmann::json& node, const char* key, const char* where) -> const nlohmann::json& {
    V4RT_REQUIRE(node.is_object() && node.contains(key),
                 "tokenizer " << file << ": missing key " << where << "." << key);
    return node.at(key);
  };
  const auto& model = need(j, "model", "");
  V4RT_REQUIRE(model.value("type", "") == "BPE",
               "tokenizer " << file << ": model.type must be \"BPE\"");
  V4RT_REQUIRE(!model.value("byte_fallback", false),
               "tokenizer " << file << ": model.byte_fallback is not supported");

  // Pre-tokenizer: Sequence[Split x3 (Isolated), ByteLevel(use_regex=false)].
  const auto& pre = need(j, "pre_tokenizer", "");
  const auto& seq = need(pre, "pretokenizers", "pre_tokenizer");
  V4RT_REQUIRE(pre.value("type", "") == "Sequence" && seq.is_array() && seq.size() == 4,
               "tokenizer " << file << ": pre_tokenizer must be a Sequence of 3 Split + ByteLevel");
  for (int i = 0; i < 3; ++i) {
    const std::string where = "pre_tokenizer.pretokenizers[" + std::to_string(i) + "]";
    const auto& step = seq[i];
    V4RT_REQUIRE(step.value("type", "") == "Split" && step.value("behavior", "") == "Isolated" &&
                     !step.value("invert", false),
                 "tokenizer " << file << ": " << where << " must be Split/Isolated/invert=false");
    const std::string pattern = need(need(step, "pattern", where.c_str()), "Regex", (where + ".pattern").c_str());
    V4RT_REQUIRE(pattern == kExpectedPatterns[i],
                 "tokenizer " << file << ": " << where << ".pattern.Regex differs from the "
                              << "DeepSeek-V3/V4 pre-tokenizer");
    int err = 0;
    PCRE2_SIZE err_off = 0;
    split[i].code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                  PCRE2_UTF | PCRE2_UCP, &err, &err_off, nullptr);
    V4RT_REQUIRE(split[i].code, "tokenizer " << file << ": " << where
                                             << ": PCRE2 compile error " << err << " at "
                                             << err_off);
    pcre2_jit_compile(split[i].code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter
  }
  const auto& bl = seq[3];
  V4RT_REQUIRE(bl.value("type", "") == "ByteLevel" && !bl.value("use_regex", true) &&
                   !bl.value("add_prefix_space", true),
               "tokenizer " << file << ": pre_tokenizer.pretokenizers[3] must be ByteLevel with "
                            << "add_prefix_space=false, use_regex=false");
  V4RT_REQUIRE(need(j, "decoder", "").value("type", "") == "ByteLevel",
               "tokenizer " << file << ": decoder.type must be \"ByteLevel\"");

  // Vocabulary.
  const std::vector<int> table = unicode_to_byte_table();
  id_bytes.assign(kVocabSize, std::string());
  special.assign(kVocabSize, false);
  std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>> vocab;
  std::string bytes;
  for (const auto& [tok, idv] : need(model, "vocab", "model").items()) {
    const int32_t id = idv.get<int32_t>();
    V4RT_REQUIRE(id >= 0 && id < kVocabSize,
                 "tokenizer " << file << ": model.vocab id " << id << " out of range");
    // Entries outside the byte-level alphabet are the added tokens (BOS, EOS, ...), which the
    // added_tokens list below defines; they never take part in merges.
    if (!byte_level_decode(tok, table, &bytes)) continue;
    id_bytes[id] = bytes;
    vocab.emplace(bytes, id);
  }
  for (int b = 0; b < 256; ++b) {
    auto it = vocab.find(std::string(1, static_cast<char>(b)));
    V4RT_REQUIRE(it != vocab.end(), "tokenizer " << file << ": byte " << b << " has no token");
    byte_id[b] = it->second;
  }

  // Merges: "a b" strings (older files) or ["a", "b"] pairs (newer files).
  const auto& ml = need(model, "merges", "model");
  merges.init(ml.size());
  std::string left, right;
  for (size_t rank = 0; rank < ml.size(); ++rank) {
    std::string a, b;
    if (ml[rank].is_string()) {
      const std::string s = ml[rank].get<std::string>();
      const size_t sp = s.find(' ');
      V4RT_REQUIRE(sp != std::string::npos, "tokenizer " << file << ": model.merges[" << rank
                                                         << "] is not \"a b\"");
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else {
      a = ml[rank].at(0).get<std::string>();
      b = ml[rank].at(1).get<std::string>();
    }
    const bool ok = byte_level_decode(a, table, &left) && byte_level_decode(b, table, &right);
    V4RT_REQUIRE(ok, "tokenizer " << file << ": model.merges[" << rank << "] is not byte-level");
    auto il = vocab.find(left), ir = vocab.find(right), im = vocab.find(left + right);
    V4RT_REQUIRE(il != vocab.end() && ir != vocab.end() && im != vocab.end(),
                 "tokenizer " << file << ": model.merges[" << rank << "] uses unknown tokens");
    merges.insert(il->second, ir->second, static_cast<int32_t>(rank), im->second);
  }

  // Added tokens from the file, then the V4 additions.
  auto add_special = [&](std::string_view text, int32_t id) {
    V4RT_REQUIRE(id >= 0 && id < kVocabSize && !text.empty(),
                 "tokenizer " << file << ": added token id " << id << " out of range");
    id_bytes[id] = std::string(text);
    special[id] = true;
    special_ids[std::string(text)] = id;
    trie.insert(text, id);
  };
  for (const auto& t : need(j, "added_tokens", "")) {
    add_special(t.at("content").get<std::string>(), t.at("id").get<int32_t>());
  }
  for (const auto& t : kV4AddedTokens) add_special(t.text, t.id);
}

void Tokenizer::Impl::bpe(std::string_view word, std::vector<int32_t>* out) const {
  const int n = static_cast<int>(word.size());
  if (n == 1) {
    out->push_back(byte_id[static_cast<unsigned char>(word[0])]);
    return;
  }
  struct Sym {
    int32_t id, prev, next;
  };
  struct Cand {
    int32_t rank, pos, merged;
  };
  std::vector<Sym> syms(n);
  for (int i = 0; i < n; ++i) syms[i] = {byte_id[static_cast<unsigned char>(word[i])], i - 1, i + 1};
  syms[n - 1].next = -1;
  // Min-heap on (rank, pos): the lowest-rank pair merges first, leftmost on ties.
  auto later = [](const Cand& a, const Cand& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  std::vector<Cand> heap;
  heap.reserve(n);
  auto push = [&](int32_t pos) {
    const Sym& a = syms[pos];
    if (a.next < 0) return;
    if (const auto* m = merges.find(a.id, syms[a.next].id)) {
      heap.push_back({m->rank, pos, m->merged});
      std::push_heap(heap.begin(), heap.end(), later);
    }
  };
  for (int i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    const Cand top = heap.back();
    heap.pop_back();
    Sym& a = syms[top.pos];
    if (a.id < 0 || a.next < 0) continue;
    const Sym& b = syms[a.next];
    const auto* m = merges.find(a.id, b.id);
    if (!m || m->merged != top.merged) continue;  // stale candidate
    const int32_t removed = a.next;
    a.id = top.merged;
    a.next = b.next;
    if (a.next >= 0) syms[a.next].prev = top.pos;
    syms[removed].id = -1;
    if (a.prev >= 0) push(a.prev);
    push(top.pos);
  }
  for (int i = 0; i >= 0; i = syms[i].next) out->push_back(syms[i].id);
}

template <typename Fn>
void Tokenizer::Impl::split_pieces(int level, std::string_view piece, MatchState& ms,
                                   Fn&& emit) const {
  if (piece.empty()) return;
  if (level == 3) {
    emit(piece);
    return;
  }
  const pcre2_code* code = split[level].code;
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(piece.data());
  size_t pos = 0, gap_start = 0;
  while (pos < piece.size()) {
    const int rc = pcre2_match(code, subject, piece.size(), pos, PCRE2_NO_UTF_CHECK, ms.data,
                               ms.context);
    if (rc < 0) {
      CHECK(rc == PCRE2_ERROR_NOMATCH) << "tokenizer: PCRE2 match error " << rc;
      break;
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(ms.data);
    const size_t start = ov[0], end = ov[1];
    if (end == start) {  // empty match (none of the patterns allow it): step one character
      pos = start + std::max<size_t>(1, utf8_char_len(static_cast<unsigned char>(piece[start])));
      continue;
    }
    if (start > gap_start) split_pieces(level + 1, piece.substr(gap_start, start - gap_start), ms, emit);
    split_pieces(level + 1, piece.substr(start, end - start), ms, emit);
    gap_start = pos = end;
  }
  if (gap_start < piece.size()) split_pieces(level + 1, piece.substr(gap_start), ms, emit);
}

void Tokenizer::Impl::encode_gap(std::string_view gap, MatchState& ms,
                                 std::vector<int32_t>* ids) const {
  std::lock_guard<std::mutex> lock(cache_mutex);
  split_pieces(0, gap, ms, [&](std::string_view word) {
    auto it = cache.find(word);
    if (it != cache.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return;
    }
    const size_t before = ids->size();
    bpe(word, ids);
    if (cache.size() >= kMaxCacheEntries) cache.clear();
    cache.emplace(std::string(word), std::vector<int32_t>(ids->begin() + before, ids->end()));
  });
}

// ---------------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------------
std::string find_tokenizer_path(const std::string& explicit_path, const std::string& model_dir) {
  namespace fs = std::filesystem;
  if (!explicit_path.empty()) {
    V4RT_REQUIRE(fs::is_regular_file(explicit_path), "tokenizer: " << explicit_path
                                                                   << " does not exist");
    return explicit_path;
  }
  std::vector<std::string> tried;
  auto found = [&](const std::string& p) {
    tried.push_back(p);
    return !p.empty() && fs::is_regular_file(p);
  };
  if (!model_dir.empty() && found((fs::path(model_dir) / "tokenizer.json").string())) {
    return tried.back();
  }
  if (const char* env = std::getenv("V4RT_TOKENIZER"); env && *env && found(env)) return env;
  if (const std::string installed = installed_data_dir(); !installed.empty()) {
    // An installed tree: <prefix>/share/v4rt/tokenizer/tokenizer.json (common/install_dirs.h).
    if (found((fs::path(installed) / "tokenizer" / "tokenizer.json").string())) return tried.back();
  }
  if (found(V4RT_REPO_TOKENIZER)) return V4RT_REPO_TOKENIZER;
  std::string list;
  for (const auto& t : tried) list += (list.empty() ? "" : ", ") + (t.empty() ? "(none)" : t);
  V4RT_FAIL("tokenizer: no tokenizer.json found (looked at: "
            << list << "); run scripts/fetch-tokenizer.sh or set V4RT_TOKENIZER");
}

Tokenizer::Tokenizer(const std::string& path) : impl_(std::make_unique<Impl>()) {
  try {
    impl_->load(path);
  } catch (const nlohmann::json::exception& e) {  // a value of the wrong JSON type somewhere
    V4RT_FAIL("tokenizer " << path << ": unexpected structure (" << e.what() << ")");
  }
}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

int32_t Tokenizer::vocab_size() const { return kVocabSize; }

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool allow_special) const {
  std::vector<int32_t> ids;
  encode_to(text, allow_special, &ids);
  return ids;
}

void Tokenizer::encode_to(std::string_view text, bool allow_special,
                          std::vector<int32_t>* ids) const {
  const TextSpan span{text, allow_special};
  const std::vector<int32_t> out = encode_spans(std::span<const TextSpan>(&span, 1));
  ids->insert(ids->end(), out.begin(), out.end());
}

std::vector<int32_t> Tokenizer::encode_spans(std::span<const TextSpan> spans) const {
  return encode_spans(spans, {}, nullptr);
}

std::vector<int32_t> Tokenizer::encode_spans(std::span<const TextSpan> spans, std::span<const size_t> marks,
                                             std::vector<int64_t>* mark_tokens) const {
  std::string joined;
  std::vector<std::pair<size_t, size_t>> trusted;  // [begin, end) byte ranges of trusted spans
  for (const auto& s : spans) {
    if (s.trusted) trusted.emplace_back(joined.size(), joined.size() + s.text.size());
    joined.append(s.text);
  }
  const size_t bad = utf8_first_invalid(joined);
  V4RT_REQUIRE(bad == std::string::npos, "tokenizer: input is not valid UTF-8 at byte " << bad);

  std::vector<int32_t> ids;
  ids.reserve(joined.size() / 3 + 8);
  MatchState ms(impl_->split[2].code);
  const std::string_view text(joined);
  size_t gap_start = 0;
  size_t next_mark = 0;
  for (const auto& [begin, end] : trusted) {
    for (size_t pos = begin; pos < end; ++pos) {
      if (!impl_->trie.may_start(static_cast<unsigned char>(text[pos]))) continue;
      const auto [len, id] = impl_->trie.match(text, pos, end);
      if (len == 0) continue;
      impl_->encode_gap(text.substr(gap_start, pos - gap_start), ms, &ids);
      while (next_mark < marks.size() && marks[next_mark] < pos) ++next_mark;
      if (mark_tokens && next_mark < marks.size() && marks[next_mark] == pos) mark_tokens->push_back(int64_t(ids.size()));
      ids.push_back(id);
      pos += len - 1;
      gap_start = pos + 1;
    }
  }
  impl_->encode_gap(text.substr(gap_start), ms, &ids);
  return ids;
}

const std::string& Tokenizer::token_bytes(int32_t id) const {
  V4RT_REQUIRE(id >= 0 && id < kVocabSize, "tokenizer: token id " << id << " outside [0, "
                                                                  << kVocabSize << ")");
  return impl_->id_bytes[id];
}

std::string Tokenizer::decode(std::span<const int32_t> ids) const {
  std::string out;
  for (int32_t id : ids) out += token_bytes(id);
  return out;
}

std::optional<int32_t> Tokenizer::special_id(std::string_view text) const {
  auto it = impl_->special_ids.find(text);
  if (it == impl_->special_ids.end()) return std::nullopt;
  return it->second;
}

bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && id < kVocabSize && impl_->special[id];
}

std::vector<std::string> Tokenizer::pre_tokenize(std::string_view text) const {
  V4RT_REQUIRE(utf8_first_invalid(text) == std::string::npos, "tokenizer: input is not UTF-8");
  std::vector<std::string> out;
  MatchState ms(impl_->split[2].code);
  impl_->split_pieces(0, text, ms, [&](std::string_view p) { out.emplace_back(p); });
  return out;
}

}  // namespace v4rt::model::text
