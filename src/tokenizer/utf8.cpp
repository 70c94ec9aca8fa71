#include "tokenizer/utf8.h"

#include <array>

#include "common/error.h"

namespace moefy {

// Length of the valid UTF-8 sequence at s[i], or 0 when it is invalid.
// Follows the well-formed byte ranges of Unicode Table 3-7.
static size_t valid_seq_len(std::string_view s, size_t i) {
    const auto b = [&](size_t k) { return static_cast<uint8_t>(s[i + k]); };
    const size_t left = s.size() - i;
    const uint8_t c = b(0);
    if (c < 0x80) return 1;
    const auto cont = [&](size_t k) { return k < left && (b(k) & 0xC0) == 0x80; };
    if (c >= 0xC2 && c <= 0xDF) return cont(1) ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        if (left < 2) return 0;
        const uint8_t c1 = b(1);
        const uint8_t lo = c == 0xE0 ? 0xA0 : 0x80;   // no overlongs
        const uint8_t hi = c == 0xED ? 0x9F : 0xBF;   // no surrogates
        if (c1 < lo || c1 > hi) return 0;
        return cont(2) ? 3 : 0;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (left < 2) return 0;
        const uint8_t c1 = b(1);
        const uint8_t lo = c == 0xF0 ? 0x90 : 0x80;
        const uint8_t hi = c == 0xF4 ? 0x8F : 0xBF;   // <= U+10FFFF
        if (c1 < lo || c1 > hi) return 0;
        return cont(2) && cont(3) ? 4 : 0;
    }
    return 0;
}

size_t find_invalid_utf8(std::string_view s) {
    size_t i = 0;
    while (i < s.size()) {
        // ASCII fast path: most text is mostly ASCII.
        while (i < s.size() && static_cast<uint8_t>(s[i]) < 0x80) ++i;
        if (i == s.size()) break;
        const size_t n = valid_seq_len(s, i);
        if (n == 0) return i;
        i += n;
    }
    return std::string_view::npos;
}

void check_utf8(std::string_view s, std::string_view what) {
    const size_t bad = find_invalid_utf8(s);
    if (bad == std::string_view::npos) return;
    fail("{}: invalid UTF-8 at byte {} (byte 0x{:02X}) of {}-byte input", what, bad,
         static_cast<uint8_t>(s[bad]), s.size());
}

void append_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
        out += static_cast<char>(cp);
    } else if (cp < 0x800) {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out += static_cast<char>(0xE0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
        out += static_cast<char>(0xF0 | (cp >> 18));
        out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    }
}

uint32_t first_code_point(std::string_view s) {
    const auto b = [&](size_t k) { return static_cast<uint32_t>(static_cast<uint8_t>(s[k])); };
    switch (utf8_len(static_cast<uint8_t>(s[0]))) {
        case 2: return ((b(0) & 0x1F) << 6) | (b(1) & 0x3F);
        case 3: return ((b(0) & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
        case 4:
            return ((b(0) & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) |
                   (b(3) & 0x3F);
        default: return b(0);
    }
}

std::string utf8_lossy(std::string_view s) {
    if (find_invalid_utf8(s) == std::string_view::npos) return std::string(s);
    std::string out;
    out.reserve(s.size() + 8);
    size_t i = 0;
    while (i < s.size()) {
        const size_t n = valid_seq_len(s, i);
        if (n > 0) {
            out.append(s.substr(i, n));
            i += n;
            continue;
        }
        // A maximal invalid subsequence is the longest prefix of a valid
        // sequence (at least one byte); it becomes one U+FFFD.
        size_t k = 1;
        const uint8_t c = static_cast<uint8_t>(s[i]);
        const int want = utf8_len(c);
        if (want > 1 && c >= 0xC2 && c <= 0xF4) {
            for (; k < static_cast<size_t>(want) && i + k < s.size(); ++k) {
                const uint8_t ck = static_cast<uint8_t>(s[i + k]);
                uint8_t lo = 0x80, hi = 0xBF;
                if (k == 1) {
                    if (c == 0xE0) lo = 0xA0;
                    if (c == 0xED) hi = 0x9F;
                    if (c == 0xF0) lo = 0x90;
                    if (c == 0xF4) hi = 0x8F;
                }
                if (ck < lo || ck > hi) break;
            }
        }
        out += "\xEF\xBF\xBD";
        i += k;
    }
    return out;
}

namespace {
struct ByteLevelTable {
    std::array<uint32_t, 256> to_char{};
    std::array<int16_t, 512> to_byte{};  // every byte-level char is < U+0200
    ByteLevelTable() {
        to_byte.fill(-1);
        const auto printable = [](int b) {
            return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        };
        int n = 0;
        for (int b = 0; b < 256; ++b) {
            const uint32_t cp = printable(b) ? static_cast<uint32_t>(b) : 256u + n++;
            to_char[b] = cp;
            to_byte[cp] = static_cast<int16_t>(b);
        }
    }
};
const ByteLevelTable& byte_table() {
    static const ByteLevelTable t;
    return t;
}
}  // namespace

uint32_t byte_to_char(uint8_t b) { return byte_table().to_char[b]; }

int char_to_byte(uint32_t cp) { return cp < 512 ? byte_table().to_byte[cp] : -1; }

bool byte_level_to_bytes(std::string_view token, std::string& out) {
    out.clear();
    size_t i = 0;
    while (i < token.size()) {
        const int n = utf8_len(static_cast<uint8_t>(token[i]));
        if (i + n > token.size()) return false;
        const int b = char_to_byte(first_code_point(token.substr(i, n)));
        if (b < 0) return false;
        out += static_cast<char>(b);
        i += n;
    }
    return true;
}

}  // namespace moefy
