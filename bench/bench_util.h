#pragma once
// Shared pieces of the benchmarks: timing, peak RSS, a synthetic BF16 LLaMA
// written to a temporary directory, and the sgemm floor a product is
// measured against (OpenBLAS sgemm, 1 thread per pool thread).
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <cblas.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/parallel.h"
#include "common/rng.h"
#include "io/safetensors.h"
#include "model/matmul.h"
#include "model/tensor_names.h"

namespace moefy::bench {

// A child process's wall time, CPU time (user + sys) and peak RSS.
struct ChildRun {
    double seconds = 0, cpu = 0;
    long max_rss_kb = 0;
    int status = 0;
};

// Runs argv (stdout to /dev/null when `quiet`) and measures it: the peers the
// benchmarks compare against (cp, llama.cpp) run through the same function.
inline ChildRun run_child(const std::vector<std::string>& argv, bool quiet = true) {
    std::vector<char*> a;
    for (const auto& s : argv) a.push_back(const_cast<char*>(s.c_str()));
    a.push_back(nullptr);
    const auto t0 = std::chrono::steady_clock::now();
    const pid_t pid = fork();
    if (pid == 0) {
        if (quiet) {
            const int fd = open("/dev/null", O_WRONLY);
            dup2(fd, 1);
        }
        execv(a[0], a.data());
        _exit(127);
    }
    int st = 0;
    rusage ru{};
    wait4(pid, &st, 0, &ru);
    ChildRun r;
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    r.cpu = double(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + 1e-6 * double(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
    r.max_rss_kb = ru.ru_maxrss;
    r.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128;
    return r;
}

// Reads every file under `d` once so both sides of a comparison start from a warm page cache.
inline void warm_page_cache(const std::string& d) {
    std::vector<char> b(size_t(16) << 20);
    for (auto& e : std::filesystem::recursive_directory_iterator(d)) {
        if (!e.is_regular_file()) continue;
        const int fd = open(e.path().c_str(), O_RDONLY);
        while (read(fd, b.data(), b.size()) > 0) {
        }
        close(fd);
    }
}

inline double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

inline double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

inline double peak_rss_bytes() {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    return double(ru.ru_maxrss) * 1024.0;
}

// A dense LLaMA shape; the defaults are TinyLlama-1.1B.
// experts > 0: the same shape cut into a Mixtral-layout MoE, `experts`
// experts of I / experts neurons each, top_k of them per token (random router).
struct Synth {
    int V = 32000, H = 2048, I = 5632, L = 22, heads = 32, kv = 4, max_pos = 2048;
    int experts = 0, top_k = 2;
};

// BF16 weights of magnitude in [2^-7, 2^-5) with random sign and mantissa:
// cheap to generate and keeps activations finite through the layers.
inline void fill_bf16(Rng& rng, uint16_t* p, size_t n) {
    for (size_t i = 0; i < n; i += 4) {
        uint64_t r = rng.next();
        for (size_t j = 0; j < 4 && i + j < n; ++j, r >>= 16) {
            const uint16_t bits = uint16_t(r);
            const uint16_t sign = bits & 0x8000u, exp = uint16_t(120 + ((bits >> 7) & 1)), mant = bits & 0x7fu;
            p[i + j] = uint16_t(sign | (exp << 7) | mant);
        }
    }
}

inline void write_synthetic(const std::string& dir, const Synth& s) {
    std::filesystem::create_directories(dir);
    nlohmann::json cfg = {{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"}, {"vocab_size", s.V},
                          {"hidden_size", s.H}, {"intermediate_size", s.I}, {"num_hidden_layers", s.L},
                          {"num_attention_heads", s.heads}, {"num_key_value_heads", s.kv},
                          {"max_position_embeddings", s.max_pos}, {"rms_norm_eps", 1e-5}, {"rope_theta", 10000.0},
                          {"hidden_act", "silu"}, {"tie_word_embeddings", false}, {"torch_dtype", "bfloat16"}};
    const int64_t H = s.H, hd = s.H / s.heads, KV = int64_t(s.kv) * hd, I = s.I;
    const int64_t Ie = s.experts > 0 ? I / s.experts : I;
    if (s.experts > 0) {
        cfg["architectures"] = {"MixtralForCausalLM"};
        cfg["model_type"] = "mixtral";
        cfg["intermediate_size"] = Ie;
        cfg["num_local_experts"] = s.experts;
        cfg["num_experts_per_tok"] = s.top_k;
    }
    std::ofstream(dir + "/config.json") << cfg.dump(2);
    std::vector<TensorSpec> specs = {{names::embed(), DType::BF16, {s.V, H}}};
    for (int l = 0; l < s.L; ++l) {
        specs.push_back({names::attn(l, "q"), DType::BF16, {H, H}});
        specs.push_back({names::attn(l, "k"), DType::BF16, {KV, H}});
        specs.push_back({names::attn(l, "v"), DType::BF16, {KV, H}});
        specs.push_back({names::attn(l, "o"), DType::BF16, {H, H}});
        if (s.experts > 0) {
            specs.push_back({names::mixtral_router(l), DType::BF16, {s.experts, H}});
            for (int e = 0; e < s.experts; ++e) {
                specs.push_back({names::mixtral_expert(l, e, "w1"), DType::BF16, {Ie, H}});
                specs.push_back({names::mixtral_expert(l, e, "w3"), DType::BF16, {Ie, H}});
                specs.push_back({names::mixtral_expert(l, e, "w2"), DType::BF16, {H, Ie}});
            }
        } else {
            specs.push_back({names::dense_ffn(l, "gate"), DType::BF16, {I, H}});
            specs.push_back({names::dense_ffn(l, "up"), DType::BF16, {I, H}});
            specs.push_back({names::dense_ffn(l, "down"), DType::BF16, {H, I}});
        }
        specs.push_back({names::input_norm(l), DType::BF16, {H}});
        specs.push_back({names::post_norm(l), DType::BF16, {H}});
    }
    specs.push_back({names::final_norm(), DType::BF16, {H}});
    specs.push_back({names::lm_head(), DType::BF16, {s.V, H}});
    Rng rng(1234);
    std::vector<uint16_t> buf;
    write_safetensors(dir + "/model.safetensors", specs, [&](size_t i, ByteSink& sink) {
        const size_t n = specs[i].nbytes() / 2;
        buf.resize(n);
        if (specs[i].shape.size() == 1)
            std::fill(buf.begin(), buf.end(), uint16_t(0x3f80));  // norms: 1.0
        else
            fill_bf16(rng, buf.data(), n);
        sink.write(buf.data(), n * 2);
    });
}

// Writes in a child process so that its buffers never count in our peak RSS.
inline void write_synthetic_forked(const std::string& dir, const Synth& s) {
    const pid_t pid = fork();
    if (pid == 0) {
        try {
            write_synthetic(dir, s);
        } catch (const std::exception& e) {
            fmt::print(stderr, "writing the synthetic model failed: {}\n", e.what());
            _exit(1);
        }
        _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) throw std::runtime_error("synthetic model writer failed");
}

// Removes a directory when it goes out of scope.
struct TempPath {
    std::string path;
    ~TempPath() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
    }
};

// Best-of GFLOP/s of C[M, N] = A[M, K] · op(B) with f32 B: B is [N, K] (x·Wᵀ,
// the forward's layout) when trans_b, else [K, N] (dy·W, the backward's). Run as
// the engine runs a product (model/matmul.cpp): OpenBLAS is single-threaded
// process-wide, so N is cut into fixed blocks (matmul_gemm_block_rows) that the
// pool's threads share, one single-threaded sgemm per block.
inline double sgemm_gflops(int M, int64_t N, int64_t K, bool trans_b, double min_seconds) {
    std::vector<float> a(size_t(M) * size_t(K)), b(size_t(N) * size_t(K)), c(size_t(M) * size_t(N));
    Rng rng(9);
    for (float& x : a) x = float(rng.uniform() - 0.5);
    for (float& x : b) x = float(rng.uniform() - 0.5) * 0.02f;
    const int64_t nb = matmul_gemm_block_rows(N, K);
    const int64_t blocks = (N + nb - 1) / nb;
    auto product = [&] {
        parallel_for(blocks, [&](int64_t b0, int64_t b1) {
            for (int64_t blk = b0; blk < b1; ++blk) {
                const int64_t n0 = blk * nb, n = std::min(nb, N - n0);
                const float* bb = trans_b ? b.data() + size_t(n0) * size_t(K) : b.data() + n0;
                cblas_sgemm(CblasRowMajor, CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, M, int(n), int(K), 1.0f,
                            a.data(), int(K), bb, trans_b ? int(K) : int(N), 0.0f, c.data() + n0, int(N));
            }
        });
    };
    double best = 1e30, spent = 0;
    int reps = 0;
    while ((spent < min_seconds || reps < 2) && reps < 50) {
        const double t0 = now();
        product();
        const double dt = now() - t0;
        best = std::min(best, dt);
        spent += dt;
        ++reps;
    }
    return 2.0 * M * double(N) * double(K) / best / 1e9;
}

}  // namespace moefy::bench
