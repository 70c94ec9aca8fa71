#pragma once
// SentencePiece tokenizer.model through libsentencepiece (the library LLaMA-1/2
// were trained with, so its normalizer quirks come for free).
#include <memory>
#include <string>

#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_settings.h"

namespace moefy {

// add_bos defaults to true and add_eos to false (LlamaTokenizer's defaults)
// when the settings do not say; bos/eos ids come from the settings' token
// strings, then config.json ids, then the model's own bos/eos pieces.
std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& path, const TokenizerSettings& settings);
// The same from the bytes of a serialized ModelProto (e.g. embedded in a GGUF
// file); `name` is used in errors.
std::unique_ptr<Tokenizer> load_sentencepiece_proto(const std::string& proto, const std::string& name,
                                                    const TokenizerSettings& settings);

}  // namespace moefy
