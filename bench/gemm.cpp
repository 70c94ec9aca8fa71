// bench_gemm: one product y[M, N] = x[M, K] · Wᵀ (W BF16 [N, K]) on every
// kernel path of this CPU, the paths interleaved round after round and each
// one's best round kept, so that a shared machine's load hits them alike;
// beside OpenBLAS sgemm on f32 weights (the floor: run as the engine runs it,
// fixed column blocks shared by the pool, 1 OpenBLAS thread per pool thread)
// and the vdpbf16ps register peak.
//
//   nice -n 10 build/bench_gemm [M N K] [--rounds R]
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "common/rng.h"
#include "io/dtype.h"
#include "model/matmul.h"
#include "model/ops/gemm_bf16.h"
#include "model/ops/kernel_path.h"
#include "common/parallel.h"

#include "bench_util.h"

using namespace moefy;
using namespace moefy::bench;

int main(int argc, char** argv) {
    int M = 512, rounds = 5;
    int64_t N = 5632, K = 2048;
    std::vector<std::string> pos;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--rounds" && i + 1 < argc) rounds = std::atoi(argv[++i]);
        else pos.push_back(a);
    }
    if (pos.size() == 3) M = std::stoi(pos[0]), N = std::stoll(pos[1]), K = std::stoll(pos[2]);
    Rng rng(1);
    std::vector<float> x(size_t(M) * K), wf(size_t(N) * K), y(size_t(M) * N);
    for (float& v : x) v = float(rng.uniform() - 0.5);
    for (float& v : wf) v = float(rng.uniform() - 0.5) * 0.05f;
    std::vector<uint16_t> w(wf.size());
    from_f32(DType::BF16, wf.data(), w.data(), w.size());
    const WeightRef W{w.data(), DType::BF16, N, K};

    struct Path {
        std::string name;
        ops::KernelPath p;
        bool exact;
        double best = 1e30;
    };
    std::vector<Path> paths = {{"sgemm (BF16 block -> f32, OpenBLAS)", ops::KernelPath::Sgemm, true}};
    if (ops::cpu_supports(ops::KernelPath::Avx2)) paths.push_back({"avx2 (own, f32 activations)", ops::KernelPath::Avx2, true});
    if (ops::cpu_supports(ops::KernelPath::Avx512Bf16)) {
        paths.push_back({"avx512bf16, exact activations", ops::KernelPath::Avx512Bf16, true});
        paths.push_back({"avx512bf16, bf16 activations", ops::KernelPath::Avx512Bf16, false});
    }
    if (ops::cpu_supports(ops::KernelPath::Amx)) {
        paths.push_back({"amx, exact activations", ops::KernelPath::Amx, true});
        paths.push_back({"amx, bf16 activations", ops::KernelPath::Amx, false});
    }
    double sgemm_best = 1e30, peak = 0;
    for (int r = 0; r < rounds; ++r) {
        for (Path& p : paths) {
            ops::ScopedKernelPath sp(p.p);
            const bool prev = ops::set_exact_activations(p.exact);
            const double t0 = now();
            matmul(x.data(), M, W, y.data());
            p.best = std::min(p.best, now() - t0);
            ops::set_exact_activations(prev);
        }
        sgemm_best = std::min(sgemm_best, 2.0 * M * double(N) * double(K) / (sgemm_gflops(M, N, K, true, 0.0) * 1e9));
        std::vector<double> per(static_cast<size_t>(parallel_threads()), 0.0);
        parallel_run([&](int t, int) { per[size_t(t)] = ops::bf16_dot_peak_gflops(0.05); });
        double sum = 0;
        for (double v : per) sum += v;
        peak = std::max(peak, sum);
    }
    const double flops = 2.0 * M * double(N) * double(K);
    const double floor = flops / sgemm_best / 1e9;
    fmt::print("[{} x {}] . [{} x {}]^T, {} engine threads, best of {} interleaved rounds\n", M, K, N, K, parallel_threads(), rounds);
    fmt::print("  {:<40} {:>8.1f} GFLOP/s  (the floor: 1 OpenBLAS thread per pool thread)\n", "OpenBLAS sgemm, f32 weights",
               floor);
    for (const Path& p : paths)
        fmt::print("  {:<40} {:>8.1f} GFLOP/s  {:.2f} x floor\n", p.name, flops / p.best / 1e9, flops / p.best / 1e9 / floor);
    fmt::print("  {:<40} {:>8.1f} GFLOP/s  (registers only, every round)\n", "vdpbf16ps peak", peak);
    return 0;
}
