// Tokenizers against golden ids from the reference implementations
// (SentencePiece 0.1.97, HF tokenizers / transformers.js), the demo model's
// reference.json, a brute-force BPE on a synthetic vocabulary, and UTF-8 checks.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <random>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "tokenizer/bpe.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_json.h"
#include "test_util.h"
#include "tokenizer/utf8.h"

namespace fs = std::filesystem;
using moefy::Tokenizer;
using json = nlohmann::json;

namespace {

const fs::path kShared = MOEFY_SHARED_DIR;
const fs::path kFixtures = kShared / "fixtures";
const fs::path kTokDir = kFixtures / "tokenizers";

json read_json(const fs::path& p) {
    std::ifstream f(p);
    return json::parse(f);
}

// "x/llama3-tokenizer.json" -> "x/llama3-tokenizer_config.json" when present.
std::string config_beside(const fs::path& tok) {
    if (tok.extension() != ".json") return "";
    std::string name = tok.filename().string();
    name.replace(name.size() - 5, 5, "_config.json");
    const fs::path cfg = tok.parent_path() / name;
    return fs::exists(cfg) ? cfg.string() : "";
}

// Loaded once per process: the llama3 json is the slow one (~9 MB).
const Tokenizer& cached(const fs::path& path) {
    static std::map<std::string, std::unique_ptr<Tokenizer>> cache;
    auto& t = cache[path.string()];
    if (!t) t = Tokenizer::from_file(path.string(), config_beside(path));
    return *t;
}

std::string show(const std::vector<int32_t>& v) {
    std::string s = "[";
    for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
    return s + "]";
}

#define SKIP_WITHOUT(path)                                                  \
    do {                                                                    \
        if (!fs::exists(path)) GTEST_SKIP() << "fixture absent: " << (path); \
    } while (0)

}  // namespace

// Every case of golden.json: ids exactly and decoded text exactly.
TEST(SharedTokenizerGolden, AllCasesMatchOracles) {
    const fs::path golden = kTokDir / "golden.json";
    SKIP_WITHOUT(golden);
    const json g = read_json(golden);
    int checked = 0;
    for (const auto& c : g.at("cases")) {
        const fs::path path = kFixtures / c.at("tokenizer").get<std::string>();
        const std::string label = c.at("tokenizer").get<std::string>() + " / " + c.at("name").get<std::string>();
        const auto text = c.at("text").get<std::string>();
        const auto want = c.at("ids").get<std::vector<int32_t>>();
        const Tokenizer& tok = cached(path);
        const auto got = tok.encode(text, c.at("add_bos").get<bool>());
        EXPECT_EQ(got, want) << label << "\n got:  " << show(got) << "\n want: " << show(want);
        EXPECT_EQ(tok.decode(want), c.at("decoded").get<std::string>()) << label;
        ++checked;
    }
    EXPECT_EQ(checked, 134);
}

TEST(SharedTokenizerGolden, SpecialIdsAndVocab) {
    SKIP_WITHOUT(kTokDir / "llama3-tokenizer.json");
    const Tokenizer& l3 = cached(kTokDir / "llama3-tokenizer.json");
    EXPECT_EQ(l3.vocab_size(), 128256);
    EXPECT_EQ(l3.bos_id(), 128000);  // <|begin_of_text|> from the config, though encode adds none
    EXPECT_EQ(l3.eos_id(), 128001);  // <|end_of_text|>
    const Tokenizer& mi = cached(kTokDir / "mistral-tokenizer.json");
    EXPECT_EQ(mi.vocab_size(), 32000);
    EXPECT_EQ(mi.bos_id(), 1);
    EXPECT_EQ(mi.eos_id(), 2);
    const Tokenizer& l2 = cached(kTokDir / "llama2-tokenizer.model");
    EXPECT_EQ(l2.vocab_size(), 32000);
    EXPECT_EQ(l2.bos_id(), 1);
    EXPECT_EQ(l2.eos_id(), 2);
    EXPECT_THROW(l3.decode({128256}), moefy::Error);
    EXPECT_THROW(l2.decode({-1}), moefy::Error);
    EXPECT_EQ(l3.decode_token(128009), "");  // <|eot_id|> is special
}

// Concatenated decode_token output is the text itself for byte-level BPE, and
// the text with SentencePiece's dummy-prefix space for the others (decode
// strips it; streaming cannot know which token comes first). Byte tokens
// yield raw bytes, so split multi-byte chars reassemble.
TEST(SharedTokenizerGolden, DecodeTokenStreamsTheText) {
    const fs::path golden = kTokDir / "golden.json";
    SKIP_WITHOUT(golden);
    const json g = read_json(golden);
    int checked = 0;
    for (const auto& c : g.at("cases")) {
        const auto rel = c.at("tokenizer").get<std::string>();
        const auto name = c.at("name").get<std::string>();
        const auto text = c.at("text").get<std::string>();
        if (c.contains("note") || text.empty() || rel.find("stories260K") != std::string::npos) continue;
        const Tokenizer& tok = cached(kFixtures / rel);
        std::string streamed;
        for (int32_t id : c.at("ids").get<std::vector<int32_t>>()) streamed += tok.decode_token(id);
        const bool byte_level = rel.find("llama3") != std::string::npos;
        EXPECT_EQ(streamed, byte_level ? text : " " + text) << rel << " / " << name;
        ++checked;
    }
    EXPECT_GT(checked, 60);
}

// Its load time is a benchmark figure (bench/tokenizer.cpp), not a test.
TEST(SharedTokenizerGolden, Llama3Loads) {
    const fs::path p = kTokDir / "llama3-tokenizer.json";
    SKIP_WITHOUT(p);
    auto tok = Tokenizer::from_file(p.string(), config_beside(p));
    EXPECT_EQ(tok->encode("Hello world", false), (std::vector<int32_t>{9906, 1917}));
}

// The demo model's directory: tokenizer.model + tokenizer_config.json +
// config.json; reference.json holds BOS + the first 63 tokens of text_prefix.
TEST(TokenizerDemo, FromDirMatchesReferenceTokens) {
    const fs::path dir = demo_model_dir();
    REQUIRE_REPO_FILE(dir / "reference.json");
    const json ref = read_json(dir / "reference.json");
    auto tok = Tokenizer::from_dir(dir.string());
    EXPECT_EQ(tok->vocab_size(), 4096);
    EXPECT_EQ(tok->bos_id(), 1);
    EXPECT_EQ(tok->eos_id(), 2);
    const auto text = ref.at("text_prefix").get<std::string>();
    const auto want = ref.at("token_ids").get<std::vector<int32_t>>();
    const auto got = tok->encode(text, true);
    EXPECT_EQ(got, want) << "got " << show(got);
    EXPECT_EQ(tok->decode(want), text);
    auto no_bos = tok->encode(text, false);
    EXPECT_EQ(no_bos, std::vector<int32_t>(want.begin() + 1, want.end()));
}

// from_dir prefers tokenizer.json and lets tokenizer_config.json's
// add_bos_token / add_eos_token override the post-processor template.
TEST(SharedTokenizerDemo, FromDirJsonHonoursConfig) {
    const fs::path src = kTokDir / "mistral-tokenizer.json";
    SKIP_WITHOUT(src);
    const fs::path dir = fs::temp_directory_path() / ("moefy_tok_" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
    fs::create_symlink(src, dir / "tokenizer.json");
    std::ofstream(dir / "tokenizer.model") << "not a model: tokenizer.json must win";
    const std::vector<int32_t> hello = {22557, 1526};  // "Hello world"

    auto tok = Tokenizer::from_dir(dir.string());  // no configs: template prepends <s>
    EXPECT_EQ(tok->encode("Hello world", true), (std::vector<int32_t>{1, 22557, 1526}));
    EXPECT_EQ(tok->bos_id(), 1);

    std::ofstream(dir / "tokenizer_config.json")
        << R"({"add_bos_token": false, "add_eos_token": true, "bos_token": "<s>", "eos_token": {"content": "</s>"}})";
    tok = Tokenizer::from_dir(dir.string());
    EXPECT_EQ(tok->encode("Hello world", true), (std::vector<int32_t>{22557, 1526, 2}));
    EXPECT_EQ(tok->encode("Hello world", false), hello);
    EXPECT_EQ(tok->eos_id(), 2);

    // config.json ids are used when tokenizer_config.json names no tokens.
    std::ofstream(dir / "tokenizer_config.json") << R"({"add_bos_token": true})";
    std::ofstream(dir / "config.json") << R"({"bos_token_id": 1, "eos_token_id": [2, 0]})";
    tok = Tokenizer::from_dir(dir.string());
    EXPECT_EQ(tok->encode("Hello world", true), (std::vector<int32_t>{1, 22557, 1526}));
    EXPECT_EQ(tok->eos_id(), 2);

    std::ofstream(dir / "config.json") << "{not json";
    EXPECT_THROW(Tokenizer::from_dir(dir.string()), moefy::Error);
    fs::remove_all(dir);
    EXPECT_THROW(Tokenizer::from_dir(dir.string()), moefy::Error);
}

// ---- UTF-8 ------------------------------------------------------------------

TEST(TokenizerUtf8, ValidatorAndLossy) {
    using moefy::find_invalid_utf8;
    const size_t ok = std::string_view::npos;
    EXPECT_EQ(find_invalid_utf8(""), ok);
    EXPECT_EQ(find_invalid_utf8("a\xC3\xA9\xE2\x96\x81\xF0\xA0\x9C\x8E"), ok);  // é ▁ 𠜎
    EXPECT_EQ(find_invalid_utf8("ab\xFF"), 2u);
    EXPECT_EQ(find_invalid_utf8("\xC0\xAF"), 0u);          // overlong '/'
    EXPECT_EQ(find_invalid_utf8("x\xED\xA0\x80"), 1u);     // surrogate U+D800
    EXPECT_EQ(find_invalid_utf8("\xF4\x90\x80\x80"), 0u);  // > U+10FFFF
    EXPECT_EQ(find_invalid_utf8("\xE2\x96"), 0u);          // truncated
    EXPECT_EQ(find_invalid_utf8("\x80"), 0u);              // stray continuation
    // One U+FFFD per maximal invalid subsequence (Rust from_utf8_lossy).
    EXPECT_EQ(moefy::utf8_lossy("a\xE2\x96z"), "a\xEF\xBF\xBDz");
    EXPECT_EQ(moefy::utf8_lossy("\xFF\xFE"), "\xEF\xBF\xBD\xEF\xBF\xBD");
    // GPT-2 byte alphabet: space is Ġ (U+0120), printable ASCII is itself.
    EXPECT_EQ(moefy::byte_to_char(' '), 0x120u);
    EXPECT_EQ(moefy::byte_to_char('A'), static_cast<uint32_t>('A'));
    for (int b = 0; b < 256; ++b) EXPECT_EQ(moefy::char_to_byte(moefy::byte_to_char(b)), b);
}

TEST(SharedTokenizerUtf8, InvalidInputThrowsForEveryKind) {
    SKIP_WITHOUT(kTokDir / "llama3-tokenizer.json");
    const char* bad[] = {"abc\xFF", "\xC3", "ok \xED\xA0\x80 surrogate", "\xC0\x80"};
    for (const char* f : {"llama2-tokenizer.model", "llama3-tokenizer.json", "mistral-tokenizer.json"}) {
        const Tokenizer& tok = cached(kTokDir / f);
        for (const char* s : bad) {
            try {
                tok.encode(s, true);
                ADD_FAILURE() << f << ": no error for invalid UTF-8";
            } catch (const moefy::Error& e) {
                EXPECT_NE(std::string(e.what()).find("invalid UTF-8"), std::string::npos) << e.what();
            }
        }
    }
}

// ---- BPE merge order against brute force ------------------------------------------

namespace {

// Reference BPE: rescan for the lowest-rank adjacent pair, merge its leftmost
// occurrence, repeat. O(n^2) per word but obviously right.
std::vector<std::string> brute_bpe(const std::string& word, const std::map<std::pair<std::string, std::string>, int>& rank) {
    std::vector<std::string> s;
    for (char c : word) s.emplace_back(1, c);
    for (;;) {
        int best = INT32_MAX;
        size_t at = 0;
        for (size_t i = 0; i + 1 < s.size(); ++i) {
            auto it = rank.find({s[i], s[i + 1]});
            if (it != rank.end() && it->second < best) best = it->second, at = i;
        }
        if (best == INT32_MAX) return s;
        s[at] += s[at + 1];
        s.erase(s.begin() + at + 1);
    }
}

}  // namespace

TEST(TokenizerBpe, HeapMergeEqualsBruteForce) {
    // Random merges over {a,b,c}: a vocabulary with many competing,
    // overlapping pairs exercises stale heap entries and tie-breaking.
    std::mt19937 rng(1234);
    std::vector<std::string> vocab = {"a", "b", "c"};
    std::map<std::string, int> ids = {{"a", 0}, {"b", 1}, {"c", 2}};
    std::map<std::pair<std::string, std::string>, int> rank;
    json merges = json::array();
    while (merges.size() < 60) {
        const auto& l = vocab[rng() % vocab.size()];
        const auto& r = vocab[rng() % vocab.size()];
        if (l.size() + r.size() > 6 || rank.count({l, r}) || ids.count(l + r)) continue;
        rank[{l, r}] = static_cast<int>(merges.size());
        merges.push_back(l + " " + r);
        ids[l + r] = static_cast<int>(vocab.size());
        vocab.push_back(l + r);
    }
    json j_vocab = json::object();
    for (const auto& [t, id] : ids) j_vocab[t] = id;
    const json tj = {{"version", "1.0"},
                     {"added_tokens", json::array()},
                     {"normalizer", nullptr},
                     {"pre_tokenizer", {{"type", "Split"},
                                        {"pattern", {{"String", " "}}},
                                        {"behavior", "Removed"},
                                        {"invert", false}}},
                     {"post_processor", nullptr},
                     {"decoder", {{"type", "Fuse"}}},
                     {"model", {{"type", "BPE"}, {"vocab", j_vocab}, {"merges", merges}}}};
    const fs::path p = fs::temp_directory_path() / ("moefy_bpe_" + std::to_string(::getpid()) + ".json");
    std::ofstream(p) << tj.dump();
    auto tok = Tokenizer::from_file(p.string());
    fs::remove(p);
    EXPECT_EQ(tok->vocab_size(), static_cast<int>(vocab.size()));
    EXPECT_EQ(tok->bos_id(), -1);
    for (int trial = 0; trial < 300; ++trial) {
        std::string word;
        const int n = 1 + static_cast<int>(rng() % 40);
        for (int i = 0; i < n; ++i) word += static_cast<char>('a' + rng() % 3);
        std::vector<int32_t> want;
        for (const auto& t : brute_bpe(word, rank)) want.push_back(ids.at(t));
        const auto got = tok->encode(word + " " + word, false);
        std::vector<int32_t> want2 = want;
        want2.insert(want2.end(), want.begin(), want.end());  // second copy: the cached path
        ASSERT_EQ(got, want2) << "word " << word;
        EXPECT_EQ(tok->decode(got), word + word);
    }
}

// Mistral has no pre-tokenizer, so each text segment is one BPE word; the
// model cuts it before each word-initial "▁" (valid because no Mistral token
// has "▁" after another char). Cut and uncut merging must agree exactly.
TEST(SharedTokenizerBpe, MetaspaceSplitEqualsWholeWordMerge) {
    const fs::path p = kTokDir / "mistral-tokenizer.json";
    const fs::path corpus = kShared / "corpus" / "eval.jsonl";
    SKIP_WITHOUT(p);
    SKIP_WITHOUT(corpus);
    moefy::TokenizerJson tj = moefy::read_tokenizer_json(p.string());
    moefy::BpeModel bpe;
    moefy::load_bpe(bpe, tj.rest["model"], tj.vocab, tj.merges, false, p.string());
    ASSERT_TRUE(bpe.split_at_metaspace);
    std::ifstream f(corpus);
    std::string line;
    int docs = 0;
    size_t tokens = 0;
    while (docs < 12 && std::getline(f, line)) {
        std::string word = "\xE2\x96\x81";  // the normalizer: Prepend("▁") + Replace(" ", "▁")
        for (char c : json::parse(line).at("text").get<std::string>()) {
            if (c == ' ') word += "\xE2\x96\x81";
            else word += c;
        }
        std::vector<int32_t> cut, whole;
        bpe.encode(word, cut);
        bpe.encode_word(word, whole);
        ASSERT_EQ(cut, whole) << "document " << docs;
        tokens += whole.size();
        ++docs;
    }
    EXPECT_EQ(docs, 12);
    EXPECT_GT(tokens, 1000u);
}

TEST(TokenizerBpe, UnsupportedComponentsFailNamingTheField) {
    const fs::path p = fs::temp_directory_path() / ("moefy_bad_" + std::to_string(::getpid()) + ".json");
    std::ofstream(p) << R"({"normalizer": {"type": "NFKC"}, "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})";
    try {
        Tokenizer::from_file(p.string());
        ADD_FAILURE() << "NFKC accepted";
    } catch (const moefy::Error& e) {
        EXPECT_NE(std::string(e.what()).find("normalizer"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("NFKC"), std::string::npos) << e.what();
    }
    std::ofstream(p) << R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a a"]}})";
    EXPECT_THROW(Tokenizer::from_file(p.string()), moefy::Error);  // merge result "aa" missing
    fs::remove(p);
    EXPECT_THROW(Tokenizer::from_file("/nonexistent/tokenizer.json"), moefy::Error);
    EXPECT_THROW(Tokenizer::from_file("/nonexistent/tokenizer.model"), moefy::Error);
}
