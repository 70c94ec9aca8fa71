#include "data/documents.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "io/json.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace moefy {

static bool ends_with(const std::string& s, const std::string& suf) {
    return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

std::vector<std::string> read_documents(const std::string& path, const std::string& text_field) {
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec)) fail("{}: data path is a directory; give a .jsonl or text file", path);
    std::ifstream f(path, std::ios::binary);
    if (!f) fail("{}: cannot open data file: {}", path, std::strerror(errno));
    std::vector<std::string> docs;
    if (!ends_with(path, ".jsonl") && !ends_with(path, ".json")) {
        std::string all((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
        check_utf8(all, path);
        if (all.find_first_not_of(" \t\r\n") == std::string::npos) fail("{}: the file holds no text", path);
        docs.push_back(std::move(all));
        return docs;
    }
    std::string line;
    size_t lineno = 0;
    while (std::getline(f, line)) {
        ++lineno;
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        const std::string where = fmt::format("{}:{}", path, lineno);
        nlohmann::json j;
        check_json_depth(line, where);
        try {
            j = nlohmann::json::parse(line);
        } catch (const nlohmann::json::exception&) {
            fail("{}: line is not valid JSON (expected one JSON object per line)", where);
        }
        if (!j.is_object()) fail("{}: line is not a JSON object", where);
        std::string field = text_field;
        if (field.empty()) field = j.contains("text") ? "text" : "content";
        if (!j.contains(field) || !j[field].is_string())
            fail("{}: no string field '{}'{}", where, field, text_field.empty() ? " (nor 'text'); choose one with --text-field" : "");
        std::string text = j[field].get<std::string>();
        check_utf8(text, where);
        docs.push_back(std::move(text));
    }
    if (docs.empty()) fail("{}: no documents (the file is empty)", path);
    return docs;
}

// The first `need` tokens of `d`, tokenizing only as much of it as that takes:
// a prefix cut at whitespace (and never inside a UTF-8 sequence), doubled until
// it yields `need` tokens plus a margin. Tokenizers split on whitespace before
// merging, so the tokens well before the cut are those of the whole document;
// the margin covers the last pieces before the cut, which may differ.
static std::vector<int32_t> encode_prefix(const Tokenizer& tok, const std::string& d, size_t need) {
    constexpr size_t kMargin = 64;
    size_t bytes = std::max<size_t>(size_t(1) << 14, (need + kMargin) * 8);
    while (bytes < d.size()) {
        size_t cut = d.find_last_of(" \t\r\n", bytes);
        if (cut == std::string::npos || cut < bytes / 2) {
            cut = bytes;
            while (cut > 0 && (static_cast<unsigned char>(d[cut]) & 0xC0) == 0x80) --cut;  // start of a character
        }
        std::vector<int32_t> ids = tok.encode(d.substr(0, cut), false);
        if (ids.size() >= need + kMargin) {
            ids.resize(need);
            return ids;
        }
        bytes *= 2;
    }
    return tok.encode(d, false);
}

std::vector<TokenWindow> make_windows(const std::vector<std::string>& docs, const Tokenizer& tok, const WindowOptions& opt) {
    if (opt.ctx < 2) fail("context length must be at least 2 tokens (got {})", opt.ctx);
    std::vector<TokenWindow> out;
    size_t predicted = 0;
    const int bos = tok.bos_id();
    for (const std::string& d : docs) {
        // --max-tokens bounds the work too: only as much of a document is tokenized as the windows can take.
        std::vector<int32_t> ids = opt.max_tokens ? encode_prefix(tok, d, opt.max_tokens - predicted + 1) : tok.encode(d, false);
        if (opt.add_bos && bos >= 0) ids.insert(ids.begin(), bos);
        const size_t step = size_t(opt.ctx) - 1;
        for (size_t s = 0; s + 1 < ids.size(); s += step) {
            size_t e = std::min(ids.size(), s + size_t(opt.ctx));
            if (opt.max_tokens && predicted + (e - s - 1) > opt.max_tokens) e = s + 1 + (opt.max_tokens - predicted);
            if (e - s < 2) break;
            out.emplace_back(ids.begin() + long(s), ids.begin() + long(e));
            predicted += e - s - 1;
            if (opt.max_tokens && predicted >= opt.max_tokens) return out;
        }
    }
    return out;
}

size_t predicted_tokens(const std::vector<TokenWindow>& windows) {
    size_t n = 0;
    for (const auto& w : windows) n += w.size() - 1;
    return n;
}

std::vector<TokenWindow> read_windows(const std::string& path, const std::string& text_field, const Tokenizer& tok, int ctx,
                                      size_t max_tokens) {
    return make_windows(read_documents(path, text_field), tok, {ctx, max_tokens, true});
}

}  // namespace moefy
