// SPDX-License-Identifier: MIT
// `v4rt bench tokenizer`: encode throughput on one core over a mixed corpus that the benchmark
// builds itself (deterministic: English prose, source code, Chinese/Japanese, emoji, numbers).
// Two passes over the same corpus: "cold" starts with an empty pre-token cache, "warm" reuses it
// (the steady state of a server). MB/s = corpus bytes / 1e6 / seconds; tokens/s likewise.
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "launch/bench/bench.h"
#include "model/text/tokenizer.h"

namespace v4rt::launch {
namespace {

namespace text = v4rt::model::text;

const char* const kWords[] = {
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by",
    "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an",
    "had", "they", "you", "were", "their", "one", "all", "we", "can", "her", "has", "there",
    "been", "if", "more", "when", "will", "would", "who", "so", "no", "model", "memory",
    "attention", "sequence", "parallel", "runtime", "request", "throughput", "latency", "kernel",
    "compressed", "window", "expert", "routing", "Tokyo", "Paris", "weather", "question",
    "answer", "reasoning", "carefully", "although", "implementation", "performance", "however",
    "understanding", "distributed", "significantly", "Internationalization", "don't", "it's"};
const char* const kCjk[] = {"数学是科学的皇后。", "今天天气很好，我们去公园散步吧。",
                            "深度求索公司创造了这个模型。", "请及时就医。", "世界著名温泉有哪些？",
                            "日本語のテキストとカタカナ", "ひらがなとカタカナを混ぜた文章です。",
                            "长上下文推理需要大量显存。", "分布式系统的容错非常重要。"};
const char* const kEmoji[] = {"🤖", "🚀", "👩‍💻", "😀", "🎉", "🔥", "✨", "👍🏽", "🇯🇵", "❤️"};
const char* const kCode[] = {
    "for (int i = 0; i < n; ++i) {\n", "  sum += a[i] * b[i];\n", "}\n",
    "def forward(self, x):\n    return self.proj(x) + x\n",
    "    if (rc != 0) return Status::error(\"bad input\");\n",
    "const auto& [key, value] = *it;\n", "#include <vector>\n", "x = np.zeros((128, 64))\n",
    "  std::vector<int32_t> ids = tok.encode(text);\n", "// TODO: handle the empty case\n",
    "SELECT id, name FROM users WHERE age > 30;\n", "{\"role\": \"user\", \"content\": \"hi\"}\n"};

std::string build_corpus(size_t target_bytes) {
  std::mt19937 rng(20261129);
  std::string out;
  out.reserve(target_bytes + 1024);
  auto pick = [&](const auto& arr) { return arr[rng() % std::size(arr)]; };
  while (out.size() < target_bytes) {
    const unsigned kind = rng() % 20;
    if (kind < 8) {  // English prose
      const int n = 8 + rng() % 20;
      for (int w = 0; w < n; ++w) {
        std::string word = pick(kWords);
        if (w == 0) word[0] = static_cast<char>(std::toupper(word[0]));
        out += word;
        out += (w + 1 == n) ? ".\n" : (rng() % 9 == 0 ? ", " : " ");
      }
    } else if (kind < 13) {  // code
      const int n = 2 + rng() % 6;
      for (int l = 0; l < n; ++l) out += pick(kCode);
    } else if (kind < 16) {  // CJK
      const int n = 1 + rng() % 4;
      for (int s = 0; s < n; ++s) out += pick(kCjk);
      out += "\n";
    } else if (kind < 18) {  // numbers
      char buf[96];
      std::snprintf(buf, sizeof(buf), "%u.%02u%% of %u items, id %llu, on 2026-%02u-%02u; ",
                    unsigned(rng() % 100), unsigned(rng() % 100), unsigned(rng() % 100000),
                    static_cast<unsigned long long>(rng()) * 977, unsigned(1 + rng() % 12),
                    unsigned(1 + rng() % 28));
      out += buf;
    } else {  // emoji mixed with words
      const int n = 2 + rng() % 6;
      for (int e = 0; e < n; ++e) {
        out += pick(kEmoji);
        out += (rng() % 2) ? " " : pick(kWords);
      }
      out += "\n";
    }
  }
  return out;
}

struct BenchTokenizerOptions {
  std::string tokenizer;
  double megabytes = 4.0;
};

void run_bench_tokenizer(const BenchTokenizerOptions& o) {
  const std::string path = text::find_tokenizer_path(o.tokenizer);
  const text::Tokenizer tok(path);
  const std::string corpus = build_corpus(static_cast<size_t>(o.megabytes * 1e6));
  std::printf("tokenizer: %s\ncorpus: %zu bytes (English, code, CJK, emoji, numbers), 1 thread\n\n",
              path.c_str(), corpus.size());
  std::printf("%-6s %14s %12s %10s %10s %14s\n", "pass", "corpus_bytes", "tokens", "seconds",
              "MB/s", "tokens/s");
  for (const char* pass : {"cold", "warm"}) {
    const auto t0 = std::chrono::steady_clock::now();
    const auto ids = tok.encode(corpus);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("%-6s %14zu %12zu %10.3f %10.2f %14.0f\n", pass, corpus.size(), ids.size(), s,
                corpus.size() / 1e6 / s, ids.size() / s);
  }
}

}  // namespace

void register_bench_tokenizer(CLI::App& bench) {
  auto o = std::make_shared<BenchTokenizerOptions>();
  auto* cmd = bench.add_subcommand("tokenizer", "Tokenizer encode throughput (MB/s, one core)");
  cmd->add_option("--tokenizer", o->tokenizer, "tokenizer.json (default: the usual search order)");
  cmd->add_option("--megabytes", o->megabytes, "Corpus size in MB (default 4)");
  cmd->callback([o] { run_bench_tokenizer(*o); });
}

}  // namespace v4rt::launch
