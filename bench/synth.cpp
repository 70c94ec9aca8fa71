// bench_synth: writes a synthetic BF16 LLaMA checkpoint (random weights, the
// shapes of a real model) for the benchmarks that run the CLI or a peer
// runtime on files: bench/peer_llama_cpp.sh, bench/build_7b.sh.
//
//   bench_synth DIR [--shape tinyllama|llama2-7b] [--layers N] [--experts E --top-k K] [--tokenizer FILE]
//
// tinyllama: hidden 2048, FFN 5632, 22 layers, 32 heads / 4 kv heads, vocab 32000.
// llama2-7b: hidden 4096, FFN 11008, 32 layers, 32 heads / 32 kv heads, vocab 32000.
// --experts: the same shape cut into a Mixtral-layout MoE (random router).
// --tokenizer: a SentencePiece tokenizer.model (32000 pieces) copied in, so
// the checkpoint can be converted to GGUF and read text.
#include <cstdlib>
#include <filesystem>
#include <string>

#include <fmt/format.h>

#include "bench_util.h"

using namespace moefy::bench;
namespace fs = std::filesystem;

int main(int argc, char** argv) {
    if (argc < 2 || argv[1][0] == '-') {
        fmt::print(stderr, "usage: bench_synth DIR [--shape tinyllama|llama2-7b] [--layers N] [--experts E --top-k K] "
                           "[--tokenizer FILE]\n");
        return 2;
    }
    const std::string dir = argv[1];
    Synth s;
    std::string tokenizer;
    for (int i = 2; i < argc; ++i) {
        const std::string a = argv[i];
        const char* v = i + 1 < argc ? argv[i + 1] : nullptr;
        if (v == nullptr) {
            fmt::print(stderr, "bench_synth: {} needs a value\n", a);
            return 2;
        }
        ++i;
        if (a == "--shape" && std::string(v) == "tinyllama") s = Synth{};
        else if (a == "--shape" && std::string(v) == "llama2-7b") s.H = 4096, s.I = 11008, s.L = 32, s.heads = 32, s.kv = 32, s.max_pos = 4096;
        else if (a == "--layers") s.L = std::atoi(v);
        else if (a == "--experts") s.experts = std::atoi(v);
        else if (a == "--top-k") s.top_k = std::atoi(v);
        else if (a == "--tokenizer") tokenizer = v;
        else {
            fmt::print(stderr, "bench_synth: unknown option {} {}\n", a, v);
            return 2;
        }
    }
    if (s.L <= 0 || s.experts < 0 || (s.experts > 0 && (s.top_k <= 0 || s.top_k > s.experts))) {
        fmt::print(stderr, "bench_synth: --layers must be > 0 and 0 < --top-k <= --experts\n");
        return 2;
    }
    if (fs::exists(dir)) {
        fmt::print(stderr, "bench_synth: {} exists; refusing to overwrite\n", dir);
        return 1;
    }
    try {
        write_synthetic(dir, s);
        if (!tokenizer.empty()) fs::copy_file(tokenizer, dir + "/tokenizer.model");
    } catch (const std::exception& e) {
        fmt::print(stderr, "bench_synth: {}\n", e.what());
        return 1;
    }
    fmt::print("{}: {} layers, hidden {}, FFN {}, heads {}/{}, vocab {}{}\n", dir, s.L, s.H, s.I, s.heads, s.kv, s.V,
               s.experts > 0 ? fmt::format(", {} experts top-{}", s.experts, s.top_k) : "");
    return 0;
}
