// SPDX-License-Identifier: MIT
// Digests of the batch job: SHA-256 of the input file (the journal header pins the exact input),
// CRC-32 of journal records (torn or corrupt tails are found on resume), and a 64-bit mix for
// deriving per-request seeds and ids from the job seed and the custom_id. Self-contained so the
// journal format does not depend on a crypto library being installed.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace v4rt::launch::batch {

class Sha256 {
 public:
  Sha256();
  void update(std::span<const uint8_t> bytes);
  void update(std::string_view text) {
    update(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(text.data()), text.size()));
  }
  std::string hex_digest();  // 64 lowercase hex digits; the object is spent afterwards

 private:
  void block(const uint8_t* p);  // one 64-byte block
  uint32_t h_[8];
  uint8_t buf_[64];
  size_t buf_len_ = 0;
  uint64_t total_ = 0;
};

std::string sha256_hex(std::string_view text);

// CRC-32 (IEEE 802.3, reflected, as zlib's crc32); `crc` continues a previous value.
uint32_t crc32(std::span<const uint8_t> bytes, uint32_t crc = 0);

// 64-bit FNV-1a of `text`, then a splitmix64 finaliser with `seed` mixed in.
uint64_t hash64(std::string_view text, uint64_t seed);

}  // namespace v4rt::launch::batch
