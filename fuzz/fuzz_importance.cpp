// Importance files (safetensors + metadata): read_importance on arbitrary bytes.
#include "fuzz_util.h"
#include "split/importance_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string path = fuzz::write_input(data, size, "importance.safetensors");
    FUZZ_EXPECT_ERRORS({
        const moefy::ImportanceFile f = moefy::read_importance(path);
        (void)f.clusters;
    });
    return 0;
}
