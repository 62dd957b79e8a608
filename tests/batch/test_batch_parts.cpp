// SPDX-License-Identifier: MIT
// The batch job's parts without a model: digests against published test vectors, journal framing
// (every possible torn tail is cut at the last intact record; a flipped byte is caught by the CRC),
// header comparison, input line validation, output lines, atomic file replacement, progress maths;
// and the command line refusing what would fail later: a directory as input, a journal that is
// the output, --max-in-flight below 1.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/check.h"
#include "launch/batch/batch_input.h"
#include "launch/batch/digest.h"
#include "launch/batch/journal.h"
#include "launch/batch/progress.h"
#include "tests/batch/batch_test_util.h"

namespace v4rt::launch::batch {
namespace {

namespace fs = std::filesystem;

std::string scratch(const std::string& name) {
  const fs::path dir = fs::path(V4RT_BINARY_DIR) / "tests" / "batch" / ("parts_" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
}

std::string read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::span<const uint8_t> bytes_of(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

TEST(BatchDigest, Sha256KnownVectors) {
  // FIPS 180-2 examples.
  EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  // One million 'a', fed in uneven pieces (exercises the block buffer).
  Sha256 s;
  const std::string piece(997, 'a');
  size_t left = 1000000;
  while (left > 0) {
    const size_t n = std::min(left, piece.size());
    s.update(std::string_view(piece.data(), n));
    left -= n;
  }
  EXPECT_EQ(s.hex_digest(), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(BatchDigest, Crc32AndHash) {
  EXPECT_EQ(crc32(bytes_of("123456789")), 0xCBF43926u);  // the CRC-32 check value
  EXPECT_EQ(crc32(bytes_of("")), 0u);
  EXPECT_EQ(crc32(bytes_of("6789"), crc32(bytes_of("12345"))), 0xCBF43926u);  // continuation
  EXPECT_EQ(hash64("req-1", 7), hash64("req-1", 7));
  EXPECT_NE(hash64("req-1", 7), hash64("req-1", 8));
  EXPECT_NE(hash64("req-1", 7), hash64("req-2", 7));
  EXPECT_EQ(hex64(0x0123456789abcdefull), "0123456789abcdef");
}

JournalHeader sample_header() {
  JournalHeader h;
  h.input_sha256 = sha256_hex("input");
  h.input_bytes = 5;
  h.num_lines = 1;
  h.seed = 42;
  h.model = "/models/tiny";
  h.config_sha256 = sha256_hex("config");
  h.created = 1700000000;
  return h;
}

TEST(BatchJournal, HeaderRoundTripAndMismatches) {
  const JournalHeader h = sample_header();
  const JournalHeader back = JournalHeader::from_json(h.to_json(), "x");
  EXPECT_TRUE(header_mismatches(h, back).empty());
  EXPECT_EQ(back.created, h.created);
  JournalHeader other = h;
  other.seed = 43;
  other.input_sha256 = sha256_hex("changed");
  other.created = 1;  // not compared
  const auto diff = header_mismatches(h, other);
  ASSERT_EQ(diff.size(), 2u);
  EXPECT_NE(diff[0].find("input"), std::string::npos);
  EXPECT_NE(diff[1].find("--seed"), std::string::npos);
  EXPECT_THROW(JournalHeader::from_json("{\"format\": 1}", "j.journal"), v4rt::Error);
}

TEST(BatchJournal, AppendScanAndEveryTornTail) {
  const std::string dir = scratch("journal");
  const std::string path = dir + "/j.journal";
  const std::vector<JournalRecord> records = {{0, "{\"a\":1}"}, {3, "{\"b\":\"two\"}"}, {7, std::string(300, 'x')}};
  {
    auto w = JournalWriter::create(path, sample_header());
    for (const JournalRecord& r : records) w->append(r);
    // A second writer on the same journal is refused while the first holds it.
    EXPECT_THROW(JournalWriter::resume(path, scan_journal(path)), v4rt::Error);
  }
  const std::string full = read_all(path);
  const JournalScan scan = scan_journal(path);
  ASSERT_EQ(scan.records.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(scan.records[i].line_idx, records[i].line_idx);
    EXPECT_EQ(scan.records[i].line, records[i].line);
  }
  EXPECT_EQ(scan.valid_bytes, full.size());
  EXPECT_EQ(scan.header.seed, 42u);

  // Record boundaries, computed independently from the frame layout.
  const size_t header_end = kFrameBytes + sample_header().to_json().size();
  std::vector<size_t> ends = {header_end};
  for (const JournalRecord& r : records) ends.push_back(ends.back() + kFrameBytes + 8 + r.line.size());
  ASSERT_EQ(ends.back(), full.size());

  // Every cut point after the header: the intact records are kept, the rest is a torn tail.
  const std::string cut = dir + "/cut.journal";
  for (size_t len = header_end; len <= full.size(); ++len) {
    std::ofstream(cut, std::ios::binary | std::ios::trunc) << full.substr(0, len);
    const JournalScan s = scan_journal(cut);
    size_t intact = 0;
    while (intact < records.size() && ends[intact + 1] <= len) ++intact;
    ASSERT_EQ(s.records.size(), intact) << "cut at " << len;
    ASSERT_EQ(s.valid_bytes, ends[intact]) << "cut at " << len;
    ASSERT_EQ(s.file_bytes, len);
  }
  // A cut inside the header: not a journal.
  std::ofstream(cut, std::ios::binary | std::ios::trunc) << full.substr(0, header_end - 1);
  EXPECT_THROW(scan_journal(cut), v4rt::Error);

  // A flipped payload byte in the second record: the CRC stops the scan there.
  std::string damaged = full;
  damaged[ends[1] + kFrameBytes + 9] ^= 0x20;
  std::ofstream(cut, std::ios::binary | std::ios::trunc) << damaged;
  EXPECT_EQ(scan_journal(cut).records.size(), 1u);

  // Resume cuts the torn tail, then appends after the last intact record.
  std::ofstream(cut, std::ios::binary | std::ios::trunc) << full.substr(0, ends[2] + 5);
  {
    const JournalScan s = scan_journal(cut);
    auto w = JournalWriter::resume(cut, s);
    w->append({9, "{\"c\":3}"});
  }
  const JournalScan resumed = scan_journal(cut);
  ASSERT_EQ(resumed.records.size(), 3u);
  EXPECT_EQ(resumed.records[2].line_idx, 9);
  EXPECT_EQ(resumed.valid_bytes, resumed.file_bytes);

  // A duplicate record for a line already recorded is ignored (first one wins).
  std::ofstream(cut, std::ios::binary | std::ios::app) << encode_frame(kRecordResult, encode_result_payload({0, "dup"}));
  const JournalScan dup = scan_journal(cut);
  EXPECT_EQ(dup.records.size(), 3u);
  EXPECT_EQ(dup.duplicates, 1);
  EXPECT_EQ(dup.records[0].line, records[0].line);
}

TEST(BatchJournal, AtomicWriteReplacesWholeFile) {
  const std::string dir = scratch("atomic");
  const std::string path = dir + "/out.jsonl";
  write_file_atomic(path, "a\nb\n");
  EXPECT_EQ(read_all(path), "a\nb\n");
  write_file_atomic(path, "c\n");
  EXPECT_EQ(read_all(path), "c\n");
  EXPECT_FALSE(fs::exists(path + ".tmp"));
}

TEST(BatchInput, LinesAreCheckedOneByOne) {
  const std::string text =
      R"({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": []}})" "\n"
      "\n"
      R"({"custom_id": "b", "url": "/v1/completions", "body": {"prompt": "hi"}})" "\n"
      "{oops\n"
      R"({"url": "/v1/completions", "body": {}})" "\n"
      R"({"custom_id": "a", "url": "/v1/completions", "body": {}})" "\n"
      R"({"custom_id": "c", "url": "/v1/embeddings", "body": {}})" "\n"
      R"({"custom_id": "d", "method": "GET", "url": "/v1/completions", "body": {}})" "\n"
      R"({"custom_id": "e", "url": "/v1/completions", "body": "text"})" "\n"
      R"({"custom_id": "f", "url": "/v1/completions", "body": {"stream": true}})";  // no final newline
  const BatchInput in = parse_batch_input(text, "in.jsonl");
  EXPECT_EQ(in.num_lines, 10);
  EXPECT_EQ(in.sha256, sha256_hex(text));
  ASSERT_EQ(in.items.size(), 9u);  // the blank line is not a request
  EXPECT_TRUE(in.items[0].valid());
  EXPECT_TRUE(in.items[0].chat);
  EXPECT_TRUE(in.items[1].valid());
  EXPECT_FALSE(in.items[1].chat);
  EXPECT_EQ(in.items[1].line_idx, 2);
  EXPECT_EQ(in.items[1].body["prompt"], "hi");
  const std::vector<std::pair<size_t, std::string>> errors = {{2, "invalid_json"},        {3, "missing_custom_id"},
                                                             {4, "duplicate_custom_id"}, {5, "invalid_url"},
                                                             {6, "invalid_method"},      {7, "invalid_body"},
                                                             {8, "invalid_body"}};
  for (const auto& [i, code] : errors) {
    EXPECT_EQ(in.items[i].error_code, code) << "item " << i;
    EXPECT_EQ(in.items[i].error_message.rfind("line " + std::to_string(in.items[i].line_idx + 1) + ": ", 0), 0u)
        << in.items[i].error_message;
  }
}

// Reading a directory threw std::ios_failure out of the stream buffer (`batch` aborted, exit 134).
TEST(BatchInput, DirectoryIsRefusedNamingThePath) {
  const std::string dir = scratch("input_dir");
  try {
    read_batch_input(dir);
    FAIL() << "a directory was read as a batch input";
  } catch (const v4rt::Error& e) {
    EXPECT_NE(std::string(e.what()).find(dir), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("directory"), std::string::npos) << e.what();
  }
  EXPECT_THROW(scan_journal(dir), v4rt::Error);
}

// A journal at the output path (or at its temporary file) was accepted, and the job could then
// never resume: the output rewrite replaced the journal.
TEST(BatchJournal, JobPathsMustNotOverlap) {
  const std::string dir = scratch("paths");
  const std::string in = dir + "/in.jsonl", out = dir + "/out.jsonl";
  EXPECT_NO_THROW(check_job_paths(in, out, out + ".journal"));
  for (const auto& [journal, output] : std::vector<std::pair<std::string, std::string>>{
           {out, out}, {dir + "/./out.jsonl", out}, {out + ".tmp", out}, {dir + "/j", dir + "/j.tmp"}, {in, out}}) {
    try {
      check_job_paths(in, output, journal);
      ADD_FAILURE() << "accepted --journal " << journal << " --output " << output;
    } catch (const v4rt::Error& e) {
      EXPECT_NE(std::string(e.what()).find("--"), std::string::npos) << e.what();
    }
  }
  fs::create_directories(dir + "/sub");
  std::ofstream(out) << "";
  fs::create_symlink(out, dir + "/sub/link.jsonl");
  EXPECT_THROW(check_job_paths(in, out, dir + "/sub/link.jsonl"), v4rt::Error);  // the same file by a link
}

// The command line refuses these before it loads a model (the model path does not exist).
TEST(BatchCli, RefusesOverlappingPathsAndMaxInFlightBelowOne) {
  const std::string dir = scratch("cli");
  const std::string in = dir + "/in.jsonl", out = dir + "/out.jsonl", log = dir + "/log";
  std::ofstream(in) << testing::make_requests(2, 2, false);
  const std::vector<std::string> base = {V4RT_EXE, "batch", "--model", dir + "/no-model", "--input", in};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> argv = base;
    argv.insert(argv.end(), extra.begin(), extra.end());
    return argv;
  };
  EXPECT_EQ(testing::run_cmd(with({"--output", out, "--journal", out}), log, 60), 1);
  EXPECT_NE(testing::read_text(log).find("--journal"), std::string::npos) << testing::read_text(log);
  for (const char* n : {"0", "-3"}) {
    EXPECT_NE(testing::run_cmd(with({"--output", out, "--max-in-flight", n}), log, 60), 0);
    EXPECT_NE(testing::read_text(log).find("--max-in-flight"), std::string::npos) << testing::read_text(log);
  }
}

// `batch --input <directory>` ends with exit status 1 and a message, not an abort.
TEST(BatchCli, DirectoryAsInputExitsWithAnError) {
  const std::string dir = scratch("cli_dir");
  const std::string log = dir + "/log";
  const int rc = testing::run_cmd({V4RT_EXE, "batch", "--model", testing::tiny_model_dir(), "--tokenizer",
                                   testing::tokenizer_path(), "--input", dir, "--output", dir + "/out.jsonl"},
                                  log, 120);
  EXPECT_EQ(rc, 1) << testing::read_text(log);
  EXPECT_NE(testing::read_text(log).find("is a directory"), std::string::npos) << testing::read_text(log);
}

TEST(BatchInput, OutputLinesAreDeterministic) {
  BatchItem item;
  item.line_idx = 4;
  item.custom_id = "job-7";
  const Json body = {{"object", "chat.completion"}};
  const std::string a = result_line(item, 1, 200, body), b = result_line(item, 1, 200, body);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, result_line(item, 2, 200, body));
  const Json j = Json::parse(a);
  EXPECT_EQ(j["custom_id"], "job-7");
  EXPECT_EQ(j["response"]["status_code"], 200);
  EXPECT_EQ(j["response"]["body"], body);
  EXPECT_TRUE(j["error"].is_null());
  EXPECT_EQ(j["id"].get<std::string>().rfind("batch_req_", 0), 0u);
  const Json e = Json::parse(error_line(item, 1, "invalid_json", "line 5: not valid JSON"));
  EXPECT_TRUE(e["response"].is_null());
  EXPECT_EQ(e["error"]["code"], "invalid_json");
  EXPECT_EQ(e["id"], j["id"]);
  BatchItem anonymous;
  anonymous.line_idx = 2;
  EXPECT_TRUE(Json::parse(error_line(anonymous, 1, "missing_custom_id", "m"))["custom_id"].is_null());
  EXPECT_NE(request_seed(1, "a"), request_seed(1, "b"));
  EXPECT_NE(request_seed(1, "a"), request_seed(2, "a"));
}

TEST(BatchProgress, PercentilesAndLines) {
  std::FILE* sink = std::tmpfile();
  ProgressOptions po;
  po.terminal = true;
  Progress p(111, 10, po, sink);
  for (int i = 1; i <= 100; ++i) p.on_done(10, 5, double(i), true);
  p.on_done(0, 0, -1, false);  // an error line: no latency
  EXPECT_EQ(p.done(), 111);
  EXPECT_DOUBLE_EQ(p.latency_percentile(0.50), 50.0);  // nearest rank over 1..100
  EXPECT_DOUBLE_EQ(p.latency_percentile(0.90), 90.0);
  EXPECT_DOUBLE_EQ(p.latency_percentile(0.99), 99.0);
  const std::string line = p.status_line();
  EXPECT_NE(line.find("111/111"), std::string::npos) << line;
  EXPECT_NE(line.find("1 errors"), std::string::npos) << line;
  const std::string summary = p.summary();
  EXPECT_NE(summary.find("10 from earlier runs, 101 in this run"), std::string::npos) << summary;
  EXPECT_NE(summary.find("1000 in"), std::string::npos) << summary;
  EXPECT_NE(summary.find("p99 99.000 s"), std::string::npos) << summary;
  p.tick(true);
  p.close();
  std::fclose(sink);
  EXPECT_EQ(format_duration(59.6), "1m00s");
  EXPECT_EQ(format_duration(3725), "1h02m");
  EXPECT_EQ(format_duration(7), "7s");
}

}  // namespace
}  // namespace v4rt::launch::batch
