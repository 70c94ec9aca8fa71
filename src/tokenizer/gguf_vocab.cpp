#include "tokenizer/gguf_vocab.h"

#include <algorithm>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "io/json.h"
#include "io/output_dir.h"
#include "tokenizer/hf_tokenizer.h"
#include "tokenizer/sp_model.h"
#include "tokenizer/sp_tokenizer.h"
#include "tokenizer/tokenizer_json.h"
#include "tokenizer/tokenizer_settings.h"

namespace moefy {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string opt_file(const std::string& dir, const char* name) {
    const fs::path p = fs::path(dir) / name;
    return fs::is_regular_file(p) ? p.string() : std::string();
}

void put(std::vector<GgufKV>& kv, std::string key, GgufValue v) { kv.push_back({std::move(key), std::move(v)}); }

// The LLaMA-3 pre-tokenizer split regex, as tokenizer.json spells it; llama.cpp
// names this pre-tokenizer "llama-bpe".
bool is_llama3_regex(const std::string& re) {
    return re.find("(?i:'s|'t|'re|'ve|'m|'ll|'d)") != std::string::npos && re.find("\\p{N}{1,3}") != std::string::npos;
}

std::string bpe_pre_name(const json& pre, const std::string& where) {
    std::vector<const json*> steps;
    if (json_get_or(pre, "type", "", where + ": pre_tokenizer") == "Sequence" && pre.contains("pretokenizers"))
        for (const json& s : pre.at("pretokenizers")) steps.push_back(&s);
    else if (pre.is_object())
        steps.push_back(&pre);
    bool byte_level = false, byte_level_regex = false;
    std::string split;
    for (const json* s : steps) {
        const std::string type = json_get_or(*s, "type", "", where + ": pre_tokenizer");
        if (type == "ByteLevel") byte_level = true, byte_level_regex = json_get_or(*s, "use_regex", true, where + ": pre_tokenizer");
        else if (type == "Split" && s->contains("pattern"))
            split = json_get_or(s->at("pattern"), "Regex", "", where + ": pre_tokenizer pattern");
    }
    if (!byte_level) fail("{}: pre-tokenizer is not byte-level; GGUF \"gpt2\" vocabularies need byte-level BPE", where);
    if (!split.empty() && is_llama3_regex(split)) return "llama-bpe";
    if (split.empty() && byte_level_regex) return "gpt-2";
    fail("{}: the pre-tokenizer split regex is neither LLaMA-3's nor GPT-2's; llama.cpp identifies pre-tokenizers by "
         "name, and moefy knows only \"llama-bpe\" and \"gpt-2\"",
         where);
}

std::string bytes_of(const GgufValue& v) {
    std::string s(v.ints.size(), '\0');
    for (size_t i = 0; i < v.ints.size(); ++i) s[i] = char(uint8_t(v.ints[i]));
    return s;
}

}  // namespace

GgufVocabInfo append_gguf_tokenizer(const std::string& model_dir, int vocab_size, std::vector<GgufKV>& kv) {
    GgufVocabInfo info;
    const std::string sp_path = opt_file(model_dir, "tokenizer.model");
    const std::string tj_path = opt_file(model_dir, "tokenizer.json");
    const std::string tc_path = opt_file(model_dir, "tokenizer_config.json");
    if (sp_path.empty() && tj_path.empty()) fail("{}: no tokenizer.model or tokenizer.json to embed in the GGUF file", model_dir);
    // moefy's own tokenizer of the directory: its special ids and BOS/EOS policy go into the file.
    const auto tok = Tokenizer::from_dir(model_dir);
    const TokenizerSettings settings = read_tokenizer_settings(tc_path, opt_file(model_dir, "config.json"));
    const std::vector<int32_t> probe = tok->encode("a", true);
    const bool adds_bos = !probe.empty() && tok->bos_id() >= 0 && probe.front() == tok->bos_id();
    const bool adds_eos = probe.size() > 1 && tok->eos_id() >= 0 && probe.back() == tok->eos_id();

    std::vector<std::string> tokens;
    std::vector<int64_t> types;
    if (!sp_path.empty()) {
        // As llama.cpp's converter: SentencePiece first when the directory has one.
        const SpVocab v = read_sp_model(sp_path);
        info.model = "llama";
        tokens = v.pieces;
        types.assign(v.types.begin(), v.types.end());
        std::vector<double> scores(v.scores.begin(), v.scores.end());
        if (int(tokens.size()) > vocab_size)
            fail("{}: {} pieces but the embedding table has only {} rows", sp_path, tokens.size(), vocab_size);
        for (int i = int(tokens.size()); i < vocab_size; ++i) {
            tokens.push_back(fmt::format("[PAD{}]", i));
            scores.push_back(-1000.0);
            types.push_back(int64_t(SpPieceType::Unused));
        }
        put(kv, "tokenizer.ggml.model", GgufValue::str("llama"));
        put(kv, "tokenizer.ggml.tokens", GgufValue::str_array(tokens));
        put(kv, "tokenizer.ggml.scores", GgufValue::f32_array(std::move(scores)));
        put(kv, "tokenizer.ggml.token_type", GgufValue::i32_array(types));
        if (v.unk_id >= 0) put(kv, "tokenizer.ggml.unknown_token_id", GgufValue::u32(uint32_t(v.unk_id)));
        if (v.pad_id >= 0) put(kv, "tokenizer.ggml.padding_token_id", GgufValue::u32(uint32_t(v.pad_id)));
        put(kv, "tokenizer.ggml.add_space_prefix", GgufValue::boolean(v.add_dummy_prefix));
    } else {
        const TokenizerJson tj = read_tokenizer_json(tj_path);
        const json& model = tj.rest.contains("model") ? tj.rest.at("model") : json();
        if (!model.is_object() || json_get_or(model, "type", "BPE", tj_path + ": model") != "BPE")
            fail("{}: GGUF embedding supports BPE tokenizer.json models only", tj_path);
        info.pre = bpe_pre_name(tj.rest.contains("pre_tokenizer") ? tj.rest.at("pre_tokenizer") : json(), tj_path);
        info.model = "gpt2";
        int64_t n = vocab_size;
        for (const auto& [t, id] : tj.vocab) n = std::max(n, id + 1);
        const json added = tj.rest.contains("added_tokens") ? tj.rest.at("added_tokens") : json::array();
        if (!added.is_array()) fail("{}: added_tokens must be a list", tj_path);
        const std::string at = tj_path + ": added_tokens";
        for (const json& a : added) n = std::max<int64_t>(n, json_get_or(a, "id", int64_t(0), at) + 1);
        if (n > vocab_size) fail("{}: token ids reach {} but the embedding table has only {} rows", tj_path, n - 1, vocab_size);
        tokens.assign(size_t(vocab_size), "");
        types.assign(size_t(vocab_size), 0);
        for (const auto& [t, id] : tj.vocab) {
            if (id < 0) fail("{}: negative token id for '{}'", tj_path, t);
            tokens[size_t(id)] = t, types[size_t(id)] = int64_t(SpPieceType::Normal);
        }
        for (const json& a : added) {
            const int64_t id = json_get_or(a, "id", int64_t(-1), at);
            if (id < 0) continue;
            tokens[size_t(id)] = json_get_or(a, "content", "", at);
            types[size_t(id)] = int64_t(json_get_or(a, "special", false, at) ? SpPieceType::Control : SpPieceType::UserDefined);
        }
        for (size_t i = 0; i < tokens.size(); ++i)
            if (types[i] == 0) tokens[i] = fmt::format("[PAD{}]", i), types[i] = int64_t(SpPieceType::Unused);
        std::vector<std::string> merges;
        merges.reserve(tj.merges.size());
        for (const auto& [a, b] : tj.merges) merges.push_back(a + " " + b);
        info.merges = merges.size();
        put(kv, "tokenizer.ggml.model", GgufValue::str("gpt2"));
        put(kv, "tokenizer.ggml.pre", GgufValue::str(info.pre));
        put(kv, "tokenizer.ggml.tokens", GgufValue::str_array(tokens));
        put(kv, "tokenizer.ggml.token_type", GgufValue::i32_array(types));
        put(kv, "tokenizer.ggml.merges", GgufValue::str_array(std::move(merges)));
    }
    if (tok->bos_id() >= 0) put(kv, "tokenizer.ggml.bos_token_id", GgufValue::u32(uint32_t(tok->bos_id())));
    if (tok->eos_id() >= 0) put(kv, "tokenizer.ggml.eos_token_id", GgufValue::u32(uint32_t(tok->eos_id())));
    put(kv, "tokenizer.ggml.add_bos_token", GgufValue::boolean(adds_bos));
    put(kv, "tokenizer.ggml.add_eos_token", GgufValue::boolean(adds_eos));
    if (!tc_path.empty()) {
        const json tc = read_json_file(tc_path);
        if (tc.is_object() && tc.contains("chat_template")) {
            const json& ct = tc.at("chat_template");
            std::string tmpl;
            if (ct.is_string()) tmpl = ct.get<std::string>();
            else if (ct.is_array())  // [{name, template}]: the default one, as llama.cpp's converter
                for (const json& e : ct)
                    if (json_get_or(e, "name", "", tc_path + ": chat_template") == "default")
                        tmpl = json_get_or(e, "template", "", tc_path + ": chat_template");
            if (!tmpl.empty()) {
                put(kv, "tokenizer.chat_template", GgufValue::str(tmpl));
                info.chat_template = true;
            }
        }
    }
    // The file moefy tokenizes with, verbatim (see the header).
    if (!tj_path.empty()) {
        put(kv, "moefy.tokenizer.json", GgufValue::str(read_text_file(tj_path)));
    } else {
        const std::string bytes = read_text_file(sp_path);
        GgufValue v;
        v.type = GgufType::Array;
        v.elem = GgufType::U8;
        v.ints.assign(bytes.begin(), bytes.end());
        for (int64_t& b : v.ints) b = int64_t(uint8_t(b));
        put(kv, "moefy.tokenizer.sentencepiece", std::move(v));
    }
    (void)settings;
    info.tokens = tokens.size();
    return info;
}

std::unique_ptr<Tokenizer> load_gguf_tokenizer(const GgufFile& g) {
    TokenizerSettings s;
    if (g.find("tokenizer.ggml.add_bos_token")) s.add_bos = g.get_bool("tokenizer.ggml.add_bos_token", true);
    if (g.find("tokenizer.ggml.add_eos_token")) s.add_eos = g.get_bool("tokenizer.ggml.add_eos_token", false);
    if (g.find("tokenizer.ggml.bos_token_id")) s.bos_id = int32_t(g.get_int("tokenizer.ggml.bos_token_id"));
    if (g.find("tokenizer.ggml.eos_token_id")) s.eos_id = int32_t(g.get_int("tokenizer.ggml.eos_token_id"));
    const std::string where = g.name() + " (embedded tokenizer)";
    if (const GgufValue* v = g.find("moefy.tokenizer.sentencepiece")) {
        if (!v->is_array() || v->elem != GgufType::U8) fail("{}: moefy.tokenizer.sentencepiece is not a u8 array", g.name());
        return load_sentencepiece_proto(bytes_of(*v), where, s);
    }
    if (g.find("moefy.tokenizer.json")) return load_hf_tokenizer_text(g.get_str("moefy.tokenizer.json"), where, s);
    const std::string model = g.get_str("tokenizer.ggml.model");
    if (model != "llama")
        fail("{}: tokenizer.ggml.model '{}' without moefy's embedded tokenizer.json: moefy rebuilds only SentencePiece "
             "(\"llama\") vocabularies from GGUF keys",
             g.name(), model);
    SpVocab sp;
    const GgufValue& toks = g.get("tokenizer.ggml.tokens");
    const GgufValue& scores = g.get("tokenizer.ggml.scores");
    const GgufValue& types = g.get("tokenizer.ggml.token_type");
    if (!toks.is_array() || toks.elem != GgufType::String) fail("{}: tokenizer.ggml.tokens is not a string array", g.name());
    const size_t n = toks.strs.size();
    if (scores.reals.size() != n || types.ints.size() != n)
        fail("{}: tokenizer.ggml.tokens, scores and token_type have {}, {} and {} entries", g.name(), n, scores.reals.size(),
             types.ints.size());
    sp.pieces = toks.strs;
    for (size_t i = 0; i < n; ++i) {
        sp.scores.push_back(float(scores.reals[i]));
        const int64_t t = types.ints[i];
        if (t < 1 || t > 6) fail("{}: token {} has unknown type {}", g.name(), i, t);
        sp.types.push_back(int32_t(t));
        if (t == int64_t(SpPieceType::Byte)) sp.byte_fallback = true;
    }
    sp.model_type = 2;  // llama.cpp merges SentencePiece pieces by score, as BPE
    sp.unk_id = int32_t(g.get_int("tokenizer.ggml.unknown_token_id", 0));
    sp.bos_id = int32_t(g.get_int("tokenizer.ggml.bos_token_id", 1));
    sp.eos_id = int32_t(g.get_int("tokenizer.ggml.eos_token_id", 2));
    sp.pad_id = int32_t(g.get_int("tokenizer.ggml.padding_token_id", -1));
    sp.normalizer_name = "identity";
    sp.add_dummy_prefix = g.get_bool("tokenizer.ggml.add_space_prefix", true);
    sp.remove_extra_whitespaces = false;
    return load_sentencepiece_proto(serialize_sp_model(sp), where, s);
}

}  // namespace moefy
