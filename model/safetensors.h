// SPDX-License-Identifier: MIT
// The safetensors container: an 8-byte little-endian header length, a JSON header
// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}, then the data
// area. The reader validates the header completely (length sane and inside the file, JSON well
// formed, dtypes known, shape x dtype size == end - begin, ranges inside the data area and not
// overlapping) and memory-maps the file read-only without touching tensor bytes. The writer is
// used by init-model and by tests that build (possibly corrupt) checkpoints.
#pragma once

#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "common/dtype.h"

namespace v4rt::model::safetensors {

// Headers larger than this are rejected as corrupt (the Pro release's biggest shard header is
// well under 1 MiB).
constexpr uint64_t kMaxHeaderBytes = uint64_t(100) << 20;

struct Entry {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // relative to the start of the data area
  uint64_t end = 0;
};

struct Header {
  uint64_t data_offset = 0;  // absolute file offset of the data area (8 + header length)
  std::vector<Entry> entries;  // in header order
  std::map<std::string, std::string> metadata;
};

// Parses and validates a header. `prefix` holds at least the first min(file_size, 8 + header
// length) bytes of the file; `file_size` is the whole file's size. Throws v4rt::Error naming `path`
// (and the tensor, where one is at fault).
Header parse_header(const uint8_t* prefix, uint64_t prefix_size, uint64_t file_size, const std::string& path);

// A read-only, private memory mapping of a whole file.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path);  // throws v4rt::Error naming the file
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

// A tensor's header entry, before its bytes exist.
struct TensorSpec {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t bytes() const;  // numel x dtype size
};

// One tensor to write: raw little-endian bytes in the element type's layout.
struct WriteTensor {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

// The header JSON text for tensors laid out back to back in the given order, padded with spaces to
// an 8-byte boundary as the reference writer does (tests build corrupt files from it).
std::string header_json(const std::vector<TensorSpec>& specs, const std::map<std::string, std::string>& metadata);

// Writes a file whose tensors are produced one after another (a checkpoint larger than memory):
// the header goes out first, then append() must deliver exactly each tensor's bytes in order.
class StreamWriter {
 public:
  StreamWriter(const std::string& path, std::vector<TensorSpec> specs,
               const std::map<std::string, std::string>& metadata = {{"format", "pt"}});
  ~StreamWriter();
  StreamWriter(const StreamWriter&) = delete;
  StreamWriter& operator=(const StreamWriter&) = delete;
  void append(const void* bytes, size_t n);
  void finish();  // checks every byte was delivered, flushes and closes; throws on failure

 private:
  std::string path_;
  std::FILE* file_ = nullptr;
  uint64_t expected_ = 0;
  uint64_t written_ = 0;
};

// Serializes tensors (in the given order) to `path`. Throws v4rt::Error when the file cannot be
// written or a tensor's byte count disagrees with its shape.
void write_file(const std::string& path, const std::vector<WriteTensor>& tensors,
                const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

uint64_t shape_numel(const std::vector<int64_t>& shape);
std::string shape_str(const std::vector<int64_t>& shape);  // "[4, 256]"

}  // namespace v4rt::model::safetensors
