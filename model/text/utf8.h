// SPDX-License-Identifier: MIT
// Small UTF-8 helpers shared by the tokenizer, the detokenizer and the output parser: strict
// decoding (no overlongs, no surrogates, <= U+10FFFF) and "where does the last complete character
// end", which streaming code uses to hold back a character split across chunks.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace v4rt::model::text {

// Length of the sequence announced by a lead byte (1 for ASCII and for invalid lead bytes).
inline size_t utf8_char_len(unsigned char lead) {
  if (lead < 0xC0) return 1;
  if (lead < 0xE0) return 2;
  if (lead < 0xF0) return 3;
  return 4;
}

// Decodes the character at s[i]; returns its length, or 0 when the bytes there are not valid
// (or not complete) UTF-8.
inline size_t utf8_decode(std::string_view s, size_t i, uint32_t* cp) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) {
    *cp = b0;
    return 1;
  }
  size_t n;
  uint32_t c, min;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    n = 2, c = b0 & 0x1F, min = 0x80;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    n = 3, c = b0 & 0x0F, min = 0x800;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    n = 4, c = b0 & 0x07, min = 0x10000;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    const auto b = static_cast<unsigned char>(s[i + k]);
    if ((b & 0xC0) != 0x80) return 0;
    c = (c << 6) | (b & 0x3F);
  }
  if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return 0;
  *cp = c;
  return n;
}

// Offset of the first byte that does not start a valid character, or npos when all is valid.
inline size_t utf8_first_invalid(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    uint32_t cp;
    const size_t n = utf8_decode(s, i, &cp);
    if (n == 0) return i;
    i += n;
  }
  return std::string_view::npos;
}

// Length of the incomplete-but-so-far-valid character at the end of s (0..3): the bytes a
// streaming consumer should hold back until more arrive.
inline size_t utf8_incomplete_tail(std::string_view s) {
  const size_t n = s.size();
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    const auto b = static_cast<unsigned char>(s[n - back]);
    if ((b & 0xC0) == 0x80) continue;  // continuation byte: keep looking for the lead
    if (b < 0xC2 || b > 0xF4) return 0;
    const size_t need = utf8_char_len(b);
    if (need <= back) return 0;  // complete (or over-long run, judged elsewhere)
    // Check the second byte's range for E0/ED/F0/F4 so a doomed prefix is not held.
    if (back >= 2) {
      const auto b1 = static_cast<unsigned char>(s[n - back + 1]);
      if ((b == 0xE0 && b1 < 0xA0) || (b == 0xED && b1 > 0x9F) || (b == 0xF0 && b1 < 0x90) ||
          (b == 0xF4 && b1 > 0x8F))
        return 0;
    }
    return back;
  }
  return 0;
}

}  // namespace v4rt::model::text
