// GGUF: the header validator on arbitrary bytes (magic, version, counts, keys,
// value and array types, alignment, tensor infos, offsets, overlaps), then what
// moefy builds from an accepted file: every tensor read as f32, the tokenizer
// (SentencePiece rebuilt from the llama keys, or the embedded tokenizer.json)
// encoding and decoding, and the file opened as a checkpoint (metadata -> HF
// config, tensor shapes checked against it, q/k un-permuted, q8_0 dequantised).
#include <vector>

#include "fuzz_util.h"
#include "io/gguf.h"
#include "model/gguf_checkpoint.h"
#include "tokenizer/gguf_vocab.h"
#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    bool parsed = false;
    FUZZ_EXPECT_ERRORS({
        const moefy::GgufFile g = moefy::parse_gguf(data, size, "fuzz.gguf");
        parsed = true;
        for (const auto& kv : g.kv()) (void)kv.value.to_string();
        std::vector<float> buf;
        for (const auto& t : g.tensors()) {
            const int64_t n = t.numel(), cols = t.ne.empty() ? 1 : t.ne[0];
            if (n > (int64_t(1) << 20) || cols <= 0) continue;
            buf.resize(size_t(n));
            moefy::gguf_read_rows_f32(t, 0, n / cols, buf.data());
        }
        auto tok = moefy::load_gguf_tokenizer(g);
        for (const char* text : {"Hello world", " a  b\n\tc ", "héllo 世界 🙂", ""}) (void)tok->decode(tok->encode(text, true));
    });
    if (!parsed) return 0;
    const std::string path = fuzz::write_input(data, size, "model.gguf");
    FUZZ_EXPECT_ERRORS({
        const moefy::Checkpoint ck = moefy::open_gguf_checkpoint(path);
        for (const std::string& name : ck.tensors->names()) {
            const moefy::TensorView& t = ck.tensors->get(name);
            if (t.numel() <= (int64_t(1) << 20)) (void)ck.tensors->read_f32(name);
        }
    });
    return 0;
}
