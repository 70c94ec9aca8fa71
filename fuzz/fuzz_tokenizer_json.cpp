// tokenizer.json: load (normalizers, pre-tokenizers, BPE model, added tokens,
// post-processor, decoders), then encode and decode a few fixed texts and the
// ids of the result, so that a tokenizer that loads is one that runs.
#include "fuzz_util.h"
#include "tokenizer/hf_tokenizer.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_settings.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string path = fuzz::write_input(data, size, "tokenizer.json");
    FUZZ_EXPECT_ERRORS({
        auto tok = moefy::load_hf_tokenizer(path, moefy::TokenizerSettings{});
        for (const char* text : {"Hello world", " a  b\n\tc ", "héllo 世界 🙂", "<s>x</s>", ""}) {
            const auto ids = tok->encode(text, true);
            (void)tok->decode(ids);
        }
    });
    return 0;
}
