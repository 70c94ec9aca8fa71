// bench_importance: the importance workload (forward + backward to the FFN
// activations of every layer, statistics accumulated) on a synthetic BF16
// LLaMA of TinyLlama-1.1B shapes, against the machine's sgemm floor measured
// in the same run at the same product shapes, plus memory: the peak RSS here
// and the computed activation memory of a 7B shape at ctx 2048.
//
// FLOPs counted (no weight gradients are formed):
//   forward   2·P·T + 2·A      P = matmul parameters per token (lm_head included)
//   backward  2·P·T + 4·A      A = Σ_layers Qd·T·(T+1): one causal QKᵀ or P·V product
// so forward + backward is about twice the forward (a training step, with weight
// gradients, would be three times). Recompute mode also runs the layers' forward
// a second time; that is reported as executed, not counted as useful work.
//
//   bench_importance [--quick] [--layers N] [--ctx T] [--seqs N] [--memory auto|store|recompute]
#include <cmath>
#include <map>

#include "bench_util.h"
#include "model/backward.h"
#include "model/checkpoint.h"
#include "model/llama.h"
#include "split/importance.h"

using namespace moefy;
using namespace moefy::bench;

namespace {

struct Shape {
    int64_t N, K;
    bool operator<(const Shape& o) const { return N != o.N ? N < o.N : K < o.K; }
};

// Each weight's [N, K] and how often it occurs in one pass.
std::map<Shape, int> weight_shapes(const Model& m) {
    std::map<Shape, int> s;
    const ModelConfig& c = m.config();
    for (int l = 0; l < c.num_layers; ++l) {
        const LayerWeights& L = m.layer(l);
        for (const WeightRef* w : {&L.q, &L.k, &L.v, &L.o, &L.ffn.gate, &L.ffn.up, &L.ffn.down}) ++s[{w->rows, w->cols}];
    }
    ++s[{m.lm_head_weight().rows, m.lm_head_weight().cols}];
    return s;
}

// sgemm floor: all products of one forward (x·Wᵀ) and one backward (dy·W) at
// M = T, total flops over the summed best sgemm times.
double sgemm_floor(const std::map<Shape, int>& shapes, int T, double min_seconds) {
    double flops = 0, time = 0;
    for (const auto& [s, count] : shapes)
        for (bool trans : {true, false}) {
            const double g = sgemm_gflops(T, trans ? s.N : s.K, trans ? s.K : s.N, trans, min_seconds);
            const double f = 2.0 * T * double(s.N) * double(s.K) * count;
            fmt::print("  sgemm [{} x {}] x [{} x {}]{}: {:.1f} GFLOP/s (x{})\n", T, trans ? s.K : s.N, trans ? s.N : s.K,
                       trans ? s.K : s.N, trans ? "^T" : "", g, count);
            flops += f;
            time += f / (g * 1e9);
        }
    return flops / time / 1e9;
}

double weights_bytes_bf16(const ModelConfig& c) {
    const double H = c.hidden_size, I = c.intermediate_size, V = c.vocab_size, L = c.num_layers;
    const double Qd = double(c.num_heads) * c.head_dim, KVd = double(c.num_kv_heads) * c.head_dim;
    return 2.0 * (2 * V * H + L * (2 * H * Qd + 2 * H * KVd + 3 * H * I + 2 * H) + H);
}

void print_memory(const char* name, const ModelConfig& c, int T) {
    const double GiB = 1073741824.0, w = weights_bytes_bf16(c);
    for (bool store : {true, false}) {
        const BackwardMemory m = Backprop::memory(c, T, store);
        fmt::print("  {:<28} ctx {:5}  {:<9}  activations {:6.2f} GiB (checkpoints {:.2f}, layers {:.2f}, scratch {:.2f})"
                   "  + BF16 weights {:5.2f} GiB = {:6.2f} GiB\n",
                   name, T, store ? "store" : "recompute", m.total() / GiB, m.checkpoints / GiB, m.layer_acts / GiB,
                   m.scratch / GiB, w / GiB, (m.total() + w) / GiB);
    }
}

}  // namespace

int main(int argc, char** argv) {
    bool quick = false;
    int layers = -1, ctx = 512, seqs = -1;
    std::string memory = "auto";
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--quick") quick = true;
        else if (a == "--layers" && i + 1 < argc) layers = std::atoi(argv[++i]);
        else if (a == "--ctx" && i + 1 < argc) ctx = std::atoi(argv[++i]);
        else if (a == "--seqs" && i + 1 < argc) seqs = std::atoi(argv[++i]);
        else if (a == "--memory" && i + 1 < argc) memory = argv[++i];
        else {
            fmt::print(stderr, "usage: bench_importance [--quick] [--layers N] [--ctx T] [--seqs N] [--memory auto|store|recompute]\n");
            return 2;
        }
    }
    Synth s;
    s.L = layers > 0 ? layers : (quick ? 4 : 22);
    seqs = seqs > 0 ? seqs : (quick ? 1 : 2);
    try {
        BackwardOptions bo;
        bo.memory = parse_activation_memory(memory);
        fmt::print("bench_importance: ctx {}, {} sequence(s), {} pool threads (1 OpenBLAS thread each), config: {}\n", ctx, seqs,
                   parallel_threads(), openblas_get_config());
        TempPath dir{(std::filesystem::temp_directory_path() / fmt::format("moefy-bench-importance-{}", getpid())).string()};
        double t0 = now();
        write_synthetic_forked(dir.path, s);
        fmt::print("synthetic model: {} layers, hidden {}, intermediate {}, heads {}/{}, vocab {} written in {:.1f} s\n",
                   s.L, s.H, s.I, s.heads, s.kv, s.V, now() - t0);

        Checkpoint ck = Checkpoint::open(dir.path);
        auto model = Model::load(ck);
        const ModelConfig& c = model->config();
        Backprop bp(*model, bo);
        ImportanceSums sums;
        sums.resize(c.num_layers, c.intermediate_size);
        ImportanceAccumulator acc(sums, {});
        Rng rng(42);
        std::vector<int32_t> tok(static_cast<size_t>(ctx));
        auto fill = [&] {
            for (auto& t : tok) t = int32_t(rng.below(uint64_t(c.vocab_size)));
        };
        fill();
        bp.run(tok.data(), ctx, &acc);  // warm-up: page in the weights, size the buffers
        t0 = now();
        double nll = 0;
        for (int i = 0; i < seqs; ++i) {
            fill();
            nll += bp.run(tok.data(), ctx, &acc);
        }
        const double t_bwd = (now() - t0) / seqs;
        if (!std::isfinite(nll)) fmt::print(stderr, "warning: NLL is not finite\n");
        t0 = now();
        for (int i = 0; i < seqs; ++i) {
            fill();
            model->nll_sum(tok.data(), ctx);
        }
        const double t_fwd = (now() - t0) / seqs;
        const double rss = peak_rss_bytes();

        const double P = model->matmul_params_per_token(), T = ctx;
        const double A = double(c.num_layers) * double(c.num_heads) * c.head_dim * T * (T + 1);
        const double fwd = 2 * P * T + 2 * A, bwd = 2 * P * T + 4 * A;
        const bool store = bp.stores_all(ctx);
        const double lm = double(c.vocab_size) * c.hidden_size;
        const double executed = fwd + bwd + (store ? 0.0 : 2 * (P - lm) * T * double(c.num_layers - 1) / c.num_layers + 2 * A);

        fmt::print("sgemm floor at M = {} (forward x·W^T and backward dy·W shapes):\n", ctx);
        const double floor = sgemm_floor(weight_shapes(*model), ctx, quick ? 0.2 : 0.5);
        const double useful = (fwd + bwd) / t_bwd / 1e9;
        fmt::print("\n== synthetic LLaMA {} layers (BF16), ctx {}, activations: {} ==\n", s.L, ctx, store ? "store" : "recompute");
        fmt::print("  matmul params/token {:.3f} G; FLOPs per window: forward {:.1f} G, backward {:.1f} G\n", P / 1e9,
                   fwd / 1e9, bwd / 1e9);
        fmt::print("  {:<40} {:>10.1f}\n", "forward + backward tokens/s", T / t_bwd);
        fmt::print("  {:<40} {:>10.1f}   ({:.0f}% of the sgemm floor {:.1f})\n", "forward + backward GFLOP/s (useful)", useful,
                   100 * useful / floor, floor);
        fmt::print("  {:<40} {:>10.1f}\n", "  executed GFLOP/s", executed / t_bwd / 1e9);
        fmt::print("  {:<40} {:>10.1f}   ({:.0f}% of the floor); fwd+bwd takes {:.2f}x the forward\n",
                   "engine forward only (nll_sum) GFLOP/s", fwd / t_fwd / 1e9, 100 * fwd / t_fwd / 1e9 / floor, t_bwd / t_fwd);
        fmt::print("  {:<40} {:>10.2f} GiB (weights {:.2f} GiB, mapped)\n", "peak RSS", rss / 1073741824.0,
                   double(model->weight_bytes()) / 1073741824.0);

        fmt::print("\nactivation memory (computed, Backprop::memory):\n");
        print_memory("this model", c, ctx);
        ModelConfig b7;  // LLaMA-2-7B shape
        b7.num_layers = 32, b7.hidden_size = 4096, b7.intermediate_size = 11008, b7.num_heads = 32, b7.num_kv_heads = 32;
        b7.head_dim = 128, b7.vocab_size = 32000;
        print_memory("7B (LLaMA-2 shape)", b7, 2048);
        const BackwardMemory st = Backprop::memory(b7, 2048, true);
        fmt::print("  -> 7B at ctx 2048 with the default budget ({} GiB of stored activations): {}\n",
                   BackwardOptions{}.store_budget_bytes >> 30,
                   st.checkpoints + st.layer_acts <= BackwardOptions{}.store_budget_bytes ? "store" : "recompute");
    } catch (const std::exception& e) {
        fmt::print(stderr, "bench_importance: {}\n", e.what());
        return 1;
    }
    return 0;
}
