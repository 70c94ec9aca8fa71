// `moefy eval` on bad input: one clear error naming the file and the problem,
// exit status 1, never a crash. Runs on the bundled demo model (in the repo).
#include <gtest/gtest.h>
#include <fmt/format.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "test_util.h"

namespace fs = std::filesystem;

namespace {

void write(const std::string& path, const std::string& bytes) { std::ofstream(path, std::ios::binary) << bytes; }

// Runs eval and expects exit 1 with every `needles` in the one error line.
void expect_refused(const std::string& args, std::initializer_list<const char*> needles) {
    const CliResult r = run_cli("eval " + args);
    EXPECT_EQ(r.status, 1) << args << "\n" << r.out;
    EXPECT_NE(r.out.find("moefy: error: "), std::string::npos) << args << "\n" << r.out;
    for (const char* n : needles) EXPECT_NE(r.out.find(n), std::string::npos) << args << ": no '" << n << "' in\n" << r.out;
}

}  // namespace

TEST(EvalCli, BadDataModelsAndContextsAreRefusedClearly) {
    TempDir t;
    const std::string M = demo_model_dir();
    write(t.path + "/empty.jsonl", "");
    write(t.path + "/empty.txt", "");
    write(t.path + "/bad.txt", "hello \xff\xfe world\n");
    write(t.path + "/bad.jsonl", "{\"text\": \"a\xff" "b\"}\n");
    write(t.path + "/ok.jsonl", "{\"text\": \"Once upon a time there was a cat.\"}\n");

    expect_refused(fmt::format("--model {} --data {}/empty.jsonl", M, t.path), {"empty.jsonl", "no documents"});
    expect_refused(fmt::format("--model {} --data {}/empty.txt", M, t.path), {"empty.txt", "no text"});
    expect_refused(fmt::format("--model {} --data {}/bad.txt", M, t.path), {"bad.txt", "invalid UTF-8"});
    expect_refused(fmt::format("--model {} --data {}/bad.jsonl", M, t.path), {"bad.jsonl:1"});
    expect_refused(fmt::format("--model {} --data {}/missing.jsonl", M, t.path), {"missing.jsonl"});
    expect_refused(fmt::format("--model {} --data {}/ok.jsonl --ctx 100000", M, t.path), {"--ctx 100000", "max_position_embeddings"});

    // A truncated checkpoint and an unsupported architecture.
    for (const char* name : {"truncated", "gpt2"}) {
        fs::create_directories(t.path + "/" + name);
        for (const auto& e : fs::directory_iterator(M)) fs::copy_file(e.path(), t.path + "/" + name + "/" + e.path().filename().string());
    }
    fs::resize_file(t.path + "/truncated/model.safetensors", 100000);
    expect_refused(fmt::format("--model {}/truncated --data {}/ok.jsonl", t.path, t.path), {"model.safetensors", "truncated"});
    {
        std::ifstream in(t.path + "/gpt2/config.json");
        std::string cfg((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        cfg.replace(cfg.find("LlamaForCausalLM"), 16, "GPT2LMHeadModel");
        write(t.path + "/gpt2/config.json", cfg);
    }
    expect_refused(fmt::format("--model {}/gpt2 --data {}/ok.jsonl", t.path, t.path), {"config.json", "GPT2LMHeadModel"});

    // And the good file works.
    const CliResult ok = run_cli(fmt::format("eval --model {} --data {}/ok.jsonl --json", M, t.path));
    EXPECT_EQ(ok.status, 0) << ok.out;
    EXPECT_NE(ok.out.find("\"perplexity\""), std::string::npos) << ok.out;
}

// The CLI's default activation mode rounds to BF16 (where the CPU has the BF16
// dot products); the suite runs exact. Same text: the NLL moves, within 1e-3
// relative, and --version names the mode.
TEST(EvalCliBf16Activations, DefaultModeIsWithinItsRoundingOfExact) {
    const std::string args = fmt::format("eval --model {} --data {}/data/eval.jsonl --max-tokens 4000 --json",
                                         demo_model_dir(), MOEFY_SOURCE_DIR);
    const CliResult exact = run_cli(args), rounded = run_cli(args, "MOEFY_BF16_ACTIVATIONS=bf16");
    ASSERT_EQ(exact.status, 0) << exact.out;
    ASSERT_EQ(rounded.status, 0) << rounded.out;
    const double want = nlohmann::json::parse(exact.out)["mean_nll"].get<double>();
    const double got = nlohmann::json::parse(rounded.out)["mean_nll"].get<double>();
    EXPECT_NEAR(got, want, 1e-3 * want);
    const CliResult v = run_cli("--version", "MOEFY_BF16_ACTIVATIONS=");
    if (v.out.find("avx512bf16") != std::string::npos || v.out.find("amx") != std::string::npos) {
        EXPECT_NE(got, want) << "bf16 mode computed the exact products";
        EXPECT_NE(v.out.find("activations bf16"), std::string::npos) << v.out;
    }
}
