#pragma once
// UTF-8 helpers shared by the tokenizers: validation (tokenizers reject bad
// input up front instead of letting a regex engine or SentencePiece guess),
// code point stepping, and GPT-2's byte <-> printable-char table used by
// byte-level BPE vocabularies.
#include <cstdint>
#include <string>
#include <string_view>

namespace moefy {

// Throws moefy::Error naming `what` and the byte offset of the first invalid
// sequence (overlong forms, surrogates and code points > U+10FFFF are invalid).
void check_utf8(std::string_view s, std::string_view what);

// Byte offset of the first invalid sequence, or npos when s is valid UTF-8.
size_t find_invalid_utf8(std::string_view s);

// Length in bytes of the UTF-8 sequence starting with lead byte b (1 for
// stray continuation bytes, so that callers on unchecked text always advance).
inline int utf8_len(uint8_t b) {
    if (b < 0x80) return 1;
    if ((b & 0xE0) == 0xC0) return 2;
    if ((b & 0xF0) == 0xE0) return 3;
    if ((b & 0xF8) == 0xF0) return 4;
    return 1;
}

void append_utf8(std::string& out, uint32_t cp);

// Decodes the first code point of s (must be valid UTF-8 and non-empty).
uint32_t first_code_point(std::string_view s);

// Replaces each maximal invalid subsequence with U+FFFD, as Rust's
// String::from_utf8_lossy does (what HF decoders return).
std::string utf8_lossy(std::string_view s);

// GPT-2 byte-level alphabet: byte b is shown as code point byte_to_char(b)
// (printable Latin-1 bytes map to themselves, the rest to U+0100 + k).
uint32_t byte_to_char(uint8_t b);
// Inverse: -1 when cp is not one of the 256 byte-level characters.
int char_to_byte(uint32_t cp);
// Maps a byte-level token string back to raw bytes; false when some char is
// outside the alphabet (the token is then not byte-level; caller keeps it).
bool byte_level_to_bytes(std::string_view token, std::string& out);

}  // namespace moefy
