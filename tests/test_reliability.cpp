// Unit tests of the hardening that the bad-input matrix (test_bad_inputs.cpp)
// reaches only through the CLI: JSON depth and integer ranges, 64-bit size
// products, the output path policy and stale siblings, the SIGBUS handler,
// --max-tokens bounding the tokenizer's work, warnings.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <fstream>

#include "common/error.h"
#include "common/warn.h"
#include "data/documents.h"
#include "io/json.h"
#include "io/mapped_file.h"
#include "io/output_dir.h"
#include "io/safetensors.h"
#include "test_util.h"
#include "model/config.h"
#include "tokenizer/sp_tokenizer.h"
#include "tokenizer/tokenizer.h"

namespace fs = std::filesystem;
using namespace moefy;

TEST(JsonLimits, DepthCapCountsOnlyStructureOutsideStrings) {
    EXPECT_NO_THROW(check_json_depth(std::string(64, '[') + std::string(64, ']'), "x"));
    EXPECT_THROW(check_json_depth(std::string(65, '['), "x"), Error);
    // Brackets inside strings (with escaped quotes) do not count.
    const std::string in_string = "[\"" + std::string(1000, '[') + "\\\"" + std::string(1000, '{') + "\"]";
    EXPECT_NO_THROW(check_json_depth(in_string, "x"));
    try {
        parse_json(std::string(100000, '{'), "cfg.json");
        FAIL();
    } catch (const Error& e) {
        EXPECT_EQ(std::string(e.what()), "cfg.json: JSON nested deeper than 64 levels (at byte 64)");
    }
}

TEST(JsonLimits, IntegersAreReadWholeAndRangeChecked) {
    const auto j = parse_json(R"([4294967488, -1, 18446744073709551615, 7, 2.5])", "x");
    EXPECT_FALSE(json_int_in(j[0], 0, INT32_MAX));  // 2^32 + 192 is not 192
    EXPECT_EQ(json_int(j[0], 0, INT64_MAX, "v"), 4294967488LL);
    EXPECT_FALSE(json_int_in(j[1], 0, 10));
    EXPECT_FALSE(json_int_in(j[2], 0, INT64_MAX));  // above int64
    EXPECT_EQ(json_int(j[3], 7, 7, "v"), 7);
    EXPECT_FALSE(json_int_in(j[4], 0, 10));
    try {
        json_int(j[0], 1, 1 << 30, "config.json: field 'vocab_size'");
        FAIL();
    } catch (const Error& e) {
        EXPECT_EQ(std::string(e.what()), "config.json: field 'vocab_size' must be an integer in [1, 1073741824], got 4294967488");
    }
}

// Optional fields of foreign JSON: a field of the wrong type is an error naming
// the file and the field, never an escaped nlohmann type_error (the fuzz_plan
// finding's class: j.value("k", default) throws type_error 302 on a mismatch).
TEST(JsonLimits, OptionalFieldsOfTheWrongTypeAreNamed) {
    const nlohmann::json j = nlohmann::json::parse(R"({"s": "x", "b": true, "i": 7, "f": 0.5, "n": null, "big": 18446744073709551615})");
    EXPECT_EQ(json_get_or(j, "s", "d", "f.json"), "x");
    EXPECT_EQ(json_get_or(j, "missing", "d", "f.json"), "d");
    EXPECT_EQ(json_get_or(j, "n", "d", "f.json"), "d");  // null is "not given"
    EXPECT_TRUE(json_get_or(j, "b", false, "f.json"));
    EXPECT_EQ(json_get_or(j, "i", int64_t(0), "f.json"), 7);
    EXPECT_EQ(json_get_or(j, "i", 0.0, "f.json"), 7.0);
    EXPECT_EQ(json_get_or(j, "f", 0.0, "f.json"), 0.5);
    EXPECT_EQ(json_get_or(nlohmann::json::array(), "s", "d", "f.json"), "d");  // not an object: nothing given
    auto err = [&](auto f) {
        try {
            f();
        } catch (const Error& e) {
            return std::string(e.what());
        }
        return std::string("(no error)");
    };
    EXPECT_EQ(err([&] { json_get_or(j, "i", "d", "f.json"); }), "f.json: field 'i' must be a string, got number");
    EXPECT_EQ(err([&] { json_get_or(j, "s", false, "f.json"); }), "f.json: field 's' must be true or false, got string");
    EXPECT_EQ(err([&] { json_get_or(j, "f", int64_t(0), "f.json"); }),
              "f.json: field 'f' must be an integer in [-9223372036854775808, 9223372036854775807], got 0.5");
    EXPECT_EQ(err([&] { json_get_or(j, "big", int64_t(0), "f.json"); }),
              "f.json: field 'big' must be an integer in [-9223372036854775808, 9223372036854775807], got 18446744073709551615");
    EXPECT_EQ(err([&] { json_get_or(j, "s", 0.0, "f.json"); }), "f.json: field 's' must be a number, got string");
}

TEST(SizeProducts, OverflowIsRefusedNotWrapped) {
    EXPECT_EQ(checked_nbytes({3, 5}, DType::BF16, "t"), 30u);
    EXPECT_EQ(checked_nbytes({}, DType::F32, "t"), 4u);
    EXPECT_EQ(checked_nbytes({0, int64_t(1) << 62}, DType::F32, "t"), 0u);
    // (2^62 + 1) * 4 * 4 = 16 mod 2^64
    EXPECT_THROW(checked_nbytes({(int64_t(1) << 62) + 1, 4}, DType::F32, "t"), Error);
    EXPECT_THROW(checked_nbytes({int64_t(1) << 32, int64_t(1) << 32}, DType::F16, "t"), Error);
    EXPECT_THROW(checked_nbytes({-1}, DType::F32, "t"), Error);
    TensorSpec s{"w", DType::F32, {(int64_t(1) << 62) + 1, 4}};
    EXPECT_THROW(s.nbytes(), Error);
}

TEST(OutputPolicy, RefusesLinksDevicesFifosAndKindMismatches) {
    TempDir t;
    const std::string f = t.path + "/f", d = t.path + "/d", l = t.path + "/l", p = t.path + "/p";
    std::ofstream(f) << "x";
    fs::create_directory(d);
    fs::create_symlink(f, l);
    ASSERT_EQ(mkfifo(p.c_str(), 0644), 0);
    EXPECT_NO_THROW(check_output_path(t.path + "/new", OutputKind::File, false));
    EXPECT_NO_THROW(check_output_path(f, OutputKind::File, false));  // files are replaced atomically
    EXPECT_THROW(check_output_path(d, OutputKind::File, true), Error);
    EXPECT_THROW(check_output_path(f, OutputKind::Directory, true), Error);
    EXPECT_THROW(check_output_path(d, OutputKind::Directory, false), Error);
    EXPECT_NO_THROW(check_output_path(d, OutputKind::Directory, true));
    for (const std::string& bad : {l, p, std::string("/dev/null")}) {
        EXPECT_THROW(check_output_path(bad, OutputKind::File, true), Error) << bad;
        EXPECT_THROW(check_output_path(bad, OutputKind::Directory, true), Error) << bad;
    }
    EXPECT_THROW(write_file_atomic(l, "y"), Error);
    EXPECT_EQ(read_file(f), "x");  // the link's target is untouched
    EXPECT_THROW(write_file_atomic(d, "y"), Error);
    EXPECT_TRUE(fs::is_directory(d));
}

TEST(OutputPolicy, StaleSiblingsOfDeadRunsAreRemovedLiveOnesKept) {
    TempDir t;
    const std::string out = t.path + "/model";
    // A pid that cannot be running (above the kernel's pid_max) and our parent's (alive).
    const std::string dead = out + ".tmp-999999999", dead_old = out + ".old-999999999";
    const std::string alive = out + ".tmp-" + std::to_string(getppid()), unrelated = out + "x.tmp-999999999";
    for (const auto& s : {dead, dead_old, alive, unrelated}) fs::create_directories(s + "/inner");
    {
        OutputDir dir(out, false);
        std::ofstream(dir.file("a")) << "1";
        dir.commit();
    }
    EXPECT_FALSE(fs::exists(dead));
    EXPECT_FALSE(fs::exists(dead_old));
    EXPECT_TRUE(fs::exists(alive));
    EXPECT_TRUE(fs::exists(unrelated));
    EXPECT_EQ(read_file(out + "/a"), "1");
    // --force replaces through an exchange: the old content is never absent, and gone after.
    {
        OutputDir dir(out, true);
        std::ofstream(dir.file("b")) << "2";
        dir.commit();
    }
    EXPECT_FALSE(fs::exists(out + "/a"));
    EXPECT_EQ(read_file(out + "/b"), "2");
    for (const auto& e : fs::directory_iterator(t.path)) {
        const std::string n = e.path().filename().string();
        if (n.rfind("model.tmp-", 0) == 0) {
            EXPECT_EQ(e.path().string(), alive);
        }
    }
}

TEST(MappedFileFault, ShrinkingFileIsAnErrorNamingIt) {
    TempDir t;
    const std::string path = t.path + "/shrinks.safetensors";
    std::ofstream(path) << std::string(1 << 16, 'x');
    EXPECT_EXIT(
        {
            install_mapped_file_fault_handler();
            MappedFile m(path);
            if (truncate(path.c_str(), 0) != 0) _exit(3);
            volatile uint8_t b = m.data()[m.size() - 1];  // a page past the new end: SIGBUS
            (void)b;
            _exit(0);
        },
        ::testing::ExitedWithCode(1), "moefy: error: .*/shrinks.safetensors: the file shrank while moefy was reading it");
}

TEST(MappedFileFault, NotARegularFileIsRefused) {
    TempDir t;
    EXPECT_THROW(MappedFile m(t.path), Error);
}

namespace {
// Counts the bytes handed to encode; one token per 4 bytes.
struct CountingTokenizer : Tokenizer {
    mutable size_t bytes = 0;
    std::vector<int32_t> encode(std::string_view text, bool) const override {
        bytes += text.size();
        std::vector<int32_t> ids;
        for (size_t i = 0; i + 4 <= text.size(); i += 4) ids.push_back(int32_t(uint8_t(text[i])));
        return ids;
    }
    std::string decode(const std::vector<int32_t>&) const override { return ""; }
    std::string decode_token(int32_t) const override { return ""; }
    int vocab_size() const override { return 256; }
    int bos_id() const override { return 1; }
    int eos_id() const override { return 2; }
};
}  // namespace

TEST(MaxTokens, BoundsTheTokenizedTextNotJustTheWindows) {
    std::string doc;
    for (int i = 0; doc.size() < (size_t(10) << 20); ++i) doc += "word" + std::to_string(i % 977) + " ";
    CountingTokenizer tok;
    const auto w = make_windows({doc}, tok, {512, 2000, true});
    EXPECT_EQ(predicted_tokens(w), 2000u);
    EXPECT_LT(tok.bytes, size_t(1) << 17) << "tokenized " << tok.bytes << " bytes of a 10 MB document for 2,000 tokens";
    // The same windows as tokenizing everything and cutting.
    CountingTokenizer full;
    const auto all = make_windows({doc.substr(0, 1 << 20)}, full, {512, 0, true});
    ASSERT_GE(all.size(), w.size());
    for (size_t i = 0; i + 1 < w.size(); ++i) EXPECT_EQ(w[i], all[i]) << i;
    EXPECT_TRUE(std::equal(w.back().begin(), w.back().end(), all[w.size() - 1].begin()));
}

TEST(MaxTokens, RealTokenizerPrefixMatchesWholeDocument) {
    auto tok = Tokenizer::from_dir(demo_model_dir());
    const std::string text = read_file(std::string(MOEFY_SOURCE_DIR) + "/data/eval.jsonl");
    std::string doc;  // one long line of prose
    for (char c : text) doc += c == '\n' ? ' ' : c;
    doc = doc.substr(0, 200000);
    const auto cut = make_windows({doc}, *tok, {128, 3000, true});
    const auto all = make_windows({doc}, *tok, {128, 0, true});
    ASSERT_EQ(predicted_tokens(cut), 3000u);
    for (size_t i = 0; i + 1 < cut.size(); ++i) ASSERT_EQ(cut[i], all[i]) << i;
    EXPECT_TRUE(std::equal(cut.back().begin(), cut.back().end(), all[cut.size() - 1].begin()));
}

TEST(Warnings, NonFiniteWeightsAreNamed) {
    TempDir t;
    const std::string path = t.path + "/w.safetensors";
    std::vector<TensorSpec> specs = {{"ok", DType::F32, {4}}, {"bad.bf16", DType::BF16, {4}}, {"bad.f16", DType::F16, {2}}};
    write_safetensors(path, specs, [](size_t i, ByteSink& s) {
        if (i == 0) { float v[4] = {1, 2, 3, 4}; s.write(v, 16); }
        if (i == 1) { uint16_t v[4] = {0x3f80, 0x7fc0, 0xff80, 0}; s.write(v, 8); }  // 1, NaN, -Inf, 0
        if (i == 2) { uint16_t v[2] = {0x7c00, 0x3c00}; s.write(v, 4); }            // Inf, 1
    });
    std::vector<std::string> got;
    auto old = set_warning_handler([&](const std::string& m) { got.push_back(m); });
    warn_non_finite(*TensorStore::open_file(path));
    set_warning_handler(old);
    ASSERT_EQ(got.size(), 2u);
    EXPECT_EQ(got[0], path + ": tensor 'bad.bf16' holds 2 NaN/Inf value(s) (first at element 1)");
    EXPECT_EQ(got[1], path + ": tensor 'bad.f16' holds 1 NaN/Inf value(s) (first at element 0)");
}

// fuzz_sentencepiece finding: a piece holding a NUL byte makes libsentencepiece's
// trie builder throw its own exception (Darts), which escaped as a crash. The
// fuzzer's 33-byte input, as bytes.
TEST(ThirdPartyExceptions, SentencePieceModelWithANulPieceIsAnErrorNamingTheFile) {
    TempDir tmp;
    const unsigned char model[] = {0x0a, 0x0e, 0x0a, 0x05, 0x3c, 0x75, 0x6e, 0x6b, 0x3e, 0x15, 0x00, 0x00, 0x00, 0x00, 0x18, 0x02, 0x0a,
                                   0x0f, 0x0a, 0x06, 0x00, 0x21, 0x78, 0x30, 0x32, 0x3e, 0x15, 0x00, 0x00, 0x06, 0x3c, 0x30, 0x00};
    const std::string path = tmp.path + "/tokenizer.model";
    std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(model), sizeof model);
    try {
        (void)load_sentencepiece(path, TokenizerSettings{});
        FAIL() << "loaded";
    } catch (const Error& e) {
        EXPECT_EQ(std::string(e.what()).rfind(path + ": cannot load SentencePiece model: ", 0), 0u) << e.what();
    }
}

// Per-layer tables are sized from config.json before any tensor is seen: the
// counts that size them are capped, so a tiny file cannot ask for gigabytes.
TEST(JsonLimits, LayerAndExpertCountsAreCappedBeforeTablesAreSized) {
    nlohmann::json j = {{"architectures", {"MixtralForCausalLM"}}, {"model_type", "mixtral"}, {"vocab_size", 32},
                        {"hidden_size", 16}, {"intermediate_size", 8}, {"num_hidden_layers", 2},
                        {"num_attention_heads", 4}, {"num_local_experts", 4}, {"num_experts_per_tok", 2}};
    EXPECT_EQ(ModelConfig::parse(j, "c.json").moe.expert_widths.size(), 2u);
    auto err = [&](const nlohmann::json& c) {
        try {
            (void)ModelConfig::parse(c, "c.json");
        } catch (const Error& e) {
            return std::string(e.what());
        }
        return std::string("(no error)");
    };
    nlohmann::json deep = j;
    deep["num_hidden_layers"] = 1 << 20;
    EXPECT_EQ(err(deep), "c.json: field 'num_hidden_layers' is 1048576, more than the 65536 layers moefy supports");
    nlohmann::json wide = j;
    wide["num_hidden_layers"] = 60000, wide["num_local_experts"] = 1 << 20, wide["intermediate_size"] = 1;
    EXPECT_EQ(err(wide), "c.json: 60000 layers x 1048576 experts ('num_local_experts') is more than the 4194304 expert slots "
                         "moefy supports");
}
