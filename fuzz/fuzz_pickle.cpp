// The restricted unpickler and the torch.save reader around it. The first byte
// picks the entry point: even -> parse_pickle on the rest (persistent ids are
// answered by a loader that hands out zero bytes of the asked size, capped), odd
// -> read_torch_save_memory (ZIP directory, entries, CRCs, data.pkl, storages).
#include <vector>

#include "fuzz_util.h"
#include "io/pickle.h"
#include "io/torch_save.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size == 0) return 0;
    const uint8_t* body = data + 1;
    const size_t n = size - 1;
    if (data[0] % 2 == 0) {
        static std::vector<uint8_t> zeros(size_t(1) << 20);
        const moefy::StorageLoader storages = [](const std::string&, moefy::ElemType t, int64_t numel) {
            if (numel < 0 || uint64_t(numel) * moefy::elem_size(t) > zeros.size()) moefy::fail("fuzz: storage too large");
            return std::span<const uint8_t>(zeros.data(), size_t(numel) * moefy::elem_size(t));
        };
        FUZZ_EXPECT_ERRORS({ (void)moefy::parse_pickle(body, n, "fuzz.pkl", storages); });
    } else {
        FUZZ_EXPECT_ERRORS({ (void)moefy::read_torch_save_memory(body, n, "fuzz.pt"); });
    }
    return 0;
}
