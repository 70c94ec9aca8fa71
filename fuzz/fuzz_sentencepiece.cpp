// SentencePiece model files: moefy's loader (which hands the bytes to
// libsentencepiece and then reads its pieces and special ids), then a short encode/decode.
#include "fuzz_util.h"
#include "tokenizer/sp_tokenizer.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_settings.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string path = fuzz::write_input(data, size, "tokenizer.model");
    FUZZ_EXPECT_ERRORS({
        auto tok = moefy::load_sentencepiece(path, moefy::TokenizerSettings{});
        const auto ids = tok->encode("Hello world, héllo", true);
        (void)tok->decode(ids);
    });
    return 0;
}
