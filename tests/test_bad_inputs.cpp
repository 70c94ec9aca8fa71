// The bad-input matrix of docs/reliability.md, as tests. Each case builds one
// bad input in a fresh temporary directory, runs the CLI on it and asserts:
// the exit code and the exact one-line message that the document's table
// gives for the case (so the table cannot drift from what moefy prints), a
// hand-written fragment naming the file and the problem, and that nothing was
// written at the output path (no OUT, no temporary sibling).
//
// Regenerate the table after changing a message:
//   MOEFY_RECORD_MATRIX=1 ./build/moefy_tests --gtest_filter='BadInputs.*'
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <functional>
#include <map>
#include <regex>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "test_util.h"
#include "tiny_model.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

struct Env {
    std::string T;  // the case's temporary directory
    std::string tiny() {  // a small dense model at T/m (2 layers, hidden 16, intermediate 24)
        const std::string d = T + "/m";
        if (!fs::exists(d)) write_tiny_model(d, TinyModelSpec{});
        return d;
    }
    void patch_config(const std::string& dir, const json& patch) {
        json c = json::parse(read_file(dir + "/config.json"));
        c.merge_patch(patch);
        std::ofstream(dir + "/config.json") << c.dump(1);
    }
    void put(const std::string& rel, const std::string& text) { std::ofstream(T + "/" + rel, std::ios::binary) << text; }
    // A model directory at T/m whose model.safetensors is exactly `header` + `data`.
    std::string raw_model(const std::string& header, const std::string& data) {
        tiny();
        std::string f;
        uint64_t n = header.size();
        f.append(reinterpret_cast<const char*>(&n), 8);
        f += header + data;
        put("m/model.safetensors", f);
        return T + "/m";
    }
    // A valid plan for the tiny model (random, 2 experts), saved by the CLI.
    std::string plan() {
        const std::string p = T + "/plan.json";
        if (!fs::exists(p)) {
            CliResult r = run_cli("split random --model " + tiny() + " --experts 2 --seed 1 --out " + p);
            if (r.status != 0) throw std::runtime_error("split random failed: " + r.out);
        }
        return p;
    }
    std::string patch_plan(const std::function<void(json&)>& f) {
        json j = json::parse(read_file(plan()));
        f(j);
        std::ofstream(T + "/bad-plan.json") << j.dump();
        return T + "/bad-plan.json";
    }
    std::string convert(const std::string& plan_path, const std::string& extra = "") {
        return "convert --model " + tiny() + " --plan " + plan_path + " --out " + T + "/out " + extra;
    }
    std::string eval_demo(const std::string& data) { return "eval --model " + demo_model_dir() + " --data " + data + " --max-tokens 8"; }
};

struct Case {
    std::string id, input, problem;
    std::function<std::string(Env&)> setup;  // returns the CLI arguments
    std::string must_contain;                // besides the exact message: the file and the problem
    int exit_code = 1;
};

std::string deep(char open, int n) { return std::string(size_t(n), open); }

std::vector<Case> cases() {
    const std::string st = "model.safetensors";
    std::vector<Case> c;
    auto add = [&](std::string id, std::string input, std::string problem, std::function<std::string(Env&)> setup,
                   std::string must, int code = 1) { c.push_back({id, input, problem, setup, must, code}); };
    // ---- safetensors
    add("S01", "safetensors", "empty file", [](Env& e) { e.raw_model("", ""); e.put("m/model.safetensors", ""); return "inspect " + e.T + "/m"; }, "no header length");
    add("S02", "safetensors", "5 bytes", [](Env& e) { e.tiny(); e.put("m/model.safetensors", "abcde"); return "inspect " + e.T + "/m"; }, "only 5 bytes");
    add("S03", "safetensors", "header length past the end of the file", [](Env& e) {
        e.tiny(); std::string f(8, '\0'); f[0] = char(200); e.put("m/model.safetensors", f + "{}"); return "inspect " + e.T + "/m"; }, "runs past the end");
    add("S04", "safetensors", "header length over the 100 MB limit", [](Env& e) {
        e.tiny(); std::string f(8, '\0'); f[5] = 1; e.put("m/model.safetensors", f + "{}"); return "inspect " + e.T + "/m"; }, "100 MB limit");
    add("S05", "safetensors", "header not JSON", [](Env& e) { e.raw_model("{not json", ""); return "inspect " + e.T + "/m"; }, "not well-formed JSON");
    add("S06", "safetensors", "header a JSON array", [](Env& e) { e.raw_model("[1, 2]", ""); return "inspect " + e.T + "/m"; }, "not a JSON object");
    add("S07", "safetensors", "header nested 100000 deep", [](Env& e) { e.raw_model(deep('[', 100000), ""); return "inspect " + e.T + "/m"; }, "nested deeper than 64");
    add("S08", "safetensors", "unknown dtype", [](Env& e) {
        e.raw_model(R"({"w": {"dtype": "I8", "shape": [4], "data_offsets": [0, 4]}})", "abcd"); return "inspect " + e.T + "/m"; }, "'I8'");
    add("S09", "safetensors", "negative dimension", [](Env& e) {
        e.raw_model(R"({"w": {"dtype": "F32", "shape": [-1, 4], "data_offsets": [0, 16]}})", std::string(16, 'x')); return "inspect " + e.T + "/m"; }, "negative");
    add("S10", "safetensors", "shape x dtype wraps 2^64 to the right byte count", [](Env& e) {
        // (2^62 + 1) x 4 x 4 bytes = 2^66 + 16 = 16 (mod 2^64)
        e.raw_model(R"({"w": {"dtype": "F32", "shape": [4611686018427387905, 4], "data_offsets": [0, 16]}})", std::string(16, 'x'));
        return "inspect " + e.T + "/m"; }, "does not fit in 64 bits");
    add("S11", "safetensors", "huge shape (2^62 bytes) for 16 bytes", [](Env& e) {
        e.raw_model(R"({"w": {"dtype": "F32", "shape": [1099511627776, 1048576], "data_offsets": [0, 16]}})", std::string(16, 'x'));
        return "inspect " + e.T + "/m"; }, "needs 4611686018427387904");
    add("S12", "safetensors", "data_offsets past the data section (truncated)", [](Env& e) {
        e.raw_model(R"({"w": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}})", std::string(16, 'x')); return "inspect " + e.T + "/m"; }, "run past the data section");
    add("S13", "safetensors", "reversed data_offsets", [](Env& e) {
        e.raw_model(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}})", std::string(16, 'x')); return "inspect " + e.T + "/m"; }, "reversed");
    add("S14", "safetensors", "overlapping tensors", [](Env& e) {
        e.raw_model(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})", std::string(16, 'x'));
        return "inspect " + e.T + "/m"; }, "overlap");
    add("S15", "safetensors", "offsets not integers", [](Env& e) {
        e.raw_model(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": ["0", 4]}})", std::string(4, 'x')); return "inspect " + e.T + "/m"; }, "data_offsets");
    add("S16", "safetensors", "tensor without dtype", [](Env& e) {
        e.raw_model(R"({"w": {"shape": [1], "data_offsets": [0, 4]}})", std::string(4, 'x')); return "inspect " + e.T + "/m"; }, "missing dtype");
    add("S17", "safetensors", "real checkpoint truncated by 100 bytes", [](Env& e) {
        const std::string d = e.tiny(); const std::string all = read_file(d + "/model.safetensors");
        e.put("m/model.safetensors", all.substr(0, all.size() - 100)); return "inspect " + d; }, "file truncated?");
    // ---- sharded checkpoints
    auto sharded = [](Env& e) { TinyModelSpec s; s.max_shard_bytes = 4096; write_tiny_model(e.T + "/m", s); return e.T + "/m"; };
    add("I01", "index json", "not JSON", [=](Env& e) { const auto d = sharded(e); e.put("m/model.safetensors.index.json", "{"); return "inspect " + d; }, "not well-formed JSON");
    add("I02", "index json", "no weight_map", [=](Env& e) { const auto d = sharded(e); e.put("m/model.safetensors.index.json", "{}"); return "inspect " + d; }, "no weight_map");
    add("I03", "index json", "a shard missing", [=](Env& e) { const auto d = sharded(e); 
        for (const auto& f : fs::directory_iterator(d)) if (f.path().filename().string().rfind("model-00002-of-", 0) == 0) fs::remove(f.path());
        return "inspect " + d; }, "is missing");
    add("I04", "index json", "shard name with a path", [=](Env& e) {
        const auto d = sharded(e); e.put("m/model.safetensors.index.json", R"({"weight_map": {"x": "../etc/passwd"}})"); return "inspect " + d; }, "plain file name");
    add("I05", "index json", "tensor listed but not in its shard", [=](Env& e) {
        const auto d = sharded(e); json j = json::parse(read_file(d + "/model.safetensors.index.json"));
        j["weight_map"]["model.extra.weight"] = j["weight_map"]["model.norm.weight"]; e.put("m/model.safetensors.index.json", j.dump()); return "inspect " + d; }, "not present in shard");
    add("I06", "index json", "nested 100000 deep", [=](Env& e) { const auto d = sharded(e); e.put("m/model.safetensors.index.json", deep('{', 1) + "\"a\":" + deep('[', 100000)); return "inspect " + d; }, "nested deeper");
    // ---- config.json
    add("C01", "config.json", "empty file", [](Env& e) { e.tiny(); e.put("m/config.json", ""); return "inspect " + e.T + "/m"; }, "not well-formed JSON");
    add("C02", "config.json", "nested 100000 deep (was SIGSEGV)", [](Env& e) { e.tiny(); e.put("m/config.json", deep('[', 100000)); return "inspect " + e.T + "/m"; }, "nested deeper than 64");
    add("C03", "config.json", "vocab_size 2^32 + 192 (was read as 192)", [](Env& e) { e.patch_config(e.tiny(), {{"vocab_size", 4294967488ull}}); return "inspect " + e.T + "/m"; }, "'vocab_size'");
    add("C04", "config.json", "hidden_size negative", [](Env& e) { e.patch_config(e.tiny(), {{"hidden_size", -16}}); return "inspect " + e.T + "/m"; }, "must be positive");
    add("C05", "config.json", "rms_norm_eps 0 (was perplexity -nan)", [](Env& e) { e.patch_config(e.tiny(), {{"rms_norm_eps", 0}}); return "inspect " + e.T + "/m"; }, "'rms_norm_eps' must be a finite number > 0");
    add("C06", "config.json", "rope_theta 0", [](Env& e) { e.patch_config(e.tiny(), {{"rope_theta", 0.0}}); return "inspect " + e.T + "/m"; }, "'rope_theta'");
    add("C07", "config.json", "rope_theta negative", [](Env& e) { e.patch_config(e.tiny(), {{"rope_theta", -10000.0}}); return "inspect " + e.T + "/m"; }, "'rope_theta'");
    add("C08", "config.json", "unsupported architecture", [](Env& e) { e.patch_config(e.tiny(), {{"architectures", {"GPT2LMHeadModel"}}}); return "inspect " + e.T + "/m"; }, "unsupported architecture 'GPT2LMHeadModel'");
    add("C09", "config.json", "fewer layers than the tensors hold", [](Env& e) { e.patch_config(e.tiny(), {{"num_hidden_layers", 1}}); return "inspect " + e.T + "/m"; }, "num_hidden_layers 1");
    add("C10", "config.json", "more layers than the tensors hold", [](Env& e) { e.patch_config(e.tiny(), {{"num_hidden_layers", 3}}); return "inspect " + e.T + "/m"; }, "model.layers.2");
    add("C11", "config.json", "hidden_size disagrees with the tensors", [](Env& e) { e.patch_config(e.tiny(), {{"hidden_size", 32}}); return "inspect " + e.T + "/m"; }, "expected [32, 32]");
    add("C12", "config.json", "num_experts_per_tok 2^32 + 2", [](Env& e) {
        e.patch_config(e.tiny(), {{"architectures", {"MixtralForCausalLM"}}, {"num_local_experts", 4}, {"num_experts_per_tok", 4294967298ull}});
        return "inspect " + e.T + "/m"; }, "'num_experts_per_tok'");
    add("C13", "config.json", "top-k larger than the expert count", [](Env& e) {
        e.patch_config(e.tiny(), {{"architectures", {"MixtralForCausalLM"}}, {"num_local_experts", 4}, {"num_experts_per_tok", 8}});
        return "inspect " + e.T + "/m"; }, "top-k 8");
    add("C14", "config.json", "missing", [](Env& e) { fs::remove(e.tiny() + "/config.json"); return "inspect " + e.T + "/m"; }, "no config.json");
    add("C15", "config.json", "a directory", [](Env& e) { fs::remove(e.tiny() + "/config.json"); fs::create_directory(e.T + "/m/config.json"); return "inspect " + e.T + "/m"; }, "is a directory");
    add("C16", "config.json", "mixtral width x experts overflows", [](Env& e) {
        e.patch_config(e.tiny(), {{"architectures", {"MixtralForCausalLM"}}, {"num_local_experts", 1 << 20}, {"num_experts_per_tok", 2}, {"intermediate_size", 1 << 20}});
        return "inspect " + e.T + "/m"; }, "is larger than");
    // ---- weights
    add("W01", "weights", "a NaN weight: warning naming the tensor, exit 0", [](Env& e) {
        TinyModelSpec s; write_tiny_model(e.T + "/m", s);
        std::string all = read_file(e.T + "/m/model.safetensors");
        uint64_t h; std::memcpy(&h, all.data(), 8);
        const float nan = std::numeric_limits<float>::quiet_NaN();
        std::memcpy(&all[8 + h], &nan, 4);  // first element of the first tensor in offset order
        e.put("m/model.safetensors", all); return "inspect " + e.T + "/m"; }, "NaN/Inf", 0);
    add("W02", "weights", "a tensor no architecture uses: warning, exit 0", [](Env& e) {
        const std::string d = e.tiny(); using namespace moefy;
        auto store = TensorStore::open_dir(d);
        std::vector<TensorSpec> specs;
        for (const auto& n : store->names()) specs.push_back({n, store->get(n).dtype, store->get(n).shape});
        specs.push_back({"model.layers.0.self_attn.rotary_emb.inv_freq", DType::F32, {4}});
        std::vector<std::string> src;
        write_safetensors(e.T + "/x.safetensors", specs, [&](size_t i, ByteSink& sink) {
            if (i + 1 < specs.size()) { const auto& t = store->get(specs[i].name); sink.write(t.data, t.nbytes); }
            else { float z[4] = {}; sink.write(z, 16); } });
        store.reset();
        fs::rename(e.T + "/x.safetensors", d + "/model.safetensors");
        return "inspect " + d; }, "rotary_emb.inv_freq", 0);
    // ---- expert plans (convert)
    add("P01", "expert plan", "not JSON", [](Env& e) { e.put("p.json", "{\"format\":"); return e.convert(e.T + "/p.json"); }, "not well-formed JSON");
    add("P02", "expert plan", "nested 100000 deep", [](Env& e) { e.put("p.json", deep('[', 100000)); return e.convert(e.T + "/p.json"); }, "nested deeper");
    add("P03", "expert plan", "for another model (fingerprint)", [](Env& e) {
        return e.convert(e.patch_plan([](json& j) { j["model"]["ffn_fingerprint"] = "fnv1a64:0000000000000000"; })); }, "made for another model");
    add("P04", "expert plan", "without its fingerprint (was not checked)", [](Env& e) {
        return e.convert(e.patch_plan([](json& j) { j["model"].erase("ffn_fingerprint"); })); }, "no model.ffn_fingerprint");
    add("P05", "expert plan", "for a model of other sizes", [](Env& e) {
        return e.convert(e.patch_plan([](json& j) { j["model"]["hidden_size"] = 32; })); }, "plan was made for a model");
    add("P06", "expert plan", "neuron id out of range", [](Env& e) {
        return e.convert(e.patch_plan([](json& j) { j["layers"][0]["experts"][0][0] = 24; })); }, "outside [0, 24)");
    add("P07", "expert plan", "neuron id 2^32 + 5 (was read as 5)", [](Env& e) {
        return e.convert(e.patch_plan([](json& j) { j["layers"][0]["experts"][0][0] = 4294967301ull; })); }, "out of range");
    add("P08", "expert plan", "a neuron in two experts, another in none (random plan)", [](Env& e) {
        return e.convert(e.patch_plan([](json& j) { j["layers"][1]["experts"][0][0] = j["layers"][1]["experts"][1][0]; })); }, "partitions the neurons");
    add("P16", "expert plan", "a neuron in two experts, another in none (non-sharing gradient plan)", [](Env& e) {
        return e.convert(e.patch_plan([](json& j) {
            j["method"] = "gradient", j["params"] = {{"share", false}};
            j["layers"][0]["experts"][0][0] = j["layers"][0]["experts"][1][0];
        })); }, "'gradient' plan without --share partitions the neurons");
    add("P09", "expert plan", "a neuron twice in one expert", [](Env& e) {
        return e.convert(e.patch_plan([](json& j) { j["layers"][0]["experts"][0][1] = j["layers"][0]["experts"][0][0]; })); }, "twice");
    add("P10", "expert plan", "layer count disagrees", [](Env& e) {
        return e.convert(e.patch_plan([](json& j) { j["layers"].erase(1); })); }, "plan has 1 layers");
    add("P11", "expert plan", "unsupported version", [](Env& e) {
        return e.convert(e.patch_plan([](json& j) { j["version"] = 4294967297ull; })); }, "unsupported plan version");
    add("P12", "expert plan", "an empty expert", [](Env& e) {
        return e.convert(e.patch_plan([](json& j) { j["layers"][0]["experts"][0] = json::array(); })); }, "is empty");
    add("P13", "expert plan", "top-k above the expert count", [](Env& e) { return e.convert(e.plan(), "--top-k 3"); }, "--top-k 3");
    add("P14", "expert plan", "a directory", [](Env& e) { fs::create_directory(e.T + "/pd"); return e.convert(e.T + "/pd"); }, "is a directory");
    // ---- importance files (split gradient)
    add("M01", "importance file", "not safetensors", [](Env& e) { e.put("imp.safetensors", "hello"); return "split gradient --importance " + e.T + "/imp.safetensors --out " + e.T + "/out"; }, "not a safetensors file");
    add("M02", "importance file", "a checkpoint, not an importance file", [](Env& e) {
        return "split gradient --importance " + e.tiny() + "/model.safetensors --out " + e.T + "/out"; }, "not an importance file");
    // ---- data files (eval on the demo model)
    add("D01", "data", "a directory (was basic_filebuf::underflow)", [](Env& e) { return e.eval_demo(e.T); }, "data path is a directory");
    add("D02", "data", "empty .jsonl", [](Env& e) { e.put("d.jsonl", ""); return e.eval_demo(e.T + "/d.jsonl"); }, "no documents");
    add("D03", "data", "empty .txt", [](Env& e) { e.put("d.txt", " \n"); return e.eval_demo(e.T + "/d.txt"); }, "holds no text");
    add("D04", "data", "invalid UTF-8", [](Env& e) { e.put("d.jsonl", "{\"text\": \"ab\xff\"}\n"); return e.eval_demo(e.T + "/d.jsonl"); }, "d.jsonl:1");
    add("D09", "data", "invalid UTF-8 in a text file", [](Env& e) { e.put("d.txt", "ok \xc3\x28 bad"); return e.eval_demo(e.T + "/d.txt"); }, "UTF-8");
    add("P15", "expert plan", "widths Mixtral cannot store (named by file)", [](Env& e) {
        return e.convert(e.patch_plan([](json& j) {
            for (auto& l : j["layers"]) { auto n = l["experts"][1].back(); l["experts"][1].erase(l["experts"][1].size() - 1); l["experts"][0].push_back(n); }
        }), "--format mixtral"); }, "bad-plan.json: plan has expert widths");
    add("D05", "data", "a line that is not JSON", [](Env& e) { e.put("d.jsonl", "{\"text\": \"a\"}\nnot json\n"); return e.eval_demo(e.T + "/d.jsonl"); }, "d.jsonl:2");
    add("D06", "data", "no text field", [](Env& e) { e.put("d.jsonl", "{\"body\": \"a\"}\n"); return e.eval_demo(e.T + "/d.jsonl"); }, "--text-field");
    add("D07", "data", "missing file", [](Env& e) { return e.eval_demo(e.T + "/none.jsonl"); }, "none.jsonl");
    add("D08", "data", "a line nested 100000 deep", [](Env& e) { e.put("d.jsonl", deep('[', 100000) + "\n"); return e.eval_demo(e.T + "/d.jsonl"); }, "nested deeper");
    // ---- tokenizer
    add("K01", "tokenizer", "tokenizer.model garbage", [](Env& e) {
        fs::copy(demo_model_dir(), e.T + "/demo"); e.put("demo/tokenizer.model", "garbage");
        return "eval --model " + e.T + "/demo --data " + std::string(MOEFY_SOURCE_DIR) + "/data/eval.jsonl --max-tokens 8"; }, "tokenizer.model");
    add("K02", "tokenizer", "tokenizer.json with an added token id 2^30", [](Env& e) {
        fs::copy(demo_model_dir(), e.T + "/demo"); fs::remove(e.T + "/demo/tokenizer.model");
        e.put("demo/tokenizer.json", R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "added_tokens": [{"id": 1073741824, "content": "<x>"}]})");
        return "eval --model " + e.T + "/demo --data " + std::string(MOEFY_SOURCE_DIR) + "/data/eval.jsonl --max-tokens 8"; }, "beyond the vocabulary");
    add("K03", "tokenizer", "tokenizer.json vocab id 2^30 (would allocate 2^30 strings)", [](Env& e) {
        fs::copy(demo_model_dir(), e.T + "/demo"); fs::remove(e.T + "/demo/tokenizer.model");
        e.put("demo/tokenizer.json", R"({"model": {"type": "BPE", "vocab": {"a": 1073741824}, "merges": []}})");
        return "eval --model " + e.T + "/demo --data " + std::string(MOEFY_SOURCE_DIR) + "/data/eval.jsonl --max-tokens 8"; }, "ids must be dense");
    // ---- output paths
    add("O01", "output path", "split --out onto a directory (was 'rename: Success')", [](Env& e) {
        fs::create_directory(e.T + "/out"); return "split random --model " + e.tiny() + " --experts 2 --out " + e.T + "/out"; }, "output path is a directory");
    add("O02", "output path", "split --out onto a FIFO", [](Env& e) {
        mkfifo((e.T + "/out").c_str(), 0644); return "split random --model " + e.tiny() + " --experts 2 --out " + e.T + "/out"; }, "a FIFO");
    add("O03", "output path", "split --out onto a symlink", [](Env& e) {
        e.put("target", "keep"); fs::create_symlink(e.T + "/target", e.T + "/out");
        return "split random --model " + e.tiny() + " --experts 2 --out " + e.T + "/out"; }, "symbolic link");
    add("O04", "output path", "split --out /dev/null", [](Env& e) { return "split random --model " + e.tiny() + " --experts 2 --out /dev/null"; }, "a character device");
    add("O05", "output path", "convert --out existing, no --force", [](Env& e) { fs::create_directory(e.T + "/out"); return e.convert(e.plan()); }, "already exists");
    add("O06", "output path", "convert --force --out onto a symlink", [](Env& e) {
        fs::create_directory(e.T + "/real"); fs::create_directory_symlink(e.T + "/real", e.T + "/out"); return e.convert(e.plan(), "--force"); }, "symbolic link");
    add("O07", "output path", "convert --force --out onto a file", [](Env& e) { e.put("out", "x"); return e.convert(e.plan(), "--force"); }, "not a directory");
    add("O08", "output path", "convert --out in a missing directory", [](Env& e) {
        return "convert --model " + e.tiny() + " --plan " + e.plan() + " --out " + e.T + "/no/out"; }, "does not exist");
    add("O09", "output path", "importance --out onto a directory", [](Env& e) {
        fs::create_directories(e.T + "/clusters"); e.put("clusters/0.jsonl", "{\"text\": \"Once upon a time\"}\n");
        fs::create_directory(e.T + "/out");
        return "importance --model " + demo_model_dir() + " --data " + e.T + "/clusters --ctx 32 --max-tokens-per-cluster 8 --out " + e.T + "/out"; }, "output path is a directory");
    // ---- usage
    add("U01", "flags", "unknown flag", [](Env& e) { return "inspect " + e.tiny() + " --bogus"; }, "usage error", 2);
    add("U02", "flags", "missing required option", [](Env& e) { return "convert --model " + e.tiny(); }, "usage error", 2);
    add("U03", "flags", "not a number", [](Env& e) { return "split random --model " + e.tiny() + " --experts two --out " + e.T + "/out"; }, "usage error", 2);
    add("U04", "flags", "unknown command", [](Env&) { return std::string("frobnicate"); }, "usage error", 2);
    return c;
}

// The table in docs/reliability.md between the markers: id -> (exit code, message).
const char* kBegin = "<!-- bad-input matrix: generated by MOEFY_RECORD_MATRIX=1 moefy_tests --gtest_filter='BadInputs.*' -->";
const char* kEnd = "<!-- end of bad-input matrix -->";
std::string doc_path() { return std::string(MOEFY_SOURCE_DIR) + "/docs/reliability.md"; }

std::map<std::string, std::pair<int, std::string>> documented() {
    std::map<std::string, std::pair<int, std::string>> out;
    const std::string doc = read_file(doc_path());
    const size_t b = doc.find(kBegin), e = doc.find(kEnd);
    if (b == std::string::npos || e == std::string::npos) return out;
    std::istringstream in(doc.substr(b, e - b));
    std::string line;
    while (std::getline(in, line)) {
        // | id | input | problem | exit | `message` | test |
        if (line.rfind("| ", 0) != 0 || line.rfind("| id", 0) == 0 || line.rfind("|--", 0) == 0) continue;
        std::vector<std::string> cells;
        size_t p = 1;
        while (p < line.size()) {
            const size_t q = line.find(" | ", p);
            cells.push_back(line.substr(p + 1, (q == std::string::npos ? line.size() - 1 : q) - p - 1));
            if (q == std::string::npos) break;
            p = q + 2;
        }
        if (cells.size() < 6) continue;
        std::string msg = cells[4];
        if (msg.size() >= 2 && msg.front() == '`' && msg.back() == '`') msg = msg.substr(1, msg.size() - 2);
        out[cells[0]] = {std::atoi(cells[3].c_str()), msg};
    }
    return out;
}

// The one line that names the problem: the error line, or for exit 0 the first warning.
std::string key_line(const std::string& out, const std::string& T) {
    std::istringstream in(out);
    std::string line, found;
    while (std::getline(in, line)) {
        if (line.rfind("moefy: error:", 0) == 0 || line.rfind("moefy: usage error:", 0) == 0) found = line;
        else if (found.empty() && line.rfind("moefy: warning:", 0) == 0) found = line;
    }
    for (size_t p; (p = found.find(T)) != std::string::npos;) found.replace(p, T.size(), "$T");
    const std::string src = MOEFY_SOURCE_DIR;
    for (size_t p; (p = found.find(src)) != std::string::npos;) found.replace(p, src.size(), "$SRC");
    // Markdown table cells cannot hold '|'.
    for (size_t p; (p = found.find('|')) != std::string::npos;) found.replace(p, 1, "\\x7c");
    return found;
}

}  // namespace

TEST(BadInputs, EveryCaseOneClearMessageNothingWritten) {
    const bool record = std::getenv("MOEFY_RECORD_MATRIX") != nullptr;
    const auto doc = documented();
    std::string table = std::string(kBegin) + "\n\n| id | input | problem | exit | message | test |\n|--|--|--|--|--|--|\n";
    int n = 0;
    for (const Case& c : cases()) {
        SCOPED_TRACE(c.id + ": " + c.input + ", " + c.problem);
        TempDir tmp;
        Env e{tmp.path};
        const std::string args = c.setup(e);
        const CliResult r = run_cli(args);
        const std::string line = key_line(r.out, tmp.path);
        EXPECT_EQ(r.status, c.exit_code) << r.out;
        EXPECT_NE(line.find(c.must_contain), std::string::npos) << "output: " << r.out;
        EXPECT_EQ(r.out.find("terminate called"), std::string::npos) << r.out;
        // Nothing at the output path: no OUT (unless the case made it), no temporary sibling.
        for (const auto& entry : fs::directory_iterator(tmp.path)) {
            const std::string name = entry.path().filename().string();
            EXPECT_EQ(name.find(".tmp-"), std::string::npos) << "left behind: " << name;
        }
        if (c.id[0] != 'O' && c.exit_code != 0) {
            EXPECT_FALSE(fs::exists(tmp.path + "/out")) << c.id;
        }
        if (c.id == "O03") {
            EXPECT_EQ(read_file(tmp.path + "/target"), "keep");
        }
        if (c.id == "O04") {
            struct stat st {};
            ASSERT_EQ(stat("/dev/null", &st), 0);
            EXPECT_TRUE(S_ISCHR(st.st_mode));
        }
        if (record) {
            table += fmt::format("| {} | {} | {} | {} | `{}` | `BadInputs.EveryCaseOneClearMessageNothingWritten` |\n", c.id, c.input,
                                 c.problem, r.status, line);
        } else {
            auto it = doc.find(c.id);
            if (it == doc.end()) {
                ADD_FAILURE() << c.id << " is not in docs/reliability.md; rerun with MOEFY_RECORD_MATRIX=1";
            } else {
                EXPECT_EQ(it->second.first, r.status) << c.id;
                EXPECT_EQ(it->second.second, line) << c.id << ": the message differs from docs/reliability.md";
            }
        }
        ++n;
    }
    EXPECT_GE(n, 40);
    if (record) {
        std::string docs = read_file(doc_path());
        const size_t b = docs.find(kBegin), e = docs.find(kEnd);
        ASSERT_TRUE(b != std::string::npos && e != std::string::npos) << "markers missing in docs/reliability.md";
        docs.replace(b, e - b, table + "\n");
        std::ofstream(doc_path()) << docs;
    }
}
