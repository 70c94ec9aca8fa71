#pragma once
// Tokenizers in GGUF files, both ways.
//
// Writing: the tokenizer of a model directory as the tokenizer.ggml.* keys
// llama.cpp reads (as its convert_hf_to_gguf.py writes them): a SentencePiece
// tokenizer.model as model "llama" (tokens, scores, token types, special ids,
// add_bos/add_eos, add_space_prefix), else a byte-level BPE tokenizer.json as
// model "gpt2" (tokens, token types, merges, and the pre-tokenizer name: "llama-bpe"
// for the LLaMA-3 split regex, "gpt-2" for GPT-2's), plus tokenizer.chat_template
// when tokenizer_config.json has one. The file moefy itself tokenizes with is also
// embedded verbatim (moefy.tokenizer.sentencepiece as u8 array, or
// moefy.tokenizer.json as string), so moefy's tokens from the GGUF are exactly
// its tokens from the directory; llama.cpp ignores those keys.
//
// Reading: the embedded file when present; otherwise a SentencePiece model is
// rebuilt from the "llama" keys (BPE by score, identity normalizer). GGUF "gpt2"
// vocabularies without the embedded tokenizer.json are refused by name.
#include <memory>
#include <string>
#include <vector>

#include "io/gguf.h"
#include "tokenizer/tokenizer.h"

namespace moefy {

struct GgufVocabInfo {
    std::string model;  // "llama" | "gpt2"
    std::string pre;    // gpt2 pre-tokenizer name; "" for llama
    size_t tokens = 0;  // after padding to vocab_size
    size_t merges = 0;
    bool chat_template = false;
};

// Appends the tokenizer keys for `model_dir` whose embedding table has
// `vocab_size` rows (the token list is padded with "[PAD<i>]" unused tokens up
// to it, as llama.cpp's converter does). Throws naming the file when the
// tokenizer cannot be represented.
GgufVocabInfo append_gguf_tokenizer(const std::string& model_dir, int vocab_size, std::vector<GgufKV>& kv);

std::unique_ptr<Tokenizer> load_gguf_tokenizer(const GgufFile& g);

}  // namespace moefy
