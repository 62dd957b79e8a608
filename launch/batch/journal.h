// SPDX-License-Identifier: MIT
// The batch journal (<output>.journal): the durable record of a batch job. It opens with a header
// record pinning the input (SHA-256, size, line count) and the arguments that decide the results;
// every finished request then appends one result record, committed by write + fdatasync before
// the job counts it as done. Records are framed so a torn or corrupt tail (a kill mid-write) is
// recognised and cut off on resume:
//
//   frame = magic u32 "V4BJ" | kind u32 (1 header, 2 result) | payload_len u32 | crc u32 | payload
//   crc   = CRC-32 over the kind and length words (little-endian) and then the payload
//   header payload = JSON text (JournalHeader); result payload = line_idx u64 | output line bytes
//
// The output file is derived from the journal (docs/BATCH.md) and replaced atomically
// (write_file_atomic), so it never holds a partial line.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace v4rt::launch::batch {

constexpr uint32_t kJournalMagic = 0x4A423456;  // bytes "V4BJ"
constexpr uint32_t kRecordHeader = 1;
constexpr uint32_t kRecordResult = 2;
constexpr size_t kFrameBytes = 16;
constexpr uint32_t kMaxPayloadBytes = uint32_t(1) << 30;

struct JournalHeader {
  int format = 1;
  std::string input_sha256;
  int64_t input_bytes = 0;
  int64_t num_lines = 0;
  uint64_t seed = 0;
  bool ordered = false;
  std::string model;           // checkpoint directory, absolute and normalised
  std::string config_sha256;   // of the resolved runtime config (runtime_config_yaml)
  int64_t created = 0;         // unix seconds of the first run: every response's `created`
  int mtp = 0;                 // draft depth of speculative decoding (0: off); sampled draws depend on it

  std::string to_json() const;
  // Throws v4rt::Error naming `source` when a field is missing or mistyped.
  static JournalHeader from_json(const std::string& text, const std::string& source);
};

// The fields (by name) whose values differ; `created` is not compared.
std::vector<std::string> header_mismatches(const JournalHeader& stored, const JournalHeader& current);

struct JournalRecord {
  int64_t line_idx = 0;   // 0-based line of the input file
  std::string line;       // the output line, without the newline
};

struct JournalScan {
  JournalHeader header;
  std::vector<JournalRecord> records;  // in commit order, first record per line_idx only
  uint64_t valid_bytes = 0;            // end of the last intact record
  uint64_t file_bytes = 0;             // bytes on disk; more than valid_bytes = torn/corrupt tail
  int64_t duplicates = 0;              // records for a line_idx already recorded (ignored)
};

// Refuses a job whose files would overwrite one another: the journal equal to the output or to
// the output's temporary file (<output>.tmp), the output equal to the journal's (<journal>.tmp),
// or the input equal to any of them. Compares the paths as the file system resolves them. Throws
// v4rt::Error naming both flags.
void check_job_paths(const std::string& input, const std::string& output, const std::string& journal);

// Reads a journal. Throws v4rt::Error naming the file when it cannot be read or does not start
// with an intact header record (journals are created with their header atomically).
JournalScan scan_journal(const std::string& path);

// Appends result records. Holds an exclusive advisory lock (flock) on the journal for its
// lifetime, so two jobs never write the same journal.
class JournalWriter {
 public:
  // Creates `path` holding only `header` (written to path.tmp, fsynced, renamed).
  static std::unique_ptr<JournalWriter> create(const std::string& path, const JournalHeader& header);
  // Opens an existing journal for appending after `scan`; cuts the file to scan.valid_bytes.
  static std::unique_ptr<JournalWriter> resume(const std::string& path, const JournalScan& scan);
  ~JournalWriter();

  // Returns once the record is durable (write + fdatasync). Throws v4rt::Error on an I/O error.
  void append(const JournalRecord& record);
  // TEST HOOK: write the first half of every record, sync, sleep `ms`, then write the rest, so a
  // test can kill the job in the middle of a record.
  void set_test_hook_pause_mid_record_ms(int ms) { pause_mid_record_ms_ = ms; }

 private:
  JournalWriter(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  std::string path_;
  int fd_ = -1;
  int pause_mid_record_ms_ = 0;
};

// One framed record (exposed for tests that build damaged journals).
std::string encode_frame(uint32_t kind, const std::string& payload);
std::string encode_result_payload(const JournalRecord& record);

// Writes `content` to path.tmp, fsyncs it, renames it over `path` and fsyncs the directory.
void write_file_atomic(const std::string& path, const std::string& content);

}  // namespace v4rt::launch::batch
