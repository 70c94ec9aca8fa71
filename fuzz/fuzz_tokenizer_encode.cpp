// Encode and decode of fuzzed text with real tokenizers: the demo model's
// SentencePiece model and a small byte-level BPE tokenizer.json (from the seed
// maker). The first byte picks the tokenizer; the rest is text (invalid UTF-8
// included) and, read as 16-bit ids, a sequence to decode.
#include <cstdlib>
#include <vector>

#include "fuzz_util.h"
#include "tokenizer/tokenizer.h"

#ifndef MOEFY_SOURCE_DIR
#error "MOEFY_SOURCE_DIR must be defined"
#endif

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static const std::unique_ptr<moefy::Tokenizer> toks[2] = {
        moefy::Tokenizer::from_dir(MOEFY_SOURCE_DIR "/models/tinyllama-demo"),
        moefy::Tokenizer::from_file(MOEFY_FUZZ_SEED_DIR "/bpe-tokenizer.json"),
    };
    if (size < 1) return 0;
    const moefy::Tokenizer& tok = *toks[data[0] & 1];
    const std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
    FUZZ_EXPECT_ERRORS({
        const auto ids = tok.encode(text, true);
        (void)tok.decode(ids);
    });
    std::vector<int32_t> ids;
    for (size_t i = 1; i + 1 < size; i += 2) ids.push_back(int32_t(data[i] | (data[i + 1] << 8)) % (tok.vocab_size() + 8));
    FUZZ_EXPECT_ERRORS((void)tok.decode(ids));
    return 0;
}
