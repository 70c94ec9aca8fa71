#include "tokenizer/hf_tokenizer.h"

#include <algorithm>
#include <cctype>
#include <optional>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "io/json.h"
#include "tokenizer/bpe.h"
#include "tokenizer/regex.h"
#include "tokenizer/tokenizer_json.h"
#include "tokenizer/utf8.h"

namespace moefy {

namespace {

using json = nlohmann::json;

// GPT-2's pre-tokenizer pattern, used by ByteLevel with use_regex=true.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

constexpr std::string_view kMetaspace = "\xE2\x96\x81";  // U+2581, SentencePiece's space

std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
    if (from.empty()) return std::string(s);
    std::string out;
    out.reserve(s.size());
    size_t pos = 0;
    for (size_t hit; (hit = s.find(from, pos)) != std::string_view::npos; pos = hit + from.size()) {
        out.append(s.substr(pos, hit - pos));
        out.append(to);
    }
    out.append(s.substr(pos));
    return out;
}

// A "pattern" field of Replace / Split: {"String": s} or {"Regex": r}.
struct Pattern {
    std::string literal;
    std::shared_ptr<Regex> regex;

    static Pattern from_json(const json& j, const std::string& where) {
        Pattern p;
        if (j.is_object() && j.contains("String") && j["String"].is_string()) {
            p.literal = j["String"].get<std::string>();
            if (p.literal.empty()) fail("{}: empty String pattern", where);
        } else if (j.is_object() && j.contains("Regex") && j["Regex"].is_string()) {
            p.regex = std::make_shared<Regex>(j["Regex"].get<std::string>(), where);
        } else {
            fail("{}: pattern is neither {{\"String\": ...}} nor {{\"Regex\": ...}}", where);
        }
        return p;
    }

    std::vector<std::pair<size_t, size_t>> find_all(std::string_view s) const {
        if (regex) return regex->find_all(s);
        std::vector<std::pair<size_t, size_t>> out;
        for (size_t pos = 0, hit; (hit = s.find(literal, pos)) != std::string_view::npos;
             pos = hit + literal.size())
            out.emplace_back(hit, hit + literal.size());
        return out;
    }

    std::string replace(std::string_view s, std::string_view content) const {
        if (!regex) return replace_all(s, literal, content);
        std::string out;
        size_t pos = 0;
        for (auto [b, e] : regex->find_all(s)) {
            out.append(s.substr(pos, b - pos));
            out.append(content);
            pos = e;
        }
        out.append(s.substr(pos));
        return out;
    }
};

// ---- normalizer --------------------------------------------------------------

struct NormStep {
    enum class Kind { Prepend, Replace } kind;
    std::string content;  // Prepend: prefix; Replace: replacement
    Pattern pattern;      // Replace only
};

void parse_normalizer(const json& j, const std::string& where, std::vector<NormStep>& steps) {
    if (j.is_null()) return;
    const std::string type = j.value("type", "");
    if (type == "Sequence") {
        const auto& list = j.at("normalizers");
        for (size_t i = 0; i < list.size(); ++i)
            parse_normalizer(list[i], fmt::format("{}.normalizers[{}]", where, i), steps);
    } else if (type == "Prepend") {
        steps.push_back({NormStep::Kind::Prepend, j.at("prepend").get<std::string>(), {}});
    } else if (type == "Replace") {
        steps.push_back({NormStep::Kind::Replace, j.at("content").get<std::string>(),
                         Pattern::from_json(j.at("pattern"), where + ".pattern")});
    } else {
        fail("{}: normalizer type {:?} is not supported", where, type);
    }
}

std::string normalize(const std::vector<NormStep>& steps, std::string_view text) {
    std::string s(text);
    for (const auto& st : steps) {
        if (st.kind == NormStep::Kind::Prepend) {
            if (!s.empty()) s.insert(0, st.content);  // HF prepends to non-empty text only
        } else {
            s = st.pattern.replace(s, st.content);
        }
    }
    return s;
}

// ---- pre-tokenizer -------------------------------------------------------------

enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

SplitBehavior parse_behavior(const std::string& b, const std::string& where) {
    if (b == "Removed") return SplitBehavior::Removed;
    if (b == "Isolated") return SplitBehavior::Isolated;
    if (b == "MergedWithPrevious") return SplitBehavior::MergedWithPrevious;
    if (b == "MergedWithNext") return SplitBehavior::MergedWithNext;
    if (b == "Contiguous") return SplitBehavior::Contiguous;
    fail("{}: split behavior {:?} is not supported", where, b);
}

struct Span {
    size_t b, e;
    bool match;
};

// Cuts s at the matches of p and regroups the parts as HF's
// SplitDelimiterBehavior says. Returns [begin, end) ranges of s.
std::vector<std::pair<size_t, size_t>> split_ranges(std::string_view s, const Pattern& p, SplitBehavior beh,
                                                    bool invert) {
    std::vector<Span> parts;
    size_t pos = 0;
    for (auto [b, e] : p.find_all(s)) {
        if (b > pos) parts.push_back({pos, b, invert});
        parts.push_back({b, e, !invert});
        pos = e;
    }
    if (pos < s.size()) parts.push_back({pos, s.size(), invert});

    std::vector<Span> out;
    bool prev_match = false;
    switch (beh) {
        case SplitBehavior::Isolated: out = parts; break;
        case SplitBehavior::Removed:
            for (const auto& sp : parts)
                if (!sp.match) out.push_back(sp);
            break;
        case SplitBehavior::MergedWithPrevious:
            for (const auto& sp : parts) {
                if (sp.match && !prev_match && !out.empty()) out.back().e = sp.e;
                else out.push_back(sp);
                prev_match = sp.match;
            }
            break;
        case SplitBehavior::MergedWithNext:
            for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
                if (it->match && !prev_match && !out.empty()) out.back().b = it->b;
                else out.push_back(*it);
                prev_match = it->match;
            }
            std::reverse(out.begin(), out.end());
            break;
        case SplitBehavior::Contiguous:
            for (const auto& sp : parts) {
                if (sp.match == prev_match && !out.empty()) out.back().e = sp.e;
                else out.push_back(sp);
                prev_match = sp.match;
            }
            break;
    }
    std::vector<std::pair<size_t, size_t>> r;
    r.reserve(out.size());
    for (const auto& sp : out)
        if (sp.e > sp.b) r.emplace_back(sp.b, sp.e);
    return r;
}

enum class PrependScheme { Always, First, Never };

struct PreStep {
    enum class Kind { Split, ByteLevel, Metaspace };
    Kind kind = Kind::Split;
    Pattern pattern;                               // Split, ByteLevel (use_regex)
    SplitBehavior behavior = SplitBehavior::Isolated;
    bool invert = false;
    bool add_prefix_space = false;                 // ByteLevel
    std::string replacement;                       // Metaspace
    PrependScheme scheme = PrependScheme::Always;  // Metaspace
    bool split = true;                             // Metaspace
};

PrependScheme parse_prepend_scheme(const json& j, const std::string& where) {
    if (j.contains("prepend_scheme") && j["prepend_scheme"].is_string()) {
        const auto s = j["prepend_scheme"].get<std::string>();
        if (s == "always") return PrependScheme::Always;
        if (s == "first") return PrependScheme::First;
        if (s == "never") return PrependScheme::Never;
        fail("{}: prepend_scheme {:?} is not supported", where, s);
    }
    // Files older than prepend_scheme carry add_prefix_space instead.
    return j.value("add_prefix_space", true) ? PrependScheme::Always : PrependScheme::Never;
}

void parse_pre_tokenizer(const json& j, const std::string& where, std::vector<PreStep>& steps) {
    if (j.is_null()) return;
    const std::string type = j.value("type", "");
    if (type == "Sequence") {
        const auto& list = j.at("pretokenizers");
        for (size_t i = 0; i < list.size(); ++i)
            parse_pre_tokenizer(list[i], fmt::format("{}.pretokenizers[{}]", where, i), steps);
    } else if (type == "Split") {
        PreStep st;
        st.kind = PreStep::Kind::Split;
        st.pattern = Pattern::from_json(j.at("pattern"), where + ".pattern");
        st.behavior = parse_behavior(j.at("behavior").get<std::string>(), where + ".behavior");
        st.invert = j.value("invert", false);
        steps.push_back(std::move(st));
    } else if (type == "ByteLevel") {
        PreStep st;
        st.kind = PreStep::Kind::ByteLevel;
        st.add_prefix_space = j.value("add_prefix_space", false);
        if (j.value("use_regex", true)) st.pattern.regex = std::make_shared<Regex>(kGpt2Pattern, where);
        steps.push_back(std::move(st));
    } else if (type == "Metaspace") {
        PreStep st;
        st.kind = PreStep::Kind::Metaspace;
        st.replacement = j.value("replacement", std::string(kMetaspace));
        st.scheme = parse_prepend_scheme(j, where);
        st.split = j.value("split", true);
        if (st.replacement.empty()) fail("{}: empty Metaspace replacement", where);
        st.pattern.literal = st.replacement;
        steps.push_back(std::move(st));
    } else {
        fail("{}: pre_tokenizer type {:?} is not supported", where, type);
    }
}

// Applies one pre-tokenizer step to every piece. at_start: the first piece
// begins at offset 0 of the original text (Metaspace "first" scheme).
void pre_tokenize_step(const PreStep& st, std::vector<std::string>& pieces, bool at_start) {
    std::vector<std::string> out;
    out.reserve(pieces.size() * 2);
    const auto emit_split = [&](const std::string& s, SplitBehavior beh, bool invert) {
        for (auto [b, e] : split_ranges(s, st.pattern, beh, invert)) out.emplace_back(s, b, e - b);
    };
    for (size_t i = 0; i < pieces.size(); ++i) {
        std::string& s = pieces[i];
        switch (st.kind) {
            case PreStep::Kind::Split: emit_split(s, st.behavior, st.invert); break;
            case PreStep::Kind::ByteLevel:
                // Bytes stay raw: the vocabulary was mapped out of the GPT-2
                // alphabet at load, so only the optional split remains.
                if (st.add_prefix_space && !s.empty() && s[0] != ' ') s = " " + s;
                if (st.pattern.regex) emit_split(s, SplitBehavior::Isolated, false);
                else out.push_back(std::move(s));
                break;
            case PreStep::Kind::Metaspace: {
                std::string m = replace_all(s, " ", st.replacement);
                const bool prepend = st.scheme == PrependScheme::Always ||
                                     (st.scheme == PrependScheme::First && at_start && i == 0);
                if (prepend && m.compare(0, st.replacement.size(), st.replacement) != 0) m = st.replacement + m;
                if (st.split) emit_split(m, SplitBehavior::MergedWithNext, false);
                else out.push_back(std::move(m));
                break;
            }
        }
    }
    pieces = std::move(out);
}

// ---- decoder -------------------------------------------------------------------

struct DecStep {
    enum class Kind { ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace };
    Kind kind = Kind::ByteLevel;
    std::string from, to;  // Replace (literal), Metaspace (replacement -> " ")
    Pattern pattern;       // Replace
    int start = 0, stop = 0;
    std::string strip;     // Strip: the char removed (UTF-8)
    PrependScheme scheme = PrependScheme::Always;
};

DecStep dec_step(DecStep::Kind kind) {
    DecStep st;
    st.kind = kind;
    return st;
}

void parse_decoder(const json& j, const std::string& where, std::vector<DecStep>& steps) {
    if (j.is_null()) return;
    const std::string type = j.value("type", "");
    if (type == "Sequence") {
        const auto& list = j.at("decoders");
        for (size_t i = 0; i < list.size(); ++i)
            parse_decoder(list[i], fmt::format("{}.decoders[{}]", where, i), steps);
    } else if (type == "ByteLevel") {
        steps.push_back(dec_step(DecStep::Kind::ByteLevel));
    } else if (type == "Replace") {
        DecStep st = dec_step(DecStep::Kind::Replace);
        st.pattern = Pattern::from_json(j.at("pattern"), where + ".pattern");
        st.to = j.at("content").get<std::string>();
        steps.push_back(std::move(st));
    } else if (type == "ByteFallback") {
        steps.push_back(dec_step(DecStep::Kind::ByteFallback));
    } else if (type == "Fuse") {
        steps.push_back(dec_step(DecStep::Kind::Fuse));
    } else if (type == "Strip") {
        DecStep st = dec_step(DecStep::Kind::Strip);
        st.strip = j.at("content").get<std::string>();
        st.start = j.value("start", 0);
        st.stop = j.value("stop", 0);
        steps.push_back(std::move(st));
    } else if (type == "Metaspace") {
        DecStep st = dec_step(DecStep::Kind::Metaspace);
        st.from = j.value("replacement", std::string(kMetaspace));
        st.scheme = parse_prepend_scheme(j, where);
        steps.push_back(std::move(st));
    } else {
        fail("{}: decoder type {:?} is not supported", where, type);
    }
}

// "<0xAB>" -> 0xAB, else -1.
int byte_token_value(std::string_view t) {
    if (t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>') return -1;
    int v = 0;
    for (char c : t.substr(3, 2)) {
        v <<= 4;
        if (c >= '0' && c <= '9') v |= c - '0';
        else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
        else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
        else return -1;
    }
    return v;
}

// streaming: decoding one token on its own for incremental output, so no
// sequence-level cleanup (leading-space strip) and raw bytes instead of U+FFFD.
void decode_step(const DecStep& st, std::vector<std::string>& toks, bool streaming) {
    switch (st.kind) {
        case DecStep::Kind::ByteLevel: {
            std::string all;
            for (auto& t : toks) all += t;
            toks.assign(1, streaming ? std::move(all) : utf8_lossy(all));
            break;
        }
        case DecStep::Kind::Replace:
            for (auto& t : toks) t = st.pattern.replace(t, st.to);
            break;
        case DecStep::Kind::ByteFallback: {
            std::vector<std::string> out;
            std::string bytes;
            const auto flush = [&] {
                if (bytes.empty()) return;
                if (streaming || find_invalid_utf8(bytes) == std::string::npos) {
                    out.push_back(bytes);
                } else {
                    // HF: an invalid byte run becomes one U+FFFD per byte.
                    for (size_t i = 0; i < bytes.size(); ++i) out.emplace_back("\xEF\xBF\xBD");
                }
                bytes.clear();
            };
            for (auto& t : toks) {
                const int v = byte_token_value(t);
                if (v >= 0) {
                    bytes += static_cast<char>(v);
                } else {
                    flush();
                    out.push_back(std::move(t));
                }
            }
            flush();
            toks = std::move(out);
            break;
        }
        case DecStep::Kind::Fuse: {
            std::string all;
            for (auto& t : toks) all += t;
            toks.assign(1, std::move(all));
            break;
        }
        case DecStep::Kind::Strip:
            if (streaming) break;
            for (auto& t : toks) {
                const size_t n = st.strip.size();
                size_t b = 0, e = t.size();
                for (int k = 0; k < st.start && b + n <= e && t.compare(b, n, st.strip) == 0; ++k) b += n;
                for (int k = 0; k < st.stop && e >= b + n && t.compare(e - n, n, st.strip) == 0; ++k) e -= n;
                t = t.substr(b, e - b);
            }
            break;
        case DecStep::Kind::Metaspace:
            for (size_t i = 0; i < toks.size(); ++i) {
                toks[i] = replace_all(toks[i], st.from, " ");
                if (!streaming && i == 0 && st.scheme != PrependScheme::Never && !toks[i].empty() &&
                    toks[i][0] == ' ')
                    toks[i].erase(0, 1);
            }
            break;
    }
}

// ---- added tokens ----------------------------------------------------------------

struct AddedToken {
    int32_t id;
    std::string content;
    bool special, lstrip, rstrip, single_word, normalized;
};

struct Segment {
    size_t b, e;
    int32_t id;  // added token id, or -1 for plain text to tokenize
};

bool is_ascii_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }
bool is_word_byte(char c) {
    const auto u = static_cast<uint8_t>(c);
    return u >= 0x80 || std::isalnum(u) || c == '_';
}

// Finds added tokens in text, leftmost-longest as HF's AddedVocabulary does
// (Aho-Corasick there; here candidates are bucketed by first byte, longest
// first, which is enough for the few hundred tokens real vocabularies add).
class AddedMatcher {
public:
    void add(const AddedToken* t, std::string content) {
        if (content.empty()) return;
        auto& bucket = by_first_[static_cast<uint8_t>(content[0])];
        bucket.push_back({std::move(content), t});
        std::stable_sort(bucket.begin(), bucket.end(),
                         [](const Entry& a, const Entry& b) { return a.text.size() > b.text.size(); });
        any_ = true;
    }

    // Cuts text into plain-text and added-token segments.
    std::vector<Segment> split(std::string_view text) const {
        std::vector<Segment> segs;
        size_t done = 0;  // end of the last emitted segment
        size_t pos = 0;
        while (any_ && pos < text.size()) {
            const auto& bucket = by_first_[static_cast<uint8_t>(text[pos])];
            const Entry* hit = nullptr;
            for (const auto& en : bucket) {
                if (text.compare(pos, en.text.size(), en.text) != 0) continue;
                if (en.tok->single_word && !word_bounded(text, pos, pos + en.text.size())) continue;
                hit = &en;
                break;
            }
            if (!hit) {
                ++pos;
                continue;
            }
            size_t b = pos, e = pos + hit->text.size();
            if (hit->tok->lstrip)
                while (b > done && is_ascii_space(text[b - 1])) --b;
            if (hit->tok->rstrip)
                while (e < text.size() && is_ascii_space(text[e])) ++e;
            if (b > done) segs.push_back({done, b, -1});
            segs.push_back({b, e, hit->tok->id});
            done = pos = e;
        }
        if (done < text.size()) segs.push_back({done, text.size(), -1});
        return segs;
    }

private:
    static bool word_bounded(std::string_view text, size_t b, size_t e) {
        return (b == 0 || !is_word_byte(text[b - 1])) && (e == text.size() || !is_word_byte(text[e]));
    }
    struct Entry {
        std::string text;
        const AddedToken* tok;
    };
    std::vector<Entry> by_first_[256];
    bool any_ = false;
};

// ---- the tokenizer ------------------------------------------------------------------

class HfTokenizer final : public Tokenizer {
public:
    // text: the file's contents, or nullptr to read `path`.
    HfTokenizer(const std::string& path, const TokenizerSettings& settings, const std::string* text = nullptr);

    std::vector<int32_t> encode(std::string_view text, bool add_special) const override;
    std::string decode(const std::vector<int32_t>& ids) const override;
    std::string decode_token(int32_t id) const override;
    int vocab_size() const override { return static_cast<int>(pieces_.size()); }
    int bos_id() const override { return bos_; }
    int eos_id() const override { return eos_; }

private:
    void encode_text(std::string_view seg, bool at_start, std::vector<int32_t>& ids) const;
    void parse_post_processor(const json& j, const std::string& where);
    int32_t find_token(const std::string& tok) const;
    int32_t resolve(const std::optional<std::string>& tok, std::optional<int32_t> id, int32_t fallback) const;
    void check_id(int32_t id) const {
        if (id < 0 || id >= vocab_size())
            fail("{}: token id {} outside vocabulary [0, {})", path_, id, vocab_size());
    }
    std::string run_decoders(std::vector<std::string> toks, bool streaming) const;

    std::string path_;
    BpeModel bpe_;
    std::vector<AddedToken> added_;
    AddedMatcher raw_matcher_;   // normalized=false tokens, matched in raw text
    AddedMatcher norm_matcher_;  // normalized=true tokens, matched after normalization
    std::vector<NormStep> norm_;
    std::vector<PreStep> pre_;
    std::vector<DecStep> dec_;
    std::vector<int32_t> prefix_, suffix_;  // post-processor template around the text
    std::vector<std::string> pieces_;       // id -> token string (model or added)
    std::vector<uint8_t> special_;          // id -> skipped by decode
    int32_t bos_ = -1, eos_ = -1;
};

HfTokenizer::HfTokenizer(const std::string& path, const TokenizerSettings& settings, const std::string* text)
    : path_(path) {
    TokenizerJson tj = text ? parse_tokenizer_json(*text, path) : read_tokenizer_json(path);
    const json& j = tj.rest;
    try {
        if (!j.is_object() || !j.contains("model")) fail("{}: no \"model\" object", path);
        parse_normalizer(j.value("normalizer", json()), path + ": normalizer", norm_);
        parse_pre_tokenizer(j.value("pre_tokenizer", json()), path + ": pre_tokenizer", pre_);
        parse_decoder(j.value("decoder", json()), path + ": decoder", dec_);
        const bool byte_level = std::any_of(pre_.begin(), pre_.end(),
                                            [](const PreStep& s) { return s.kind == PreStep::Kind::ByteLevel; });
        if (!j["model"].is_object() || !tj.has_vocab || !tj.has_merges)
            fail("{}: model has no vocab object or no merges array", path);
        load_bpe(bpe_, j["model"], tj.vocab, tj.merges, byte_level, path);

        pieces_ = bpe_.id_to_token;
        const auto& added = j.value("added_tokens", json::array());
        added_.reserve(added.size());  // stable addresses for the matchers
        for (const auto& a : added) {
            AddedToken t{int32_t(json_int(a.at("id"), 0, 1 << 30, path + ": added_tokens id")), a.at("content").get<std::string>(), a.value("special", false),
                         a.value("lstrip", false),  a.value("rstrip", false),
                         a.value("single_word", false), a.value("normalized", false)};
            if (t.id < 0 || size_t(t.id) > pieces_.size() + added.size() + 1024)
                fail("{}: added_tokens id {} is beyond the vocabulary ({} tokens + {} added)", path, t.id, pieces_.size(), added.size());
            check_utf8(t.content, path + ": added_tokens content");
            added_.push_back(std::move(t));
        }
        for (const auto& t : added_) {
            if (pieces_.size() <= static_cast<size_t>(t.id)) pieces_.resize(t.id + 1);
            pieces_[t.id] = t.content;
            // Special tokens are never normalized in HF, whatever the flag says.
            if (t.normalized && !t.special) norm_matcher_.add(&t, normalize(norm_, t.content));
            else raw_matcher_.add(&t, t.content);
        }
        special_.assign(pieces_.size(), 0);
        for (const auto& t : added_) special_[t.id] = t.special;

        parse_post_processor(j.value("post_processor", json()), path + ": post_processor");
    } catch (const json::exception& e) {
        fail("{}: unexpected structure: {}", path, e.what());
    }

    // Special ids: tokenizer_config.json strings, then config.json ids, then
    // what the template itself prepends / appends.
    bos_ = resolve(settings.bos_token, settings.bos_id, prefix_.empty() ? -1 : prefix_.front());
    eos_ = resolve(settings.eos_token, settings.eos_id, suffix_.empty() ? -1 : suffix_.back());
    if (settings.add_bos) {
        std::erase(prefix_, bos_);
        if (*settings.add_bos && bos_ >= 0) prefix_.insert(prefix_.begin(), bos_);
    }
    if (settings.add_eos) {
        std::erase(suffix_, eos_);
        if (*settings.add_eos && eos_ >= 0) suffix_.push_back(eos_);
    }
}

void HfTokenizer::parse_post_processor(const json& j, const std::string& where) {
    if (j.is_null()) return;
    const std::string type = j.value("type", "");
    if (type == "Sequence") {
        const auto& list = j.at("processors");
        for (size_t i = 0; i < list.size(); ++i)
            parse_post_processor(list[i], fmt::format("{}.processors[{}]", where, i));
    } else if (type == "ByteLevel") {
        // Only adjusts offsets; ids are untouched.
    } else if (type == "TemplateProcessing") {
        // single: [SpecialToken..., Sequence A, SpecialToken...]
        prefix_.clear();
        suffix_.clear();
        bool seen_seq = false;
        const auto& specials = j.at("special_tokens");
        for (const auto& item : j.at("single")) {
            if (item.contains("Sequence")) {
                seen_seq = true;
                continue;
            }
            const auto name = item.at("SpecialToken").at("id").get<std::string>();
            if (!specials.contains(name)) fail("{}: special token {:?} not in special_tokens", where, name);
            for (const auto& id : specials[name].at("ids")) {
                const auto v = int32_t(json_int(id, 0, 1 << 30, where + ": ids"));
                check_id(v);
                (seen_seq ? suffix_ : prefix_).push_back(v);
            }
        }
    } else {
        fail("{}: post_processor type {:?} is not supported", where, type);
    }
}

int32_t HfTokenizer::find_token(const std::string& tok) const {
    for (const auto& t : added_)
        if (t.content == tok) return t.id;
    if (auto it = bpe_.vocab.find(tok); it != bpe_.vocab.end()) return it->second;
    return -1;
}

int32_t HfTokenizer::resolve(const std::optional<std::string>& tok, std::optional<int32_t> id,
                             int32_t fallback) const {
    if (tok) {
        if (const int32_t t = find_token(*tok); t >= 0) return t;
    }
    if (id && *id >= 0 && *id < vocab_size()) return *id;
    return fallback;
}

// One plain-text segment (between added tokens): normalize, then the
// normalized-added-token split, then pre-tokenize and BPE each piece.
void HfTokenizer::encode_text(std::string_view seg, bool at_start, std::vector<int32_t>& ids) const {
    const std::string norm = normalize(norm_, seg);
    for (const auto& s : norm_matcher_.split(norm)) {
        if (s.id >= 0) {
            ids.push_back(s.id);
            continue;
        }
        std::vector<std::string> pieces{norm.substr(s.b, s.e - s.b)};
        for (const auto& st : pre_) pre_tokenize_step(st, pieces, at_start && s.b == 0);
        for (const auto& p : pieces) bpe_.encode(p, ids);
    }
}

std::vector<int32_t> HfTokenizer::encode(std::string_view text, bool add_special) const {
    check_utf8(text, path_);
    std::vector<int32_t> ids;
    ids.reserve(text.size() / 3 + 4);
    if (add_special) ids = prefix_;
    for (const auto& s : raw_matcher_.split(text)) {
        if (s.id >= 0) ids.push_back(s.id);
        else encode_text(text.substr(s.b, s.e - s.b), s.b == 0, ids);
    }
    if (add_special) ids.insert(ids.end(), suffix_.begin(), suffix_.end());
    return ids;
}

std::string HfTokenizer::run_decoders(std::vector<std::string> toks, bool streaming) const {
    if (dec_.empty()) {
        // HF joins undecoded tokens with spaces.
        std::string out;
        for (size_t i = 0; i < toks.size(); ++i) out += (i ? " " : "") + toks[i];
        return out;
    }
    for (const auto& st : dec_) decode_step(st, toks, streaming);
    std::string out;
    for (const auto& t : toks) out += t;
    return out;
}

std::string HfTokenizer::decode(const std::vector<int32_t>& ids) const {
    std::vector<std::string> toks;
    toks.reserve(ids.size());
    for (int32_t id : ids) {
        check_id(id);
        if (!special_[id]) toks.push_back(pieces_[id]);
    }
    if (toks.empty()) return {};
    return run_decoders(std::move(toks), false);
}

std::string HfTokenizer::decode_token(int32_t id) const {
    check_id(id);
    if (special_[id]) return {};
    return run_decoders({pieces_[id]}, true);
}

}  // namespace

std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::string& path, const TokenizerSettings& settings) {
    return std::make_unique<HfTokenizer>(path, settings);
}

std::unique_ptr<Tokenizer> load_hf_tokenizer_text(const std::string& text, const std::string& name,
                                                  const TokenizerSettings& settings) {
    return std::make_unique<HfTokenizer>(name, settings, &text);
}

}  // namespace moefy
