// SPDX-License-Identifier: MIT
// safetensors header parsing/validation, read-only mmap, and the writer (see safetensors.h).
// Every error is one line that names the file and, where one is at fault, the tensor.
#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/check.h"
#include "common/json_depth.h"

namespace v4rt::model::safetensors {

using nlohmann::json;

uint64_t shape_numel(const std::vector<int64_t>& shape) {
  uint64_t n = 1;
  for (int64_t d : shape) n *= uint64_t(d);
  return n;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << ']';
  return os.str();
}

// ---------------------------------------------------------------------------------------------
// Reader
// ---------------------------------------------------------------------------------------------

namespace {

Entry parse_entry(const std::string& name, const json& v, uint64_t data_size, const std::string& path) {
  const std::string where = path + ": tensor '" + name + "'";
  V4RT_REQUIRE(v.is_object(), where << ": header entry is not an object");
  for (const char* key : {"dtype", "shape", "data_offsets"})
    V4RT_REQUIRE(v.contains(key), where << ": header entry lacks '" << key << "'");
  Entry e;
  e.name = name;
  const json& dt = v["dtype"];
  V4RT_REQUIRE(dt.is_string(), where << ": 'dtype' is not a string");
  V4RT_REQUIRE(dtype_from_name(dt.get<std::string>(), &e.dtype),
               where << ": unknown dtype '" << dt.get<std::string>() << "'");
  const json& shape = v["shape"];
  V4RT_REQUIRE(shape.is_array(), where << ": 'shape' is not an array");
  uint64_t numel = 1;
  for (const json& d : shape) {
    V4RT_REQUIRE(d.is_number_unsigned() || (d.is_number_integer() && d.get<int64_t>() >= 0),
                 where << ": shape " << shape.dump() << " has a non-integer or negative dimension");
    const uint64_t dim = d.get<uint64_t>();
    V4RT_REQUIRE(dim < (uint64_t(1) << 40) && (dim == 0 || numel <= (uint64_t(1) << 50) / dim),
                 where << ": shape " << shape.dump() << " is implausibly large");
    numel *= dim;
    e.shape.push_back(int64_t(dim));
  }
  const json& off = v["data_offsets"];
  V4RT_REQUIRE(off.is_array() && off.size() == 2 && off[0].is_number_unsigned() && off[1].is_number_unsigned(),
               where << ": 'data_offsets' must be two non-negative integers, got " << off.dump());
  e.begin = off[0].get<uint64_t>();
  e.end = off[1].get<uint64_t>();
  V4RT_REQUIRE(e.begin <= e.end, where << ": data_offsets [" << e.begin << ", " << e.end << "] are reversed");
  V4RT_REQUIRE(e.end <= data_size, where << ": data_offsets [" << e.begin << ", " << e.end
                                         << "] run past the data area (" << data_size
                                         << " bytes; file truncated?)");
  const uint64_t expect = numel * dtype_size(e.dtype);
  V4RT_REQUIRE(expect == e.end - e.begin, where << ": shape " << shape_str(e.shape) << " x " << dtype_name(e.dtype)
                                                << " = " << expect << " bytes, but data_offsets span "
                                                << (e.end - e.begin));
  return e;
}

}  // namespace

Header parse_header(const uint8_t* prefix, uint64_t prefix_size, uint64_t file_size, const std::string& path) {
  V4RT_REQUIRE(file_size >= 8, path << ": file is " << file_size << " bytes, too short for a safetensors header");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | prefix[i];
  V4RT_REQUIRE(header_len >= 2 && header_len <= kMaxHeaderBytes,
               path << ": header length " << header_len << " is not plausible (corrupt file?)");
  V4RT_REQUIRE(8 + header_len <= file_size,
               path << ": header length " << header_len << " runs past the end of the file (" << file_size
                    << " bytes; truncated?)");
  CHECK_GE(prefix_size, 8 + header_len);
  Header h;
  h.data_offset = 8 + header_len;
  const uint64_t data_size = file_size - h.data_offset;
  const char* text = reinterpret_cast<const char*>(prefix + 8);
  V4RT_REQUIRE(json_depth_ok(std::string_view(text, header_len)),
               path << ": header nests deeper than " << kMaxJsonDepth << " levels (corrupt file?)");
  json j;
  try {
    j = json::parse(text, text + header_len);
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a number too large
    V4RT_FAIL(path << ": header is not valid JSON (" << e.what() << ")");
  }
  V4RT_REQUIRE(j.is_object(), path << ": header is not a JSON object");
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() == "__metadata__") {
      V4RT_REQUIRE(it.value().is_object(), path << ": '__metadata__' is not an object");
      for (auto m = it.value().begin(); m != it.value().end(); ++m) {
        V4RT_REQUIRE(m.value().is_string(), path << ": '__metadata__' value '" << m.key() << "' is not a string");
        h.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    h.entries.push_back(parse_entry(it.key(), it.value(), data_size, path));
  }
  // Non-overlap: sort the (non-empty) ranges by start and compare neighbours.
  std::vector<const Entry*> order;
  for (const Entry& e : h.entries)
    if (e.end > e.begin) order.push_back(&e);
  std::sort(order.begin(), order.end(), [](const Entry* a, const Entry* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < order.size(); ++i) {
    V4RT_REQUIRE(order[i]->begin >= order[i - 1]->end,
                 path << ": tensor '" << order[i]->name << "' bytes [" << order[i]->begin << ", " << order[i]->end
                      << ") overlap tensor '" << order[i - 1]->name << "' [" << order[i - 1]->begin << ", "
                      << order[i - 1]->end << ")");
  }
  return h;
}

MappedFile::MappedFile(const std::string& path) : path_(path) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever; the
  // non-regular file is then refused (a regular file ignores the flag).
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  V4RT_REQUIRE(fd >= 0, path << ": cannot open (" << std::strerror(errno) << ")");
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    V4RT_FAIL(path << ": cannot stat (" << std::strerror(err) << ")");
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    V4RT_FAIL(path << ": not a regular file (a FIFO, device or directory cannot be a safetensors file)");
  }
  size_ = uint64_t(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      V4RT_FAIL(path << ": cannot mmap " << size_ << " bytes (" << std::strerror(err) << ")");
    }
    data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);  // the mapping stays valid
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

// ---------------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------------

uint64_t TensorSpec::bytes() const { return shape_numel(shape) * dtype_size(dtype); }

std::string header_json(const std::vector<TensorSpec>& specs, const std::map<std::string, std::string>& metadata) {
  // ordered_json keeps insertion order, so the header lists tensors as given.
  nlohmann::ordered_json j;
  if (!metadata.empty()) {
    nlohmann::ordered_json m = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    j["__metadata__"] = m;
  }
  uint64_t offset = 0;
  for (const TensorSpec& t : specs) {
    j[t.name] = {{"dtype", std::string(dtype_name(t.dtype))},
                 {"shape", t.shape},
                 {"data_offsets", {offset, offset + t.bytes()}}};
    offset += t.bytes();
  }
  std::string text = j.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

StreamWriter::StreamWriter(const std::string& path, std::vector<TensorSpec> specs,
                           const std::map<std::string, std::string>& metadata)
    : path_(path) {
  for (const TensorSpec& t : specs) expected_ += t.bytes();
  const std::string header = header_json(specs, metadata);
  file_ = std::fopen(path.c_str(), "wb");
  V4RT_REQUIRE(file_, path << ": cannot open for writing (" << std::strerror(errno) << ")");
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = uint8_t(uint64_t(header.size()) >> (8 * i));
  std::fwrite(len, 1, 8, file_);
  std::fwrite(header.data(), 1, header.size(), file_);
}

StreamWriter::~StreamWriter() {
  if (file_) std::fclose(file_);
}

void StreamWriter::append(const void* bytes, size_t n) {
  CHECK(file_) << path_ << ": append after finish";
  CHECK_LE(written_ + n, expected_) << path_ << ": more tensor bytes than the header announces";
  V4RT_REQUIRE(std::fwrite(bytes, 1, n, file_) == n, path_ << ": write failed (" << std::strerror(errno) << ")");
  written_ += n;
}

void StreamWriter::finish() {
  CHECK_EQ(written_, expected_) << path_ << ": tensor bytes missing at finish";
  const bool ok = std::fflush(file_) == 0 && !std::ferror(file_);
  std::fclose(file_);
  file_ = nullptr;
  V4RT_REQUIRE(ok, path_ << ": write failed (disk full?)");
}

void write_file(const std::string& path, const std::vector<WriteTensor>& tensors,
                const std::map<std::string, std::string>& metadata) {
  std::vector<TensorSpec> specs;
  for (const WriteTensor& t : tensors) {
    specs.push_back({t.name, t.dtype, t.shape});
    V4RT_REQUIRE(specs.back().bytes() == t.bytes.size(),
                 path << ": tensor '" << t.name << "' has " << t.bytes.size() << " bytes, shape "
                      << shape_str(t.shape) << " x " << dtype_name(t.dtype) << " needs " << specs.back().bytes());
  }
  StreamWriter w(path, std::move(specs), metadata);
  for (const WriteTensor& t : tensors) w.append(t.bytes.data(), t.bytes.size());
  w.finish();
}

}  // namespace v4rt::model::safetensors
