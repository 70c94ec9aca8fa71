// bench_eval: engine throughput against this machine's own floors, measured in
// the same run.
//   perplexity (ctx 512):  2·params·tokens / time   vs  OpenBLAS sgemm GFLOP/s at
//                          the model's own [512 x K] · [K x N] shapes (f32 weights,
//                          OpenBLAS's own threading), best of several runs each
//   generation:            tokens/s  vs  memcpy bandwidth / weight bytes per token
//   memory:                peak RSS  vs  weight bytes
// Models: the demo model from ../shared (when present) and a synthetic BF16
// LLaMA of ~1.1B parameters (TinyLlama shapes) written to a temp dir and deleted.
//
//   bench_eval [--quick] [--layers N] [--seqs N] [--gen N] [--keep-going]
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <cblas.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/rng.h"
#include "io/safetensors.h"
#include "model/checkpoint.h"
#include "model/llama.h"
#include "model/parallel.h"
#include "model/tensor_names.h"

#include "bench_util.h"

using namespace moefy;
using namespace moefy::bench;
namespace fs = std::filesystem;

namespace {

struct Shape {
    int64_t N, K;
    bool operator<(const Shape& o) const { return N != o.N ? N < o.N : K < o.K; }
};

// ---- floors -------------------------------------------------------------------------

// Copy bandwidth (bytes copied per second) over a buffer far larger than the caches.
double memcpy_bandwidth(size_t bytes) {
    std::vector<char> src(bytes, 1), dst(bytes, 0);
    double best = 1e30;
    for (int r = 0; r < 5; ++r) {
        const double t0 = now();
        std::memcpy(dst.data(), src.data(), bytes);
        best = std::min(best, now() - t0);
    }
    if (dst[bytes / 2] != 1) std::abort();
    return double(bytes) / best;
}

// ---- one model ------------------------------------------------------------------------

struct Result {
    std::string name;
    double params = 0, weight_bytes = 0, bytes_per_token = 0;
    double ppl_tok_s = 0, ppl_gflops = 0, sgemm_gflops = 0;
    double gen_tok_s = 0, gen_bound_tok_s = 0;
    double peak_rss = 0;
    std::map<Shape, int> shapes;  // matmul shapes per token pass and how often each occurs
};

std::map<Shape, int> model_shapes(const Model& m) {
    std::map<Shape, int> s;
    const ModelConfig& c = m.config();
    for (int l = 0; l < c.num_layers; ++l) {
        const LayerWeights& L = m.layer(l);
        for (const WeightRef* w : {&L.q, &L.k, &L.v, &L.o, &L.ffn.gate, &L.ffn.up, &L.ffn.down})
            if (!w->empty()) ++s[{w->rows, w->cols}];
    }
    // nll_sum runs lm_head in 2048-row vocabulary blocks
    s[{std::min(c.vocab_size, 2048), c.hidden_size}] += (c.vocab_size + 2047) / 2048;
    return s;
}

Result run_model(const std::string& name, const std::string& dir, int ctx, int seqs, int gen_tokens) {
    Result r;
    r.name = name;
    Checkpoint ck = Checkpoint::open(dir);
    auto model = Model::load(ck);
    const ModelConfig& c = model->config();
    ctx = std::min(ctx, c.max_position_embeddings);
    r.params = model->matmul_params_per_token();
    r.weight_bytes = double(model->weight_bytes());
    r.bytes_per_token = model->bytes_per_token();
    r.shapes = model_shapes(*model);

    Rng rng(42);
    std::vector<int32_t> toks(static_cast<size_t>(ctx));
    auto fill = [&] {
        for (auto& t : toks) t = int32_t(rng.below(uint64_t(c.vocab_size)));
    };
    fill();
    model->nll_sum(toks.data(), ctx);  // warm-up: page in the weights, size the buffers
    // Best of `seqs` sequences, each timed alone: other jobs on the machine
    // only ever slow a sequence down.
    double best = 1e30, nll = 0;
    for (int i = 0; i < seqs; ++i) {
        fill();
        const double t0 = now();
        nll += model->nll_sum(toks.data(), ctx);
        best = std::min(best, now() - t0);
    }
    r.ppl_tok_s = ctx / best;
    r.ppl_gflops = 2.0 * r.params * r.ppl_tok_s / 1e9;
    if (!std::isfinite(nll)) fmt::print(stderr, "warning: {} NLL is not finite\n", name);

    // Generation: a 16-token prefill, then single tokens through the KV cache;
    // the better of two rounds.
    const int prompt = 16;
    std::vector<float> logits(size_t(c.vocab_size));
    for (int round = 0; round < 2; ++round) {
        KVCache cache = model->make_cache(prompt + gen_tokens + 1);
        fill();
        model->forward_last(toks.data(), prompt, 0, &cache, logits.data());
        int32_t tok = toks[prompt];
        const double t0 = now();
        for (int i = 0; i < gen_tokens; ++i) {
            model->forward_last(&tok, 1, cache.n, &cache, logits.data());
            tok = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
        }
        r.gen_tok_s = std::max(r.gen_tok_s, gen_tokens / (now() - t0));
    }
    r.peak_rss = peak_rss_bytes();
    return r;
}

void print(const Result& r, double memcpy_bw) {
    fmt::print("\n== {} ==\n", r.name);
    fmt::print("  matmul params/token {:.3f} G, weights {:.2f} GiB, read per decoded token {:.2f} GiB\n", r.params / 1e9,
               r.weight_bytes / 1073741824.0, r.bytes_per_token / 1073741824.0);
    fmt::print("  {:<34} {:>12} {:>14} {:>8}\n", "", "engine", "floor", "ratio");
    fmt::print("  {:<34} {:>12.1f} {:>14.1f} {:>7.0f}%\n", "perplexity GFLOP/s (ctx 512)", r.ppl_gflops, r.sgemm_gflops,
               100.0 * r.ppl_gflops / r.sgemm_gflops);
    fmt::print("  {:<34} {:>12.1f}\n", "perplexity tokens/s", r.ppl_tok_s);
    const double bound = memcpy_bw / r.bytes_per_token;
    fmt::print("  {:<34} {:>12.2f} {:>14.2f} {:>7.0f}%\n", "generation tokens/s (bw bound)", r.gen_tok_s, bound,
               100.0 * r.gen_tok_s / bound);
    fmt::print("  {:<34} {:>12.2f} {:>14.2f} {:>7.0f}%\n", "peak RSS GiB (vs weights)", r.peak_rss / 1073741824.0,
               r.weight_bytes / 1073741824.0, 100.0 * r.peak_rss / r.weight_bytes);
}

// sgemm floor of a model: total flops at M = ctx over the summed best sgemm times of its shapes.
double sgemm_floor(const std::map<Shape, int>& shapes, int M, double min_seconds) {
    double flops = 0, time = 0;
    for (const auto& [s, count] : shapes) {
        const double g = sgemm_gflops(M, s.N, s.K, /*trans_b=*/true, min_seconds);
        const double f = 2.0 * M * double(s.N) * double(s.K) * count;
        fmt::print("  sgemm [{} x {}] x [{} x {}]^T: {:.1f} GFLOP/s (x{})\n", M, s.K, s.N, s.K, g, count);
        flops += f;
        time += f / (g * 1e9);
    }
    return flops / time / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
    bool quick = false;
    int layers = -1, seqs = -1, gen = -1;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "--quick") quick = true;
        else if (a == "--layers" && i + 1 < argc) layers = std::atoi(argv[++i]);
        else if (a == "--seqs" && i + 1 < argc) seqs = std::atoi(argv[++i]);
        else if (a == "--gen" && i + 1 < argc) gen = std::atoi(argv[++i]);
        else {
            fmt::print(stderr, "usage: bench_eval [--quick] [--layers N] [--seqs N] [--gen N]\n");
            return 2;
        }
    }
    const int ctx = 512;
    Synth s;
    s.L = layers > 0 ? layers : (quick ? 4 : 22);
    seqs = seqs > 0 ? seqs : (quick ? 2 : 3);
    gen = gen > 0 ? gen : (quick ? 8 : 16);
    fmt::print("bench_eval: ctx {}, best of {} sequence(s), {} generated tokens x 2 rounds, OpenBLAS threads {} ({})\n", ctx,
               seqs, gen, openblas_get_num_threads(), openblas_get_config());

    std::vector<Result> results;
    try {
        // The synthetic model is written first, by a forked child, before this
        // process starts any worker threads.
        const std::string dir = (fs::temp_directory_path() / fmt::format("moefy-bench-eval-{}", getpid())).string();
        struct Cleanup {
            std::string d;
            ~Cleanup() { fs::remove_all(d); }
        } cleanup{dir};
        const double t0 = now();
        write_synthetic_forked(dir, s);
        fmt::print("synthetic model: {} layers, hidden {}, intermediate {}, heads {}/{}, vocab {} written in {:.1f} s\n", s.L,
                   s.H, s.I, s.heads, s.kv, s.V, now() - t0);
        fmt::print("engine threads: {}\n", parallel_threads());

        const std::string demo = std::string(MOEFY_SOURCE_DIR) + "/../shared/models/tinyllama-moefy-demo";
        if (fs::exists(demo + "/config.json")) results.push_back(run_model("demo (tinyllama-moefy-demo, BF16)", demo, ctx, 4 * seqs, 64));
        results.push_back(run_model(fmt::format("synthetic LLaMA {} layers (BF16)", s.L), dir, ctx, seqs, gen));
    } catch (const std::exception& e) {
        fmt::print(stderr, "bench_eval: {}\n", e.what());
        return 1;
    }
    // Floors last, so their f32 buffers do not count in the engine's peak RSS.
    const double bw = memcpy_bandwidth(size_t(1) << 30);
    fmt::print("\nmemcpy bandwidth: {:.1f} GB/s (bytes copied per second, 1 GiB buffers)\n", bw / 1e9);
    for (Result& r : results) {
        fmt::print("sgemm floor for {}:\n", r.name);
        r.sgemm_gflops = sgemm_floor(r.shapes, ctx, quick ? 0.2 : 0.5);
    }
    for (const Result& r : results) print(r, bw);
    return 0;
}
