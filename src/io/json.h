#pragma once
// JSON from files moefy did not write: the nesting depth is capped before
// nlohmann builds the tree (its copy, dump and comparison recurse once per
// level, so a deeply nested file overflows the stack), and integers are read
// as int64 with an explicit range, never cut to 32 bits.
#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace moefy {

// Deeper than any config, plan, tokenizer or index file moefy knows (they use < 10).
inline constexpr int kMaxJsonDepth = 64;

// Throws "<where>: JSON nested deeper than 64 levels" when arrays/objects
// nest too deep. Strings (with escapes) are skipped, so brackets inside them do not count.
void check_json_depth(std::string_view text, const std::string& where);

// check_json_depth, then nlohmann::json::parse; a syntax error becomes
// "<where>: not well-formed JSON: <parser message>".
nlohmann::json parse_json(std::string_view text, const std::string& where);
// Reads the file (naming it when it cannot) and parses it as above.
nlohmann::json read_json_file(const std::string& path);

// `v` as an integer in [lo, hi]; throws "<what> must be an integer in [lo, hi], got <v>".
int64_t json_int(const nlohmann::json& v, int64_t lo, int64_t hi, const std::string& what);
// True when `v` is an integer in [lo, hi] (no throw).
bool json_int_in(const nlohmann::json& v, int64_t lo, int64_t hi);

// Optional fields of files moefy did not write: `obj[key]` when it is there
// (not null), else `def`. A field of the wrong type throws "<where>: field
// '<key>' must be <a string | true or false | an integer | a number>" instead
// of escaping as a JSON type error (nlohmann's value() throws on a mismatch).
std::string json_get_or(const nlohmann::json& obj, const char* key, const std::string& def, const std::string& where);
std::string json_get_or(const nlohmann::json& obj, const char* key, const char* def, const std::string& where);
bool json_get_or(const nlohmann::json& obj, const char* key, bool def, const std::string& where);
int64_t json_get_or(const nlohmann::json& obj, const char* key, int64_t def, const std::string& where);
double json_get_or(const nlohmann::json& obj, const char* key, double def, const std::string& where);

}  // namespace moefy
