#pragma once
// Byte-pair-encoding model of a Hugging Face tokenizer.json ("model": {"type": "BPE"}).
// Merging follows HF tokenizers exactly: repeatedly apply the lowest-rank merge
// present in the word, leftmost first, via a min-heap over (rank, position).
#include <array>
#include <cstdint>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace moefy {

// Transparent hash so that string_view lookups do not allocate.
struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using TokenMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

struct BpeMerge {
    int32_t rank;    // position in the merges list: lower merges first
    int32_t result;  // id of the concatenated token
};

struct BpeModel {
    // Token strings as the model sees them: raw bytes for byte-level
    // vocabularies (GPT-2 alphabet decoded at load), UTF-8 with U+2581 for
    // SentencePiece-style ones.
    TokenMap vocab;
    std::vector<std::string> id_to_token;  // "" where an id has no model token
    std::unordered_map<uint64_t, BpeMerge> merges;  // key: left << 32 | right
    std::array<int32_t, 256> byte_ids{};   // id of "<0xXX>", -1 when absent
    bool byte_level = false;     // initial symbols are single bytes
    bool byte_fallback = false;  // chars missing from vocab become <0xXX> tokens
    bool ignore_merges = false;  // a piece that is itself a token is emitted whole
    bool fuse_unk = false;       // consecutive unknown chars become one unk
    int32_t unk_id = -1;
    // SentencePiece-style vocabularies where no token has U+2581 after another
    // char: merges can then never cross the point before a "▁" that follows a
    // non-"▁" char, so a long word may be cut there with identical output
    // (Mistral has no pre-tokenizer: a whole text segment is one word). Off
    // with ignore_merges, whose whole-word lookup would differ per part.
    bool split_at_metaspace = false;

    // Appends the ids of one pre-tokenized piece; the entry point.
    void encode(std::string_view word, std::vector<int32_t>& out) const;

    // Appends the ids of one pre-tokenized piece (a "word") to out.
    void encode_word(std::string_view word, std::vector<int32_t>& out) const;

    // As encode_word, but words seen before come from a cache (bounded, thread-safe).
    void encode_word_cached(std::string_view word, std::vector<int32_t>& out) const;

private:
    void initial_symbols(std::string_view word, std::vector<int32_t>& syms) const;
    void merge_symbols(std::vector<int32_t>& syms) const;

    mutable std::shared_mutex cache_mu_;
    mutable std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> cache_;
};

// Builds the model from tokenizer.json's "model" object (its flags) and its
// vocab / merges, read flat by read_tokenizer_json; both vectors are consumed.
// byte_level: the vocabulary is written in the GPT-2 byte alphabet (a
// ByteLevel pre-tokenizer is present) and is mapped back to raw bytes.
// `path` names the file in errors.
void load_bpe(BpeModel& bpe, const nlohmann::json& model, std::vector<std::pair<std::string, int64_t>>& vocab,
              std::vector<std::pair<std::string, std::string>>& merges, bool byte_level, const std::string& path);

}  // namespace moefy
