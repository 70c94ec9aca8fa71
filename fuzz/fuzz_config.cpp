// config.json: depth-capped JSON, then every field check of ModelConfig::parse.
#include "fuzz_util.h"
#include "io/json.h"
#include "model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    FUZZ_EXPECT_ERRORS({
        const auto j = moefy::parse_json(fuzz::as_text(data, size), "config.json");
        const moefy::ModelConfig c = moefy::ModelConfig::parse(j, "config.json");
        (void)c.is_moe();
    });
    return 0;
}
