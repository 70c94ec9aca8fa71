#include "io/json.h"

#include <cstdint>

#include <limits>

#include "common/error.h"
#include "io/output_dir.h"

namespace moefy {

void check_json_depth(std::string_view text, const std::string& where) {
    int depth = 0;
    bool in_string = false;
    for (size_t i = 0; i < text.size(); ++i) {
        const char c = text[i];
        if (in_string) {
            if (c == '\\') ++i;  // the escaped character cannot end the string
            else if (c == '"') in_string = false;
            continue;
        }
        if (c == '"') in_string = true;
        else if (c == '[' || c == '{') {
            if (++depth > kMaxJsonDepth) fail("{}: JSON nested deeper than {} levels (at byte {})", where, kMaxJsonDepth, i);
        } else if (c == ']' || c == '}') {
            --depth;  // unbalanced input is the parser's to report
        }
    }
}

nlohmann::json parse_json(std::string_view text, const std::string& where) {
    check_json_depth(text, where);
    try {
        return nlohmann::json::parse(text.begin(), text.end());
    } catch (const nlohmann::json::exception& e) {
        fail("{}: not well-formed JSON: {}", where, e.what());
    }
}

nlohmann::json read_json_file(const std::string& path) { return parse_json(read_text_file(path), path); }

bool json_int_in(const nlohmann::json& v, int64_t lo, int64_t hi) {
    if (v.is_number_unsigned()) {
        const uint64_t u = v.get<uint64_t>();
        return hi >= 0 && u <= uint64_t(hi) && (lo <= 0 || u >= uint64_t(lo));
    }
    if (!v.is_number_integer()) return false;
    const int64_t x = v.get<int64_t>();
    return x >= lo && x <= hi;
}

int64_t json_int(const nlohmann::json& v, int64_t lo, int64_t hi, const std::string& what) {
    if (!json_int_in(v, lo, hi)) {
        fail("{} must be an integer in [{}, {}], got {}", what, lo, hi, v.dump());
    }
    return v.is_number_unsigned() ? int64_t(v.get<uint64_t>()) : v.get<int64_t>();
}

namespace {
const nlohmann::json* field(const nlohmann::json& obj, const char* key) {
    if (!obj.is_object()) return nullptr;
    auto it = obj.find(key);
    return it == obj.end() || it->is_null() ? nullptr : &*it;
}
}  // namespace

std::string json_get_or(const nlohmann::json& obj, const char* key, const std::string& def, const std::string& where) {
    const nlohmann::json* v = field(obj, key);
    if (!v) return def;
    if (!v->is_string()) fail("{}: field '{}' must be a string, got {}", where, key, v->type_name());
    return v->get<std::string>();
}
std::string json_get_or(const nlohmann::json& obj, const char* key, const char* def, const std::string& where) {
    return json_get_or(obj, key, std::string(def), where);
}
bool json_get_or(const nlohmann::json& obj, const char* key, bool def, const std::string& where) {
    const nlohmann::json* v = field(obj, key);
    if (!v) return def;
    if (!v->is_boolean()) fail("{}: field '{}' must be true or false, got {}", where, key, v->type_name());
    return v->get<bool>();
}
int64_t json_get_or(const nlohmann::json& obj, const char* key, int64_t def, const std::string& where) {
    const nlohmann::json* v = field(obj, key);
    if (!v) return def;
    return json_int(*v, INT64_MIN, INT64_MAX, fmt::format("{}: field '{}'", where, key));
}
double json_get_or(const nlohmann::json& obj, const char* key, double def, const std::string& where) {
    const nlohmann::json* v = field(obj, key);
    if (!v) return def;
    if (!v->is_number()) fail("{}: field '{}' must be a number, got {}", where, key, v->type_name());
    return v->get<double>();
}

}  // namespace moefy
