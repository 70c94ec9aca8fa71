#pragma once
// Hugging Face tokenizer.json with a BPE model, implemented here (no Rust
// tokenizers library on the target machines). Pipeline, as in HF tokenizers:
//   added-token split (raw text) -> normalizer (per segment) -> pre-tokenizer
//   -> BPE per piece -> post-processor (BOS/EOS template)
// and for decode: ids -> token strings (special ones skipped) -> decoder chain.
// Supported components: normalizers Sequence/Prepend/Replace; pre-tokenizers
// Sequence/Split/ByteLevel/Metaspace; decoders Sequence/ByteLevel/Replace/
// ByteFallback/Fuse/Strip/Metaspace; post-processors ByteLevel/TemplateProcessing/
// Sequence. Anything else fails at load, naming the field.
#include <memory>
#include <string>

#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_settings.h"

namespace moefy {

// add_bos / add_eos in the settings, when present, override the
// post-processor template (as transformers' LlamaTokenizerFast does);
// otherwise the template alone decides.
std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::string& path, const TokenizerSettings& settings);
// The same from the text of a tokenizer.json (e.g. embedded in a GGUF file).
std::unique_ptr<Tokenizer> load_hf_tokenizer_text(const std::string& text, const std::string& name,
                                                  const TokenizerSettings& settings);

}  // namespace moefy
