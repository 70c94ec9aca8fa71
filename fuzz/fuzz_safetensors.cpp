// safetensors: the whole-file validator on arbitrary bytes (header length,
// JSON, dtypes, shapes x dtype without overflow, offsets, overlaps), then every
// accepted tensor read as f32 so an accepted view is also a readable one.
#include <vector>

#include "fuzz_util.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    FUZZ_EXPECT_ERRORS({
        std::map<std::string, std::string> meta;
        const auto tensors = moefy::parse_safetensors(data, size, "fuzz.safetensors", &meta);
        std::vector<float> buf;
        for (const auto& t : tensors) {
            const size_t n = t.nbytes / moefy::dtype_size(t.dtype);
            if (n > (size_t(1) << 20)) continue;
            buf.resize(n);
            moefy::to_f32(t.dtype, t.data, buf.data(), n);
            (void)t.numel();
            (void)t.shape_str();
        }
    });
    return 0;
}
