#pragma once
// PCRE2 (UTF + UCP, JIT when available) for the pre-tokenizer patterns of
// tokenizer.json. PCRE2 rather than std::regex: the LLaMA-3 pattern needs
// \p{L}/\p{N} classes, (?i:...) groups and the lookahead \s+(?!\S).
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace moefy {

class Regex {
public:
    // `what` names the pattern's origin for error messages.
    Regex(const std::string& pattern, const std::string& what);
    ~Regex();
    Regex(const Regex&) = delete;
    Regex& operator=(const Regex&) = delete;

    // Non-overlapping matches, left to right, as [begin, end) byte ranges.
    // `text` must be valid UTF-8 (checked by the caller, not again here).
    // Thread-safe: match state is per call.
    std::vector<std::pair<size_t, size_t>> find_all(std::string_view text) const;

private:
    void* code_ = nullptr;  // pcre2_code_8*
    std::string what_;
};

}  // namespace moefy
