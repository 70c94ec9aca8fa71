// bench_eval: engine throughput against this machine's own floors and ceilings,
// all measured in the same run (the machine is shared: compare the ratios).
//   perplexity (ctx 512):  2·params·tokens / time   vs  OpenBLAS sgemm GFLOP/s at
//                          the model's own [512 x K]·[K x N] shapes (f32 weights,
//                          1 OpenBLAS thread per pool thread), and vs the vdpbf16ps peak of
//                          all engine threads (registers only)
//   generation:            tokens/s  vs  streaming-read bandwidth / weight bytes per token,
//                          the bandwidth measured right before and after each run
//   dense vs MoE:          the synthetic 1.1B TinyLlama shape, dense and cut into
//                          8 experts with top-2 (Mixtral layout, random router)
//   accuracy:              mean NLL of the demo model and stories260K on every kernel
//                          path, relative to the f32 sgemm path
//
//   nice -n 10 build/bench_eval [--quick] [--layers N] [--seqs N] [--gen N]
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <cblas.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/rng.h"
#include "io/safetensors.h"
#include "model/checkpoint.h"
#include "model/llama.h"
#include "model/ops/gemm_bf16.h"
#include "model/ops/kernel_path.h"
#include "common/parallel.h"
#include "model/tensor_names.h"
#include "tokenizer/tokenizer.h"

#include "bench_util.h"

using namespace moefy;
using namespace moefy::bench;
namespace fs = std::filesystem;

namespace {

struct Shape {
    int64_t N, K;
    bool operator<(const Shape& o) const { return N != o.N ? N < o.N : K < o.K; }
};

// ---- floors and ceilings --------------------------------------------------------------

__attribute__((target("avx2"))) uint64_t sum_words(const uint64_t* p, size_t n) {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i + 16 <= n; i += 16) {
        a0 = _mm256_add_epi64(a0, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i)));
        a1 = _mm256_add_epi64(a1, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 4)));
        a2 = _mm256_add_epi64(a2, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 8)));
        a3 = _mm256_add_epi64(a3, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 12)));
    }
    alignas(32) uint64_t t[4];
    _mm256_store_si256(reinterpret_cast<__m256i*>(t), _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3)));
    return t[0] + t[1] + t[2] + t[3];
}

// Streaming-read bandwidth (bytes read per second) of all engine threads over a
// buffer far larger than the caches: what a decoded token's weights cost.
double read_bandwidth(size_t bytes) {
    const size_t n = bytes / 8;
    std::unique_ptr<uint64_t[], decltype(&std::free)> buf(static_cast<uint64_t*>(std::aligned_alloc(64, n * 8)), &std::free);
    parallel_for(int64_t(n), [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) buf[size_t(i)] = uint64_t(i);
    });
    double best = 1e30;
    std::atomic<uint64_t> sink{0};
    for (int r = 0; r < 5; ++r) {
        const double t0 = now();
        parallel_run([&](int t, int P) {
            const size_t b = n * size_t(t) / size_t(P) / 16 * 16, e = n * size_t(t + 1) / size_t(P) / 16 * 16;
            sink += sum_words(buf.get() + b, e - b);
        });
        best = std::min(best, now() - t0);
    }
    if (sink.load() == 1) std::abort();
    return double(n / 16 * 16 * 8) / best;
}

// BF16 product peak of all engine threads at once, GFLOP/s: tdpbf16ps (AMX)
// where the CPU has it, else vdpbf16ps.
double bf16_peak() {
    std::vector<double> per(size_t(parallel_threads()), 0.0);
    const bool amx = ops::cpu_supports(ops::KernelPath::Amx);
    parallel_run([&](int t, int) { per[size_t(t)] = amx ? ops::amx_dot_peak_gflops(0.3) : ops::bf16_dot_peak_gflops(0.3); });
    double s = 0;
    for (double v : per) s += v;
    return s;
}

std::map<Shape, int> model_shapes(const Model& m) {
    std::map<Shape, int> s;
    const ModelConfig& c = m.config();
    for (int l = 0; l < c.num_layers; ++l) {
        const LayerWeights& L = m.layer(l);
        for (const WeightRef* w : {&L.q, &L.k, &L.v, &L.o, &L.ffn.gate, &L.ffn.up, &L.ffn.down})
            if (!w->empty()) ++s[{w->rows, w->cols}];
    }
    s[{std::min(c.vocab_size, 2048), c.hidden_size}] += (c.vocab_size + 2047) / 2048;  // lm_head blocks of nll_sum
    return s;
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

// ---- one model on one kernel path ------------------------------------------------------

// Best streaming-read bandwidth seen in this run (measured around every
// generation run): the floors line reports it.
double g_read_bw = 0;

struct Result {
    std::string name, path;
    double params = 0, weight_bytes = 0, bytes_per_token = 0;
    double ppl_tok_s = 0, ppl_gflops = 0;
    double gen_tok_s = 0;
    // decode against the read bandwidth measured right before and right after
    // the same generation run (the machine's bandwidth moves with its other
    // tenants, by 40-80 GB/s here): best fraction over the rounds, and that
    // round's bandwidth
    double gen_bw_fraction = 0, gen_bw = 0;
};

// One (model, kernel path, activation mode) under test.
struct Config {
    std::string name;
    Model* model;
    ops::KernelPath path;
    bool exact;
    Result r;
};

std::string path_label(ops::KernelPath p, bool exact) {
    std::string s = ops::kernel_path_name(p);
    if (p == ops::KernelPath::Avx512Bf16 || p == ops::KernelPath::Amx) s += exact ? " exact" : " bf16-act";
    return s;
}

// Every config is timed once per round, the configs interleaved round after
// round, each keeping its best round: whatever else runs on the machine
// hits all of them alike, so their ratios hold even when the times do not.
void run_interleaved(std::vector<Config>& cs, int ctx, int rounds, int gen_tokens) {
    Rng rng(42);
    for (Config& c : cs) {
        c.r.name = c.name;
        c.r.path = path_label(c.path, c.exact);
        c.r.params = c.model->matmul_params_per_token();
        c.r.weight_bytes = double(c.model->weight_bytes());
        c.r.bytes_per_token = c.model->bytes_per_token();
    }
    auto with = [](const Config& c, auto&& f) {
        ops::ScopedKernelPath sp(c.path);
        const bool prev = ops::set_exact_activations(c.exact);
        f();
        ops::set_exact_activations(prev);
    };
    for (int round = 0; round <= rounds; ++round) {  // round 0: warm-up (page in, size the buffers)
        for (Config& c : cs) {
            const int V = c.model->vocab_size(), n = std::min(ctx, c.model->config().max_position_embeddings);
            std::vector<int32_t> toks(static_cast<size_t>(n));
            for (auto& t : toks) t = int32_t(rng.below(uint64_t(V)));
            with(c, [&] {
                const double t0 = now();
                const double nll = c.model->nll_sum(toks.data(), n);
                const double dt = now() - t0;
                if (!std::isfinite(nll)) fmt::print(stderr, "warning: {} NLL is not finite\n", c.name);
                if (round > 0) c.r.ppl_tok_s = std::max(c.r.ppl_tok_s, n / dt);
            });
            // Generation: a 16-token prefill, then single tokens through the KV cache.
            if (round == 0) continue;
            const double bw_before = read_bandwidth(size_t(1) << 30);
            double tok_s = 0;
            with(c, [&] {
                const int prompt = 16;
                std::vector<float> logits(static_cast<size_t>(V));
                KVCache cache = c.model->make_cache(prompt + gen_tokens + 1);
                c.model->forward_last(toks.data(), prompt, 0, &cache, logits.data());
                int32_t tok = toks[prompt];
                const double t0 = now();
                for (int i = 0; i < gen_tokens; ++i) {
                    c.model->forward_last(&tok, 1, cache.n, &cache, logits.data());
                    tok = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
                }
                tok_s = gen_tokens / (now() - t0);
            });
            const double bw_after = read_bandwidth(size_t(1) << 30), bw_here = 0.5 * (bw_before + bw_after);
            g_read_bw = std::max({g_read_bw, bw_before, bw_after});
            c.r.gen_tok_s = std::max(c.r.gen_tok_s, tok_s);
            if (tok_s * c.r.bytes_per_token / bw_here > c.r.gen_bw_fraction)
                c.r.gen_bw_fraction = tok_s * c.r.bytes_per_token / bw_here, c.r.gen_bw = bw_here;
            fmt::print("  round {}: {} [{}]: perplexity {:.1f} tok/s, generation {:.2f} tok/s (best so far)\n", round, c.name,
                       c.r.path, c.r.ppl_tok_s, c.r.gen_tok_s);
            std::fflush(stdout);
        }
    }
    for (Config& c : cs) c.r.ppl_gflops = 2.0 * c.r.params * c.r.ppl_tok_s / 1e9;
}

// The kernel paths this CPU has, as (path, exact activations).
std::vector<std::pair<ops::KernelPath, bool>> paths() {
    std::vector<std::pair<ops::KernelPath, bool>> p = {{ops::KernelPath::Sgemm, true}};
    if (ops::cpu_supports(ops::KernelPath::Avx2)) p.push_back({ops::KernelPath::Avx2, true});
    for (ops::KernelPath k : {ops::KernelPath::Avx512Bf16, ops::KernelPath::Amx})
        if (ops::cpu_supports(k)) p.push_back({k, true}), p.push_back({k, false});
    return p;
}
bool bf16_products(ops::KernelPath p) { return p == ops::KernelPath::Avx512Bf16 || p == ops::KernelPath::Amx; }

// A copy of the checkpoint at `src` with every tensor stored as BF16 (config.json copied).
void write_bf16_copy(const std::string& src, const std::string& dst) {
    fs::create_directories(dst);
    fs::copy_file(src + "/config.json", dst + "/config.json", fs::copy_options::overwrite_existing);
    Checkpoint ck = Checkpoint::open(src);
    const TensorStore& ts = *ck.tensors;
    std::vector<TensorSpec> specs;
    for (const std::string& n : ts.names()) specs.push_back({n, DType::BF16, ts.get(n).shape});
    std::vector<uint16_t> buf;
    write_safetensors(dst + "/model.safetensors", specs, [&](size_t i, ByteSink& sink) {
        const std::vector<float> v = ts.read_f32(specs[i].name);
        buf.resize(v.size());
        from_f32(DType::BF16, v.data(), buf.data(), v.size());
        sink.write(buf.data(), buf.size() * 2);
    });
}

// Mean NLL of real text (the first documents of ../shared/corpus/eval.jsonl,
// one window of up to 512 tokens) on every path, relative to the sgemm (f32) path.
void accuracy(const std::string& name, const std::string& dir, const std::string& tok_dir, const std::string& corpus) {
    if (!fs::exists(dir + "/config.json") || !fs::exists(corpus)) {
        fmt::print("  {}: not present ({}), skipped\n", name, dir);
        return;
    }
    Checkpoint ck = Checkpoint::open(dir);
    auto model = Model::load(ck);
    auto tok = Tokenizer::from_dir(tok_dir);
    std::ifstream in(corpus);
    std::string line, text;
    while (text.size() < 8000 && std::getline(in, line)) text += nlohmann::json::parse(line).value("text", "") + "\n";
    std::vector<int32_t> toks = tok->encode(text, true);
    toks.resize(std::min<size_t>(toks.size(), size_t(std::min(512, model->config().max_position_embeddings))));
    const int T = int(toks.size());
    fmt::print("  {} ({} weights, {} tokens of eval text):\n", name, dtype_name(model->layer(0).q.dtype), T);
    double ref = 0;
    for (auto [p, exact] : paths()) {
        ops::ScopedKernelPath sp(p);
        const bool prev = ops::set_exact_activations(exact);
        const double nll = model->nll_sum(toks.data(), T) / (T - 1);
        ops::set_exact_activations(prev);
        if (p == ops::KernelPath::Sgemm) ref = nll;
        fmt::print("    {:<22} mean NLL {:.6f}  rel. deviation {:.2e}\n",
                   fmt::format("{}{}", ops::kernel_path_name(p), bf16_products(p) ? (exact ? " exact" : " bf16-act") : ""),
                   nll, std::fabs(nll - ref) / std::fabs(ref));
    }
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
    seqs = seqs > 0 ? seqs : (quick ? 1 : 3);
    gen = gen > 0 ? gen : (quick ? 8 : 16);
    fmt::print("bench_eval: ctx {}, best of {} sequence(s), {} generated tokens x 2 rounds, kernel path {}, OpenBLAS {}\n",
               ctx, seqs, gen, ops::kernel_path_name(ops::kernel_path()), openblas_get_config());

    std::vector<Result> results;
    double bw = 0, peak = 0, floor = 0;
    try {
        // The synthetic models are written first, by forked children, before this
        // process starts any worker threads.
        const std::string base = (fs::temp_directory_path() / fmt::format("moefy-bench-eval-{}", getpid())).string();
        TempPath cleanup{base};
        const double t0 = now();
        write_synthetic_forked(base + "/dense", s);
        Synth sm = s;
        sm.experts = 8, sm.top_k = 2;
        write_synthetic_forked(base + "/moe", sm);
        fmt::print("synthetic models: {} layers, hidden {}, intermediate {}, heads {}/{}, vocab {}; MoE {} experts top-{}; "
                   "written in {:.1f} s\n", s.L, s.H, s.I, s.heads, s.kv, s.V, sm.experts, sm.top_k, now() - t0);
        fmt::print("engine threads: {}\n", parallel_threads());

        fmt::print("\naccuracy (mean NLL relative to the f32 sgemm path):\n");
        const std::string shared = std::string(MOEFY_SOURCE_DIR) + "/../shared";
        const std::string demo = shared + "/models/tinyllama-moefy-demo", stories = shared + "/fixtures/stories260K";
        accuracy("demo (tinyllama-moefy-demo)", demo, demo, shared + "/corpus/eval.jsonl");
        if (fs::exists(stories + "/config.json")) {
            // stored in F32, whose products take the sgemm path on every kernel path: measured on a BF16 copy
            write_bf16_copy(stories, base + "/stories-bf16");
            accuracy("stories260K as BF16", base + "/stories-bf16", stories, shared + "/corpus/eval.jsonl");
        }

        fmt::print("\nthroughput ({} interleaved rounds):\n", seqs);
        const std::string dense_name = fmt::format("dense {}L", s.L), moe_name = fmt::format("MoE 8x top-2 {}L", s.L);
        Checkpoint dck = Checkpoint::open(base + "/dense"), mck = Checkpoint::open(base + "/moe");
        auto dense = Model::load(dck), moe = Model::load(mck);
        const ops::KernelPath best = ops::kernel_path();
        std::vector<Config> cs = {{dense_name, dense.get(), ops::KernelPath::Sgemm, true, {}},
                                  {dense_name, dense.get(), best, true, {}},
                                  {moe_name, moe.get(), best, true, {}}};
        if (bf16_products(best)) {
            cs.push_back({dense_name, dense.get(), best, false, {}});
            cs.push_back({moe_name, moe.get(), best, false, {}});
        }
        run_interleaved(cs, ctx, seqs, gen);
        for (const Config& c : cs) results.push_back(c.r);
        floor = sgemm_floor(model_shapes(*dense), ctx, quick ? 0.2 : 0.5);
    } catch (const std::exception& e) {
        fmt::print(stderr, "bench_eval: {}\n", e.what());
        return 1;
    }
    bw = std::max(g_read_bw, read_bandwidth(size_t(1) << 30));
    peak = bf16_peak();
    fmt::print("\nfloors, same run: streaming read {:.1f} GB/s (best over the run, {} threads), sgemm floor of the dense shapes "
               "{:.1f} GFLOP/s (OpenBLAS {}, 1 thread per pool thread), BF16 product peak {:.1f} GFLOP/s ({}, {} threads)\n",
               bw / 1e9, parallel_threads(), floor, openblas_get_corename(), peak,
               ops::cpu_supports(ops::KernelPath::Amx) ? "tdpbf16ps" : "vdpbf16ps", parallel_threads());

    fmt::print("\n| model | kernel path | perplexity tok/s | GFLOP/s | x sgemm floor | % bf16 peak | decode tok/s | % of bw bound "
               "(same round) | that round's bw GB/s | % of the run's best bw |\n");
    fmt::print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (const Result& r : results)
        fmt::print("| {} | {} | {:.1f} | {:.1f} | {:.2f} | {:.0f}% | {:.2f} | {:.0f}% | {:.1f} | {:.0f}% |\n", r.name, r.path,
                   r.ppl_tok_s, r.ppl_gflops, r.ppl_gflops / floor, 100 * r.ppl_gflops / peak, r.gen_tok_s,
                   100 * r.gen_bw_fraction, r.gen_bw / 1e9, 100 * r.gen_tok_s * r.bytes_per_token / bw);
    // MoE over dense on the same path
    fmt::print("\n");
    for (const Result& m : results) {
        if (m.name.rfind("MoE", 0) != 0) continue;
        for (const Result& d : results)
            if (d.name.rfind("dense", 0) == 0 && d.path == m.path)
                fmt::print("MoE / dense [{}]: perplexity {:.2f}x, decode {:.2f}x (ideal {:.2f}x by matmul params, {:.2f}x by bytes)\n",
                           m.path, m.ppl_tok_s / d.ppl_tok_s, m.gen_tok_s / d.gen_tok_s, d.params / m.params,
                           d.bytes_per_token / m.bytes_per_token);
    }
    fmt::print("peak RSS {:.2f} GiB\n", peak_rss_bytes() / 1073741824.0);
    return 0;
}
