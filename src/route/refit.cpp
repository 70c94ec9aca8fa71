// Expert refit: the masked ridge regression of refit.h, per layer.
#include "route/refit.h"

#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "common/error.h"
#include "common/parallel.h"
#include "model/llama.h"
#include "route/fitted_router.h"
#include "route/build_routers.h"
#include "split/expert_plan.h"

extern "C" void dposv_(const char* uplo, const int* n, const int* nrhs, double* a, const int* lda, double* b, const int* ldb,
                       int* info);

namespace moefy {

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// S[I, I] += Xᵀ Y for X, Y [n, I] (f32 product, f64 sums).
void add_tn(std::vector<double>& S, const float* X, const float* Y, int n, int I, std::vector<float>& tmp) {
    tmp.resize(size_t(I) * I);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, I, I, n, 1.0f, X, I, Y, I, 0.0f, tmp.data(), I);
    for (size_t i = 0; i < tmp.size(); ++i) S[i] += double(tmp[i]);
}

// ⟨P, Q⟩ for [H, I] matrices.
double frob(const double* P, const double* Q, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; ++i) s += P[i] * Q[i];
    return s;
}

// R[H, I] = W[H, I] · S[I, I] in f64.
std::vector<double> times(const std::vector<double>& W, const std::vector<double>& S, int H, int I) {
    std::vector<double> R(size_t(H) * I);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, H, I, I, 1.0, W.data(), I, S.data(), I, 0.0, R.data(), I);
    return R;
}

double mean_diag(const std::vector<double>& A, int I) {
    double tr = 0;
    for (int i = 0; i < I; ++i) tr += A[size_t(i) * I + i];
    return tr / std::max(1, I);
}

}  // namespace

std::vector<RefitRouting> refit_routing(const RouterBuild& rb, int top_k, CombineRule combine, double shared_weight) {
    if (rb.scales.size() != rb.routers.size()) fail("refit: {} routers but {} scales", rb.routers.size(), rb.scales.size());
    std::vector<RefitRouting> out;
    for (size_t l = 0; l < rb.routers.size(); ++l) {
        RefitRouting r;
        r.router = rb.routers[l];
        r.top_k = top_k;
        r.weighting = rb.weighting;
        r.over_all = combine == CombineRule::SoftmaxAll;
        r.scale = rb.scales[l];
        r.shared_weight = shared_weight;
        out.push_back(std::move(r));
    }
    return out;
}

void masked_activations(const LayerPlan& lp, const RefitRouting& r, const float* x, const float* h, int n, int I, float* z) {
    const int E = int(lp.experts.size()), k = r.top_k;
    if (r.router.num_experts != E) fail("refit: the router has {} experts, the plan {}", r.router.num_experts, E);
    if (k < 1 || k > E) fail("refit: top-k {} with {} experts", k, E);
    std::vector<float> logits(size_t(n) * E), w(size_t(n) * k);
    std::vector<int32_t> sel(size_t(n) * k);
    router_forward(r.router, x, n, logits.data());
    route_topk(logits.data(), n, E, k, r.weighting, sel.data(), w.data(), r.over_all);
    std::fill_n(z, size_t(n) * I, 0.0f);
    const float omega = float(r.shared_weight), scale = float(r.scale);
    parallel_for_each(n, [&](int64_t t) {
        const float* ht = h + size_t(t) * I;
        float* zt = z + size_t(t) * I;
        for (int j = 0; j < k; ++j) {
            const int e = sel[size_t(t) * k + j];
            const float wt = w[size_t(t) * k + j] * scale;
            for (int32_t nid : lp.experts[size_t(e)]) zt[nid] += wt * ht[nid];
        }
        for (const auto& s : lp.shared)
            for (int32_t nid : s) zt[nid] += omega * ht[nid];
    });
}

RefitLayerStats::RefitLayerStats(int width) : I(width) {
    const size_t n = size_t(width) * size_t(width);
    A.assign(n, 0.0);
    C.assign(n, 0.0);
    Av.assign(n, 0.0);
    Cv.assign(n, 0.0);
}

void accumulate_refit(RefitLayerStats& s, const float* W0, int H, const float* h, const float* z, int n, bool held_out) {
    if (n <= 0) return;
    const int I = s.I;
    std::vector<float> tmp;
    add_tn(held_out ? s.Av : s.A, z, z, n, I, tmp);
    add_tn(held_out ? s.Cv : s.C, h, z, n, I, tmp);
    if (!held_out) {
        s.tokens += size_t(n);
        return;
    }
    // y [n, H] = h W0ᵀ: only its energy is needed.
    std::vector<float> y(size_t(n) * H);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, H, I, 1.0f, h, I, W0, I, 0.0f, y.data(), H);
    double yy = 0;
    for (float v : y) yy += double(v) * v;
    s.yy_val += yy;
    s.val_tokens += size_t(n);
}

std::vector<float> solve_refit(const std::vector<double>& A, const std::vector<double>& C, const float* W0, int H, int I,
                               double lambda) {
    const size_t II = size_t(I) * I;
    if (A.size() != II || C.size() != II) fail("refit: statistics of the wrong size ({} and {} for width {})", A.size(), C.size(), I);
    // (A + λI) W'ᵀ = (C + λI)ᵀ W0ᵀ. B = W0 C + λ W0 is [H, I] row-major, i.e. the
    // column-major [I, H] right-hand side LAPACK wants; A is symmetric.
    std::vector<double> W(W0, W0 + size_t(H) * I);
    std::vector<double> B = times(W, C, H, I);
    for (size_t i = 0; i < B.size(); ++i) B[i] += lambda * W[i];
    std::vector<double> M(A);
    for (int i = 0; i < I; ++i) M[size_t(i) * I + i] += lambda;
    int n = I, nrhs = H, info = 0;
    dposv_("L", &n, &nrhs, M.data(), &n, B.data(), &n, &info);
    if (info != 0) fail("refit: the normal matrix plus λ = {:g} is not positive definite (LAPACK dposv info {})", lambda, info);
    std::vector<float> out(B.size());
    for (size_t i = 0; i < B.size(); ++i) out[i] = float(B[i]);
    return out;
}

RefitLayerReport refit_layer(const RefitLayerStats& s, const float* W0, int H, const RefitOptions& opt, std::vector<float>& out) {
    const int I = s.I;
    const size_t HI = size_t(H) * I;
    RefitLayerReport rep;
    rep.tokens = s.tokens;
    rep.val_tokens = s.val_tokens;
    out.assign(W0, W0 + HI);
    if (s.tokens == 0) return rep;
    const double md = mean_diag(s.A, I);
    if (!(md > 0)) return rep;  // nothing routed: keep W0

    std::vector<double> W(W0, W0 + HI);
    auto val_error = [&](const std::vector<double>& Wp, const std::vector<double>& W0Cv) {
        const std::vector<double> WA = times(Wp, s.Av, H, I);
        return s.yy_val - 2 * frob(W0Cv.data(), Wp.data(), HI) + frob(WA.data(), Wp.data(), HI);
    };
    const double yy = s.yy_val > 0 ? s.yy_val : 1.0;
    double best_err = INFINITY, best_rho = 0;
    if (s.val_tokens > 0) {
        const std::vector<double> W0Cv = times(W, s.Cv, H, I);
        const double before = val_error(W, W0Cv);
        rep.val_rel_error_before = before / yy;
        best_err = before;
        for (double rho : opt.ridge_grid) {
            std::vector<float> Wf;
            try {
                Wf = solve_refit(s.A, s.C, W0, H, I, rho * md);
            } catch (const Error&) {
                continue;  // too small a ridge for this data: larger ones follow
            }
            const std::vector<double> Wp(Wf.begin(), Wf.end());
            const double e = val_error(Wp, W0Cv);
            if (e < best_err) best_err = e, best_rho = rho;
        }
        rep.val_rel_error_after = best_err / yy;
        if (best_rho == 0) return rep;  // W0 is best on the held-out tokens
    } else {
        best_rho = opt.ridge_grid.empty() ? 1e-3 : opt.ridge_grid[opt.ridge_grid.size() / 2];
    }
    // Final solve on all tokens with the chosen ρ.
    std::vector<double> A(s.A), C(s.C);
    for (size_t i = 0; i < A.size(); ++i) A[i] += s.Av[i], C[i] += s.Cv[i];
    rep.ridge = best_rho;
    rep.lambda = best_rho * mean_diag(A, I);
    out = solve_refit(A, C, W0, H, I, rep.lambda);
    rep.refitted = true;
    return rep;
}

namespace {

// Feeds kept batches into per-layer refit statistics; 1 token in val_every is held out.
// Adds n kept tokens to a layer's sums, split into training and held-out
// tokens by their running index `seen` (advanced by n).
void add_refit_rows(RefitLayerStats& st, size_t& seen, const LayerPlan& lp, const RefitRouting& r, const float* W0, int H,
                    const float* x, const float* h, int n, int val_every) {
    const int I = st.I;
    std::vector<float> z(size_t(n) * I);
    masked_activations(lp, r, x, h, n, I, z.data());
    std::vector<float> ht, zt, hv, zv;
    const size_t ve = size_t(val_every);
    for (int t = 0; t < n; ++t) {
        const bool val = (seen + size_t(t)) % ve == ve - 1;
        auto& hd = val ? hv : ht;
        auto& zd = val ? zv : zt;
        hd.insert(hd.end(), h + size_t(t) * I, h + size_t(t + 1) * I);
        zd.insert(zd.end(), z.begin() + long(size_t(t) * I), z.begin() + long(size_t(t + 1) * I));
    }
    seen += size_t(n);
    accumulate_refit(st, W0, H, ht.data(), zt.data(), int(ht.size() / size_t(I)), false);
    accumulate_refit(st, W0, H, hv.data(), zv.data(), int(hv.size() / size_t(I)), true);
}

struct RefitAccumulator {
    const ExpertPlan& plan;
    const std::vector<RefitRouting>& routing;
    const RefitOptions& opt;
    std::vector<std::vector<float>> W0;  // [layer] [H, I]
    std::vector<RefitLayerStats> stats;
    std::vector<size_t> seen;            // [layer] kept tokens so far
    int H = 0, I = 0;

    RefitAccumulator(const Model& dense, const ExpertPlan& p, const std::vector<RefitRouting>& r, const RefitOptions& o)
        : plan(p), routing(r), opt(o) {
        const ModelConfig& cfg = dense.config();
        H = cfg.hidden_size;
        I = cfg.intermediate_size;
        if (plan.num_layers != cfg.num_layers || plan.intermediate_size != I || plan.hidden_size != H)
            fail("refit: the expert plan is for {} layers of {} x {}, the model has {} layers of {} x {}", plan.num_layers,
                 plan.hidden_size, plan.intermediate_size, cfg.num_layers, H, I);
        if (int(routing.size()) != cfg.num_layers) fail("refit: routing for {} layers, the model has {}", routing.size(), cfg.num_layers);
        if (opt.val_every < 2) fail("refit: val_every must be at least 2 (one held-out token in val_every)");
        for (int l = 0; l < cfg.num_layers; ++l) {
            W0.push_back(dense_down_f32(dense, l));
            stats.emplace_back(I);
        }
        seen.assign(size_t(cfg.num_layers), 0);
    }

    void add(int l, const float* x, const float* h, int n) {
        add_refit_rows(stats[size_t(l)], seen[size_t(l)], plan.layers[size_t(l)], routing[size_t(l)], W0[size_t(l)].data(), H, x,
                       h, n, opt.val_every);
    }

    RefitResult solve(const RefitProgress& progress) {
        RefitResult r;
        const int L = int(stats.size());
        r.down.resize(size_t(L));
        for (int l = 0; l < L; ++l) {
            r.layers.push_back(refit_layer(stats[size_t(l)], W0[size_t(l)].data(), H, opt, r.down[size_t(l)]));
            stats[size_t(l)] = RefitLayerStats();  // free the I×I sums
            if (progress) progress("refit", double(l + 1), double(L));
        }
        return r;
    }
};

}  // namespace

RefitResult refit_down_projections(Model& dense, const ExpertPlan& plan, const std::vector<RefitRouting>& routing,
                                   const std::vector<TokenWindow>& windows, const RefitOptions& opt, const RefitProgress& progress) {
    const auto t0 = Clock::now();
    RefitAccumulator acc(dense, plan, routing, opt);
    for_each_kept_batch(
        dense, windows, opt.max_tokens, [&](int l, const float* x, const float* h, int n) { acc.add(l, x, h, n); },
        [&](size_t d, size_t t) {
            if (progress) progress("refit: activations", double(d), double(t));
        });
    const double ts = since(t0);
    const auto t1 = Clock::now();
    RefitResult r = acc.solve(progress);
    r.seconds_stats = ts;
    r.seconds_solve = since(t1);
    return r;
}

RefitResult refit_from_acts(const Model& dense, const ExpertPlan& plan, const std::vector<RefitRouting>& routing,
                            const std::vector<DenseLayerActs>& acts, const RefitOptions& opt) {
    const auto t0 = Clock::now();
    RefitAccumulator acc(dense, plan, routing, opt);
    if (acts.size() != acc.stats.size()) fail("refit: activations of {} layers for {} layers", acts.size(), acc.stats.size());
    for (size_t l = 0; l < acts.size(); ++l) {
        const DenseLayerActs& a = acts[l];
        const int n = std::min<int>(a.N, int(opt.max_tokens));
        for (int t0b = 0; t0b < n; t0b += 512) {
            const int m = std::min(512, n - t0b);
            acc.add(int(l), a.x.data() + size_t(t0b) * a.H, a.h.data() + size_t(t0b) * a.I, m);
        }
    }
    const double ts = since(t0);
    const auto t1 = Clock::now();
    RefitResult r = acc.solve({});
    r.seconds_stats = ts;
    r.seconds_solve = since(t1);
    return r;
}

RefitLayerReport refit_layer_from_acts(const LayerPlan& lp, const RefitRouting& r, const float* W0, int H, const DenseLayerActs& a,
                                       const RefitOptions& opt, std::vector<float>& out) {
    if (opt.val_every < 2) fail("refit: val_every must be at least 2 (one held-out token in val_every)");
    RefitLayerStats st(a.I);
    size_t seen = 0;
    const int n = std::min<int>(a.N, int(opt.max_tokens));
    for (int t0 = 0; t0 < n; t0 += 512) {
        const int m = std::min(512, n - t0);
        add_refit_rows(st, seen, lp, r, W0, H, a.x.data() + size_t(t0) * a.H, a.h.data() + size_t(t0) * a.I, m, opt.val_every);
    }
    return refit_layer(st, W0, H, opt, out);
}

}  // namespace moefy
