#include "route/scale_fit.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/error.h"
#include "common/parallel.h"
#include "model/moe_ffn.h"
#include "route/fitted_router.h"

namespace moefy {

namespace {

// w[j] = softmax(β·z)[sel_j], over the k selected logits or over all E.
void softmax_weights(const float* z, int E, const int32_t* st, int k, double beta, bool over_all, float* wt) {
    const float mx = z[st[0]];  // the largest logit
    double sum = 0;
    if (over_all)
        for (int e = 0; e < E; ++e) sum += std::exp(beta * double(z[e] - mx));
    else
        for (int j = 0; j < k; ++j) sum += std::exp(beta * double(z[st[j]] - mx));
    for (int j = 0; j < k; ++j) wt[j] = float(std::exp(beta * double(z[st[j]] - mx)) / sum);
}

}  // namespace

void route_topk(const float* logits, int N, int E, int k, Weighting weighting, int32_t* sel, float* w, bool over_all) {
    parallel_for_each(N, [&](int64_t t) {
        const float* z = logits + size_t(t) * E;
        int32_t* st = sel + size_t(t) * k;
        float* wt = w + size_t(t) * k;
        topk_desc(z, E, k, st);
        if (weighting == Weighting::Uniform)
            for (int j = 0; j < k; ++j) wt[j] = 1.0f;
        else
            softmax_weights(z, E, st, k, 1.0, over_all, wt);
    });
}

ScaleTerms scale_terms(const LayerCalib& c, const int32_t* sel, const float* w, int k) {
    // Sums over fixed chunks of tokens, added in chunk order: the same bits for any
    // thread count (per-thread partial sums would depend on it).
    constexpr int kChunk = 256;
    const int chunks = (c.N + kChunk - 1) / kChunk;
    std::vector<double> rr_c(size_t(chunks), 0.0), num_c(size_t(chunks), 0.0), den_c(size_t(chunks), 0.0);
    parallel_for_each(chunks, [&](int64_t ch) {
        for (int t = int(ch) * kChunk; t < std::min(c.N, int(ch + 1) * kChunk); ++t) {
            double& rr = rr_c[size_t(ch)];
            double& num = num_c[size_t(ch)];
            double& den = den_c[size_t(ch)];
            const int32_t* st = sel + size_t(t) * k;
            const float* wt = w + size_t(t) * k;
            rr += c.rr[size_t(t)];
            for (int j = 0; j < k; ++j) {
                if (st[j] < 0) continue;
                num += double(wt[j]) * c.b[size_t(t) * c.E + size_t(st[j])];
                for (int i = 0; i < k; ++i)
                    if (st[i] >= 0) den += double(wt[j]) * wt[i] * c.g(t, st[j], st[i]);
            }
        }
    });
    double rr = 0, num = 0, den = 0;
    for (int ch = 0; ch < chunks; ++ch) rr += rr_c[size_t(ch)], num += num_c[size_t(ch)], den += den_c[size_t(ch)];
    ScaleTerms s;
    s.rr = rr;
    s.num = num;
    s.den = den;
    s.tokens = size_t(c.N);
    return s;
}

std::vector<float> calib_logits(const LayerCalib& c, const RouterWeights& r) {
    std::vector<float> z(size_t(c.N) * c.E);
    router_forward(r, c.x.data(), c.N, z.data());
    return z;
}

ScaleTerms logits_scale_terms(const LayerCalib& c, const std::vector<float>& logits, int k, Weighting weighting, bool over_all) {
    std::vector<int32_t> sel(size_t(c.N) * k);
    std::vector<float> w(size_t(c.N) * k);
    route_topk(logits.data(), c.N, c.E, k, weighting, sel.data(), w.data(), over_all);
    return scale_terms(c, sel.data(), w.data(), k);
}

namespace {

// Error of softmax weighting at logit scale beta, the selection fixed (top-k is
// invariant to a positive scale).
double temperature_error(const LayerCalib& c, const std::vector<float>& logits, const std::vector<int32_t>& sel, int k,
                         bool over_all, double beta, double fixed_scale, ScaleTerms* out) {
    std::vector<float> w(size_t(c.N) * k);
    parallel_for_each(c.N, [&](int64_t t) {
        softmax_weights(logits.data() + size_t(t) * c.E, c.E, sel.data() + size_t(t) * k, k, beta, over_all, w.data() + size_t(t) * k);
    });
    ScaleTerms s = scale_terms(c, sel.data(), w.data(), k);
    if (out) *out = s;
    return s.error(fixed_scale > 0 ? fixed_scale : s.best_scale());
}

}  // namespace

double fit_logit_temperature(const LayerCalib& c, const std::vector<float>& logits, int k, bool over_all, double fixed_scale,
                             ScaleTerms* terms, double lo, double hi) {
    if (!(lo > 0 && hi > lo)) fail("logit temperature search: bad range [{}, {}]", lo, hi);
    std::vector<int32_t> sel(size_t(c.N) * k);
    std::vector<float> w(size_t(c.N) * k);
    route_topk(logits.data(), c.N, c.E, k, Weighting::Uniform, sel.data(), w.data());
    // Coarse grid in log β, then golden-section search around the best point.
    const int steps = 13;
    double best_u = 0, best_err = INFINITY;
    const double a = std::log(lo), b = std::log(hi);
    for (int i = 0; i < steps; ++i) {
        const double u = a + (b - a) * i / (steps - 1);
        const double e = temperature_error(c, logits, sel, k, over_all, std::exp(u), fixed_scale, nullptr);
        if (e < best_err) best_err = e, best_u = u;
    }
    const double h = (b - a) / (steps - 1);
    double x0 = std::max(a, best_u - h), x3 = std::min(b, best_u + h);
    const double gr = 0.6180339887498949;
    double x1 = x3 - gr * (x3 - x0), x2 = x0 + gr * (x3 - x0);
    double f1 = temperature_error(c, logits, sel, k, over_all, std::exp(x1), fixed_scale, nullptr);
    double f2 = temperature_error(c, logits, sel, k, over_all, std::exp(x2), fixed_scale, nullptr);
    for (int it = 0; it < 20; ++it) {
        if (f1 < f2) {
            x3 = x2, x2 = x1, f2 = f1;
            x1 = x3 - gr * (x3 - x0);
            f1 = temperature_error(c, logits, sel, k, over_all, std::exp(x1), fixed_scale, nullptr);
        } else {
            x0 = x1, x1 = x2, f1 = f2;
            x2 = x0 + gr * (x3 - x0);
            f2 = temperature_error(c, logits, sel, k, over_all, std::exp(x2), fixed_scale, nullptr);
        }
    }
    double u = f1 < f2 ? x1 : x2;
    if (std::min(f1, f2) > best_err) u = best_u;
    temperature_error(c, logits, sel, k, over_all, std::exp(u), fixed_scale, terms);
    return std::exp(u);
}

void scale_router_logits(RouterWeights& r, double beta) {
    std::vector<float>& m = r.is_mlp() ? r.w2 : r.w1;
    for (float& v : m) v = float(v * beta);
}

}  // namespace moefy
