#pragma once
// Text <-> token ids for LLaMA-family models. Two implementations behind one
// interface: SentencePiece tokenizer.model files (through libsentencepiece)
// and Hugging Face tokenizer.json BPE files (byte-level as in LLaMA-3, or
// SentencePiece-style with byte fallback as in Mistral / LLaMA-2 conversions).
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace moefy {

class Tokenizer {
public:
    virtual ~Tokenizer() = default;
    // Picks the implementation from the files in a model directory:
    // tokenizer.json if present, else tokenizer.model. Reads
    // tokenizer_config.json (add_bos_token / add_eos_token, bos/eos tokens) and
    // config.json (bos_token_id / eos_token_id) when present. A GGUF file
    // instead of a directory: its embedded tokenizer (tokenizer/gguf_vocab.h).
    static std::unique_ptr<Tokenizer> from_dir(const std::string& model_dir);
    // Explicit files: a .model or a .json; tokenizer_config_json may be "".
    static std::unique_ptr<Tokenizer> from_file(const std::string& path,
                                                const std::string& tokenizer_config_json = "");

    // Encodes UTF-8 text; add_special: prepend BOS / append EOS as the
    // tokenizer's settings say. Throws moefy::Error on invalid UTF-8.
    virtual std::vector<int32_t> encode(std::string_view text, bool add_special) const = 0;
    // Skips special/control tokens; throws on ids outside [0, vocab_size).
    virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
    // One token's text for streaming output: a word-initial piece keeps its
    // leading space, a byte token yields its raw byte (so a multi-byte char
    // can arrive split over several calls), special/control tokens yield "".
    virtual std::string decode_token(int32_t id) const = 0;
    virtual int vocab_size() const = 0;
    virtual int bos_id() const = 0;  // -1 if none
    virtual int eos_id() const = 0;  // -1 if none
};

}  // namespace moefy
