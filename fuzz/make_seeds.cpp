// Writes the seed corpora of the fuzz targets (build-fuzz/seeds/<target>/)
// from the repository's fixtures and moefy's own writers, so every seed is a
// valid input of the current format. Run by the build; arguments: source dir, seed dir.
#include <filesystem>
#include <fstream>
#include <iostream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cstring>

#include "io/dtype.h"
#include "io/gguf.h"
#include "io/safetensors.h"
#include "io/zip_reader.h"
#include "model/gguf_checkpoint.h"
#include "tokenizer/gguf_vocab.h"
#include "tokenizer/tokenizer.h"
#include "split/expert_plan.h"
#include "split/importance_file.h"

namespace fs = std::filesystem;
using nlohmann::json;
using namespace moefy;

static void put(const fs::path& p, const std::string& text) {
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << text;
}
static void copy_if(const fs::path& from, const fs::path& to) {
    if (!fs::exists(from)) return;
    fs::create_directories(to.parent_path());
    fs::copy_file(from, to, fs::copy_options::overwrite_existing);
}
static std::string slurp(const fs::path& p) {
    std::ifstream f(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

// GPT-2's byte -> printable code point map.
static std::string byte_char(int b) {
    int cp = b;
    if (!((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255))) {
        int n = 0;
        for (int x = 0; x < b; ++x)
            if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255))) ++n;
        cp = 256 + n;
    }
    std::string s;
    if (cp < 0x80) s += char(cp);
    else if (cp < 0x800) s += char(0xC0 | (cp >> 6)), s += char(0x80 | (cp & 0x3F));
    return s;
}

static json bpe_tokenizer() {
    json vocab = json::object();
    for (int b = 0; b < 256; ++b) vocab[byte_char(b)] = b;
    const std::vector<std::pair<std::string, std::string>> merges = {
        {"h", "e"}, {"l", "l"}, {"he", "ll"}, {"hell", "o"}, {"Ġ", "w"}, {"o", "r"}, {"Ġw", "or"}, {"l", "d"}, {"Ġwor", "ld"}};
    json m = json::array();
    int id = 256;
    for (const auto& [a, b] : merges) {
        m.push_back(a + " " + b);
        if (!vocab.contains(a + b)) vocab[a + b] = id++;
    }
    return {{"version", "1.0"},
            {"added_tokens", json::array({{{"id", id}, {"content", "<|end|>"}, {"special", true}, {"lstrip", false},
                                           {"rstrip", false}, {"single_word", false}, {"normalized", false}}})},
            {"normalizer", nullptr},
            {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}},
            {"post_processor", {{"type", "ByteLevel"}, {"trim_offsets", false}}},
            {"decoder", {{"type", "ByteLevel"}}},
            {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", m}}}};
}

static json metaspace_tokenizer() {
    json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}};
    for (int b = 0; b < 256; ++b) vocab[fmt::format("<0x{:02X}>", b)] = 3 + b;
    int id = 259;
    json merges = json::array();
    for (const char* p : {"▁", "h", "e", "l", "o", "w", "r", "d", "he", "ll", "hell", "hello", "▁hello", "▁w", "or", "▁wor", "ld", "▁world"})
        if (!vocab.contains(p)) vocab[p] = id++;
    for (const char* m : {"h e", "l l", "he ll", "hell o", "▁ hello", "▁ w", "o r", "▁w or", "l d", "▁wor ld"}) merges.push_back(m);
    return {{"version", "1.0"},
            {"added_tokens", json::array({{{"id", 1}, {"content", "<s>"}, {"special", true}, {"lstrip", false},
                                           {"rstrip", false}, {"single_word", false}, {"normalized", false}}})},
            {"normalizer", {{"type", "Sequence"}, {"normalizers", json::array({{{"type", "Prepend"}, {"prepend", "▁"}},
                                                                                {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "▁"}}})}}},
            {"pre_tokenizer", nullptr},
            {"post_processor", {{"type", "TemplateProcessing"},
                                {"single", json::array({{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
                                {"pair", json::array()},
                                {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}}},
            {"decoder", {{"type", "Sequence"}, {"decoders", json::array({{{"type", "Replace"}, {"pattern", {{"String", "▁"}}}, {"content", " "}},
                                                                         {{"type", "ByteFallback"}}, {{"type", "Fuse"}},
                                                                         {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}})}}},
            {"model", {{"type", "BPE"}, {"byte_fallback", true}, {"fuse_unk", true}, {"unk_token", "<unk>"}, {"vocab", vocab}, {"merges", merges}}}};
}

// A tiny GGUF model of llama.cpp's layout (H 32, 2 heads of 16, 1 KV head,
// vocabulary 16, one layer, FFN/expert width 32): `experts` 0 is dense llama,
// otherwise mixtral-style (llama + expert_count) or, with `shared`, deepseek.
// 2-D tensors in `type`, norms in f32; metadata `extra` appended (the tokenizer).
static void write_tiny_gguf(const fs::path& path, GgmlType type, int experts, int shared, std::vector<GgufKV> extra = {}) {
    const int64_t H = 32, heads = 2, D = 16, kv_heads = 1, V = 16, W = 32, E = experts;
    const std::string arch = shared ? "deepseek" : "llama", p = arch + ".";
    std::vector<GgufKV> kv = {{"general.architecture", GgufValue::str(arch)},
                              {p + "embedding_length", GgufValue::u32(H)},
                              {p + "block_count", GgufValue::u32(1)},
                              {p + "attention.head_count", GgufValue::u32(heads)},
                              {p + "attention.head_count_kv", GgufValue::u32(kv_heads)},
                              {p + "attention.layer_norm_rms_epsilon", GgufValue::f32(1e-5f)},
                              {p + "context_length", GgufValue::u32(64)},
                              {p + "feed_forward_length", GgufValue::u32(W)}};
    if (E) {
        kv.push_back({p + "expert_count", GgufValue::u32(uint32_t(E))});
        kv.push_back({p + "expert_used_count", GgufValue::u32(1)});
    }
    if (shared) {
        kv.push_back({p + "leading_dense_block_count", GgufValue::u32(0)});
        kv.push_back({p + "expert_feed_forward_length", GgufValue::u32(W)});
        kv.push_back({p + "expert_shared_count", GgufValue::u32(uint32_t(shared))});
    }
    for (auto& e : extra) kv.push_back(std::move(e));
    std::vector<GgufTensorSpec> specs = {{"token_embd.weight", type, {H, V}}, {"output_norm.weight", GgmlType::F32, {H}},
                                         {"output.weight", type, {H, V}},    {"blk.0.attn_norm.weight", GgmlType::F32, {H}},
                                         {"blk.0.ffn_norm.weight", GgmlType::F32, {H}}, {"blk.0.attn_q.weight", type, {H, heads * D}},
                                         {"blk.0.attn_k.weight", type, {H, kv_heads * D}}, {"blk.0.attn_v.weight", type, {H, kv_heads * D}},
                                         {"blk.0.attn_output.weight", type, {heads * D, H}}};
    if (!E) {
        for (const char* n : {"blk.0.ffn_gate.weight", "blk.0.ffn_up.weight"}) specs.push_back({n, type, {H, W}});
        specs.push_back({"blk.0.ffn_down.weight", type, {W, H}});
    } else {
        specs.push_back({"blk.0.ffn_gate_inp.weight", GgmlType::F32, {H, E}});
        for (const char* n : {"blk.0.ffn_gate_exps.weight", "blk.0.ffn_up_exps.weight"}) specs.push_back({n, type, {H, W, E}});
        specs.push_back({"blk.0.ffn_down_exps.weight", type, {W, H, E}});
        if (shared) {
            for (const char* n : {"blk.0.ffn_gate_shexp.weight", "blk.0.ffn_up_shexp.weight"}) specs.push_back({n, type, {H, W * shared}});
            specs.push_back({"blk.0.ffn_down_shexp.weight", type, {W * shared, H}});
        }
    }
    write_gguf(path.string(), kv, specs, [&](size_t i, ByteSink& sink) {
        const GgufTensorSpec& t = specs[i];
        int64_t n = 1;
        for (int64_t d : t.ne) n *= d;
        std::vector<float> f(static_cast<size_t>(n));
        for (int64_t k = 0; k < n; ++k) f[size_t(k)] = float((k * 7 + int64_t(i) * 3) % 19 - 9) / 64.0f;
        if (t.type == GgmlType::Q8_0) {
            Q8Sink q(sink, t.name);
            q.write(f.data(), f.size() * 4);
            q.finish();
        } else if (t.type == GgmlType::F32) {
            sink.write(f.data(), f.size() * 4);
        } else {
            std::vector<uint16_t> h(f.size());
            from_f32(t.type == GgmlType::BF16 ? DType::BF16 : DType::F16, f.data(), h.data(), f.size());
            sink.write(h.data(), h.size() * 2);
        }
    }, true);
    (void)open_gguf_checkpoint(path.string());  // the seed is a loadable model
}

int main(int argc, char** argv) {
    if (argc != 3) {
        std::cerr << "usage: make_seeds SOURCE_DIR SEED_DIR\n";
        return 2;
    }
    const fs::path src = argv[1], out = argv[2];
    const fs::path demo = src / "models/tinyllama-demo", shared = src / "../shared/fixtures";
    try {
        fs::remove_all(out);
        fs::create_directories(out);
        auto fill = [](const std::vector<TensorSpec>& specs) {
            return [specs](size_t i, ByteSink& s) {
                std::vector<uint8_t> b(specs[i].nbytes());
                for (size_t k = 0; k < b.size(); ++k) b[k] = uint8_t(k * 37 + i);
                s.write(b.data(), b.size());
            };
        };
        // safetensors: small files of every dtype; the demo's header with its data cut off.
        std::vector<TensorSpec> specs = {{"model.embed_tokens.weight", DType::BF16, {8, 4}},
                                         {"model.norm.weight", DType::F32, {4}},
                                         {"lm_head.weight", DType::F16, {8, 4}},
                                         {"scalar", DType::F32, {}}};
        fs::create_directories(out / "safetensors");
        write_safetensors((out / "safetensors/small.safetensors").string(), specs, fill(specs));
        std::vector<TensorSpec> one = {{"w", DType::F32, {0, 3}}};
        write_safetensors((out / "safetensors/empty-tensor.safetensors").string(), one, fill(one), {});
        if (fs::exists(demo / "model.safetensors")) {
            const std::string all = slurp(demo / "model.safetensors");
            uint64_t h = 0;
            std::memcpy(&h, all.data(), 8);
            put(out / "safetensors/demo-header-only.safetensors", all.substr(0, size_t(8 + h)));
        }
        // index: a sharded checkpoint's index (shards written in a scratch dir).
        const fs::path shards = out / "_shards";
        fs::create_directories(shards);
        std::vector<TensorSpec> ss = {{"a.weight", DType::F32, {4, 4}}, {"b.weight", DType::BF16, {8}}, {"c.weight", DType::F16, {2, 3}}};
        write_checkpoint_tensors(shards.string(), ss, fill(ss), 64);
        copy_if(shards / "model.safetensors.index.json", out / "safetensors_index/index.json");
        fs::remove_all(shards);
        // config.json
        copy_if(demo / "config.json", out / "config/demo.json");
        copy_if(shared / "stories260K/config.json", out / "config/stories260K.json");
        json base = json::parse(slurp(demo / "config.json"));
        json mix = base;
        mix["architectures"] = {"MixtralForCausalLM"}, mix["model_type"] = "mixtral", mix["num_local_experts"] = 4,
        mix["num_experts_per_tok"] = 2, mix["intermediate_size"] = 192;
        put(out / "config/mixtral.json", mix.dump(2));
        json lm = base;
        lm["architectures"] = {"LlamaMoEResidualForCausalLM"}, lm["num_experts"] = 2, lm["num_selects"] = 1,
        lm["size_experts"] = json::array(), lm["num_experts_residual"] = 1, lm["size_experts_residual"] = json::array(),
        lm["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}};
        for (int l = 0; l < 6; ++l) lm["size_experts"].push_back({384, 384}), lm["size_experts_residual"].push_back({192});
        put(out / "config/llama-moe-residual.json", lm.dump(2));
        json ds = base;
        ds["architectures"] = {"DeepseekForCausalLM"}, ds["n_routed_experts"] = 4, ds["num_experts_per_tok"] = 2,
        ds["moe_intermediate_size"] = 96, ds["n_shared_experts"] = 2;
        put(out / "config/deepseek.json", ds.dump(2));
        // plans: a partition and a plan with shared experts.
        ExpertPlan p;
        p.num_layers = 2, p.hidden_size = 4, p.intermediate_size = 8, p.ffn_fingerprint = "fnv1a64:0123456789abcdef";
        p.method = "random", p.params = {{"seed", 1}};
        p.layers = {{{{0, 2, 4, 6}, {1, 3, 5, 7}}, {}, json::object()}, {{{7, 6, 5, 4}, {3, 2, 1, 0}}, {}, json::object()}};
        fs::create_directories(out / "plan");
        p.save((out / "plan/random.json").string());
        ExpertPlan g = p;
        g.method = "gradient";
        g.layers = {{{{0, 1, 2}, {2, 3, 4}}, {{5, 6, 7}}, json::object()}, {{{0, 1}, {1, 2}}, {{3}}, json::object()}};
        g.save((out / "plan/gradient-shared.json").string());
        // importance: the layout write_importance gives (split/importance.h), written here
        // with the plain writer so that the seed maker links only the readers.
        {
            const int K = 2, L = 2, I = 8;
            std::vector<TensorSpec> is;
            for (int k = 0; k < K; ++k)
                for (int l = 0; l < L; ++l)
                    for (ImportanceTarget t : {ImportanceTarget::Up, ImportanceTarget::Gate})
                        is.push_back({importance_tensor_name(k, l, t), DType::F32, {I}});
            const std::map<std::string, std::string> meta = {
                {"format", "moefy-importance"}, {"version", "1"}, {"kind", "feature_change"}, {"kernel", "l1"},
                {"level", "sample"}, {"ctx", "16"}, {"max_tokens_per_cluster", "100"}, {"clusters", "2"},
                {"num_layers", "2"}, {"hidden_size", "4"}, {"intermediate_size", "8"},
                {"ffn_fingerprint", "fnv1a64:0123456789abcdef"}, {"model", "m"}, {"data", "d"}, {"ranks", "1"},
                {"tokens", "[10, 11]"}, {"windows", "[1, 1]"}, {"scores", "f64 sums / tokens, stored as F32"}};
            fs::create_directories(out / "importance");
            write_safetensors((out / "importance/small.safetensors").string(), is, [&](size_t i, ByteSink& s) {
                float v[I];
                for (int n = 0; n < I; ++n) v[n] = float(i + n) / 8.0f;
                s.write(v, sizeof v);
            }, meta);
            (void)read_importance((out / "importance/small.safetensors").string());  // the seed is valid
        }
        // tokenizer.json
        put(out / "tokenizer_json/bpe.json", bpe_tokenizer().dump());
        put(out / "tokenizer_json/metaspace.json", metaspace_tokenizer().dump());
        put(out / "bpe-tokenizer.json", bpe_tokenizer().dump());
        // encode: first byte picks the tokenizer.
        put(out / "tokenizer_encode/sp.txt", std::string("\x00", 1) + "Once upon a time, there was a little girl.");
        put(out / "tokenizer_encode/bpe.txt", "\x01hello world <|end|> héllo 世界");
        put(out / "tokenizer_encode/bad-utf8.txt", "\x00\xff\xfe abc \xc3");
        // SentencePiece models
        copy_if(demo / "tokenizer.model", out / "sentencepiece/demo.model");
        copy_if(shared / "stories260K/tokenizer.model", out / "sentencepiece/stories260K.model");
        // documents
        put(out / "documents/lines.jsonl", "{\"text\": \"Once upon a time.\"}\n\n{\"content\": \"Another one.\", \"id\": 3}\n");
        put(out / "documents/plain.txt", "A plain text document.\nWith two lines.\n");
        const std::string calib = slurp(src / "data/calib.jsonl");
        put(out / "documents/calib-head.jsonl", calib.substr(0, calib.find('\n', 2000) + 1));
        // GGUF: dense f32, mixtral bf16, deepseek q8_0 with a shared expert; tokenizers
        // (the BPE tokenizer.json embedded, stories260K's SentencePiece as llama keys) in tensor-less files.
        fs::create_directories(out / "gguf");
        write_tiny_gguf(out / "gguf/dense-f32.gguf", GgmlType::F32, 0, 0);
        write_tiny_gguf(out / "gguf/mixtral-bf16.gguf", GgmlType::BF16, 2, 0);
        write_tiny_gguf(out / "gguf/deepseek-q8.gguf", GgmlType::Q8_0, 2, 1);
        write_tiny_gguf(out / "gguf/dense-f16.gguf", GgmlType::F16, 0, 0);
        {
            const fs::path tdir = out / "_tok";
            fs::create_directories(tdir);
            put(tdir / "tokenizer.json", bpe_tokenizer().dump());
            std::vector<GgufKV> kv = {{"general.architecture", GgufValue::str("llama")}};
            (void)append_gguf_tokenizer(tdir.string(), 300, kv);
            write_gguf((out / "gguf/bpe-tokenizer.gguf").string(), kv, {}, [](size_t, ByteSink&) {}, true);
            (void)load_gguf_tokenizer(open_gguf((out / "gguf/bpe-tokenizer.gguf").string()));
            if (fs::exists(shared / "stories260K/tokenizer.model")) {
                fs::remove(tdir / "tokenizer.json");
                copy_if(shared / "stories260K/tokenizer.model", tdir / "tokenizer.model");
                std::vector<GgufKV> sp = {{"general.architecture", GgufValue::str("llama")}};
                (void)append_gguf_tokenizer(tdir.string(), 512, sp);
                write_gguf((out / "gguf/sp-tokenizer.gguf").string(), sp, {}, [](size_t, ByteSink&) {}, true);
                (void)load_gguf_tokenizer(open_gguf((out / "gguf/sp-tokenizer.gguf").string()));
            }
            fs::remove_all(tdir);
        }
        // pickle: first byte 0 -> the data.pkl of LLaMA-MoE's torch.save files, 1 -> the whole files.
        for (const char* f : {"tinyllama-demo-8Expert-Split-Random/layers.0.mlp.up_proj.weight",
                              "Gradients12/tinyllama-demo-Gradients-l1_norm-sample-feature_change/0/layers.0.mlp.up_proj.weight.change"}) {
            const fs::path from = src / "tests/data/llama_moe" / f;
            if (!fs::exists(from)) continue;
            const std::string bytes = slurp(from), stem = from.filename().string();
            put(out / "pickle" / (stem + ".zip"), std::string("\x01", 1) + bytes);
            const ZipArchive z = ZipArchive::from_memory(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), from.string());
            for (const ZipEntry& e : z.entries())
                if (e.name.size() >= 8 && e.name.compare(e.name.size() - 8, 8, "data.pkl") == 0) {
                    const auto b = z.bytes(e);
                    put(out / "pickle" / (stem + ".pkl"), std::string("\x00", 1) + std::string(b.begin(), b.end()));
                }
        }
    } catch (const std::exception& e) {
        std::cerr << "make_seeds: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
