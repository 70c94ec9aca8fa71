// bench_attention: causal self-attention of one layer, T queries over their own
// T keys (a perplexity window), on every attention kernel of this CPU, rounds
// interleaved and each one's best kept: sgemm (OpenBLAS, Haswell kernels), the
// f32 AVX-512 tiles (amx or avx512bf16 path, exact mode), the AMX tiles on
// two-term BF16 operands (amx path, bf16 mode). GFLOP/s count the products
// over the visible keys only, 4·d per (query, visible key, head).
//
//   nice -n 10 build/bench_attention [T heads kv_heads head_dim] [--rounds R] [--only I]
// --only I: just the I-th path of the list (0: sgemm), e.g. under perf.
#include <algorithm>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "common/parallel.h"
#include "common/rng.h"
#include "model/layers.h"
#include "model/ops/kernel_path.h"

#include "bench_util.h"

using namespace moefy;
using namespace moefy::bench;

int main(int argc, char** argv) {
    int T = 512, heads = 32, kv = 4, d = 64, rounds = 10, only = -1;
    std::vector<std::string> pos;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--rounds" && i + 1 < argc) rounds = std::atoi(argv[++i]);
        else if (a == "--only" && i + 1 < argc) only = std::atoi(argv[++i]);
        else pos.push_back(a);
    }
    if (pos.size() == 4) T = std::stoi(pos[0]), heads = std::stoi(pos[1]), kv = std::stoi(pos[2]), d = std::stoi(pos[3]);
    Rng rng(1);
    std::vector<float> q(size_t(T) * heads * d), k(size_t(T) * kv * d), v(k.size()), out(q.size());
    for (float& x : q) x = float(rng.normal());
    for (float& x : k) x = float(rng.normal());
    for (float& x : v) x = float(rng.normal());
    struct Path {
        std::string name;
        ops::KernelPath p;
        bool exact;
        double best = 1e30;
    };
    std::vector<Path> paths = {{"sgemm (OpenBLAS)", ops::KernelPath::Sgemm, true}};
    if (ops::cpu_supports(ops::KernelPath::Avx512Bf16))
        paths.push_back({"f32 AVX-512 tiles (avx512bf16)", ops::KernelPath::Avx512Bf16, true});
    if (ops::cpu_supports(ops::KernelPath::Amx)) {
        paths.push_back({"f32 AVX-512 tiles (amx, exact)", ops::KernelPath::Amx, true});
        paths.push_back({"AMX tiles, 2-term BF16 (amx, bf16)", ops::KernelPath::Amx, false});
    }
    if (only >= 0 && only < int(paths.size())) paths = {paths[size_t(only)]};
    const layers::AttnShape shape{heads, kv, d, std::nullopt};
    for (int r = 0; r < rounds; ++r)
        for (Path& p : paths) {
            ops::ScopedKernelPath sp(p.p);
            const bool prev = ops::set_exact_activations(p.exact);
            const double t0 = now();
            layers::attention(shape, q.data(), T, 0, k.data(), v.data(), T, 0, out.data());
            p.best = std::min(p.best, now() - t0);
            ops::set_exact_activations(prev);
        }
    const double flops = 4.0 * d * heads * (double(T) * (T + 1) / 2);
    fmt::print("attention: {} queries, {} heads ({} kv) of {}, causal, {} engine threads, best of {} interleaved rounds\n", T,
               heads, kv, d, parallel_threads(), rounds);
    for (const Path& p : paths)
        fmt::print("  {:<40} {:>8.3f} ms  {:>7.1f} GFLOP/s  {:.2f} x sgemm\n", p.name, p.best * 1e3, flops / p.best / 1e9,
                   paths[0].best / p.best);
    return 0;
}
