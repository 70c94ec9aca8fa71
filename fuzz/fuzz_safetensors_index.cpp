// model.safetensors.index.json: the fuzzed index beside two small valid shards
// (written once with moefy's own writer), opened as a checkpoint directory.
#include <filesystem>

#include "fuzz_util.h"
#include "io/safetensors.h"

static void write_shards(const std::string& dir) {
    using namespace moefy;
    std::vector<TensorSpec> specs = {{"a.weight", DType::F32, {4, 4}}, {"b.weight", DType::BF16, {8}},
                                     {"c.weight", DType::F16, {2, 3}}};
    write_checkpoint_tensors(dir, specs, [&](size_t i, ByteSink& s) {
        std::vector<uint8_t> z(specs[i].nbytes(), 0x3c);
        s.write(z.data(), z.size());
    }, 64);
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static const std::string dir = [] {
        std::string d = fuzz::scratch_dir() + "/ckpt";
        std::filesystem::create_directories(d);
        write_shards(d);
        return d;
    }();
    fuzz::write_input(data, size, "ckpt/model.safetensors.index.json");
    FUZZ_EXPECT_ERRORS({
        auto store = moefy::TensorStore::open_dir(dir);
        for (const std::string& n : store->names()) (void)store->get(n).nbytes;
        (void)store->total_bytes();
    });
    return 0;
}
