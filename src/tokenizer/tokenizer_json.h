#pragma once
// Streaming (SAX) reader for tokenizer.json. The model's vocab and merges are
// most of the file (LLaMA-3: 128k entries + 280k merges in 9 MB); building
// them as a JSON DOM costs several times the parse itself, so they go straight
// into flat vectors and only the small remainder becomes a DOM.
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace moefy {

struct TokenizerJson {
    nlohmann::json rest;  // the document with model.vocab / model.merges left out
    std::vector<std::pair<std::string, int64_t>> vocab;       // model.vocab, file order
    std::vector<std::pair<std::string, std::string>> merges;  // model.merges, rank order
    bool has_vocab = false, has_merges = false;
};

// Throws moefy::Error naming the path on I/O, syntax or structure errors
// (e.g. a merge that is neither "a b" nor ["a", "b"]).
TokenizerJson read_tokenizer_json(const std::string& path);
// The same from the file's text; `name` is used in errors.
TokenizerJson parse_tokenizer_json(const std::string& text, const std::string& name);

}  // namespace moefy
