// Backward of causal self-attention (model/backward.h). Per head, with
// S = scale·Q·Kᵀ (masked), P = softmax(S), O = P·V and dO given:
//   dP = dO·Vᵀ,  D_i = Σ_j P_ij dP_ij,  dS = P ⊙ (dP - D),
//   dQ = scale·dS·K,  dK = scale·dSᵀ·Q,  dV = Pᵀ·dO.
// P is recomputed from q and k: pass 1 (per query block and head) forms whole
// softmax rows, writes dQ and keeps each row's log-sum-exp and D; pass 2 (per
// key block and kv head) rebuilds P = exp(S - lse) tile by tile and adds the
// tiles of every query block and every head of the group into dK and dV.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include <cblas.h>

#include "model/backward.h"
#include "common/parallel.h"

namespace moefy::layers {

namespace {

constexpr int kBlock = 64;  // queries (pass 1) / keys (pass 2) per task

struct Range {
    int lo, hi;
};
// Keys visible to query i: j in (i - window, i].
inline Range keys_of(int i, int T, const std::optional<int>& window) {
    const int lo = window ? std::max(0, i - *window + 1) : 0;
    return {lo, std::min(T, i + 1)};
}

// Pass 1: one (query block, head) pair. p, dp: [tb, nk] scratch.
void dq_block(const AttnShape& s, const float* q, const float* k, const float* v, int T, const float* dout, int t0,
              int h, float* dq, float* lse, float* dsum, std::vector<float>& p, std::vector<float>& dp) {
    const int d = s.head_dim, qld = s.heads * d, kld = s.kv_heads * d, g = h / (s.heads / s.kv_heads);
    const float scale = 1.0f / std::sqrt(float(d));
    const int tb = std::min(kBlock, T - t0);
    const int lo = keys_of(t0, T, s.window).lo, hi = keys_of(t0 + tb - 1, T, s.window).hi, nk = hi - lo;
    p.resize(size_t(tb) * size_t(nk));
    dp.resize(size_t(tb) * size_t(nk));
    const float* kb = k + size_t(lo) * kld + size_t(g) * d;
    const float* vb = v + size_t(lo) * kld + size_t(g) * d;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, tb, nk, d, scale, q + size_t(t0) * qld + size_t(h) * d, qld, kb,
                kld, 0.0f, p.data(), nk);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, tb, nk, d, 1.0f, dout + size_t(t0) * qld + size_t(h) * d, qld,
                vb, kld, 0.0f, dp.data(), nk);
    for (int i = 0; i < tb; ++i) {
        const Range r = keys_of(t0 + i, T, s.window);
        const int a = r.lo - lo, b = r.hi - lo;
        float* row = p.data() + size_t(i) * nk;
        float* drow = dp.data() + size_t(i) * nk;
        if (b <= a) {  // no visible key (a window of 0): no gradient
            std::fill(drow, drow + nk, 0.0f);
            lse[size_t(t0 + i) * s.heads + h] = 0.0f, dsum[size_t(t0 + i) * s.heads + h] = 0.0f;
            continue;
        }
        float m = row[a];
        for (int j = a + 1; j < b; ++j) m = std::max(m, row[j]);
        float sum = 0.0f;
        for (int j = a; j < b; ++j) sum += (row[j] = std::exp(row[j] - m));
        const float inv = 1.0f / sum;
        double D = 0.0;
        for (int j = a; j < b; ++j) D += double(row[j] *= inv) * double(drow[j]);
        for (int j = a; j < b; ++j) drow[j] = row[j] * (drow[j] - float(D));
        std::fill(drow, drow + a, 0.0f);
        std::fill(drow + b, drow + nk, 0.0f);
        lse[size_t(t0 + i) * s.heads + h] = m + std::log(sum);
        dsum[size_t(t0 + i) * s.heads + h] = float(D);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, tb, d, nk, scale, dp.data(), nk, kb, kld, 0.0f,
                dq + size_t(t0) * qld + size_t(h) * d, qld);
}

// Pass 2: one (key block, kv head) pair: dK and dV of keys [j0, j0 + jb).
void dkv_block(const AttnShape& s, const float* q, const float* k, const float* v, int T, const float* dout, int j0,
               int g, const float* lse, const float* dsum, float* dk, float* dv, std::vector<float>& p,
               std::vector<float>& dp) {
    const int d = s.head_dim, qld = s.heads * d, kld = s.kv_heads * d, group = s.heads / s.kv_heads;
    const float scale = 1.0f / std::sqrt(float(d));
    const int jb = std::min(kBlock, T - j0);
    // Queries that see some key of the block: i >= j0 and, with a window, i < j0 + jb - 1 + window.
    const int qlo = j0, qhi = s.window ? std::min(T, j0 + jb - 1 + *s.window) : T;
    const float* kb = k + size_t(j0) * kld + size_t(g) * d;
    const float* vb = v + size_t(j0) * kld + size_t(g) * d;
    float* dkb = dk + size_t(j0) * kld + size_t(g) * d;
    float* dvb = dv + size_t(j0) * kld + size_t(g) * d;
    for (int j = 0; j < jb; ++j) {
        std::fill(dkb + size_t(j) * kld, dkb + size_t(j) * kld + d, 0.0f);
        std::fill(dvb + size_t(j) * kld, dvb + size_t(j) * kld + d, 0.0f);
    }
    p.resize(size_t(kBlock) * size_t(jb));
    dp.resize(size_t(kBlock) * size_t(jb));
    for (int h = g * group; h < (g + 1) * group; ++h) {
        for (int q0 = qlo; q0 < qhi; q0 += kBlock) {
            const int qn = std::min(kBlock, qhi - q0);
            const float* qb = q + size_t(q0) * qld + size_t(h) * d;
            const float* ob = dout + size_t(q0) * qld + size_t(h) * d;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, qn, jb, d, scale, qb, qld, kb, kld, 0.0f, p.data(), jb);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, qn, jb, d, 1.0f, ob, qld, vb, kld, 0.0f, dp.data(), jb);
            for (int i = 0; i < qn; ++i) {
                const Range r = keys_of(q0 + i, T, s.window);
                const int a = std::clamp(r.lo - j0, 0, jb), b = std::clamp(r.hi - j0, a, jb);
                float* row = p.data() + size_t(i) * jb;
                float* drow = dp.data() + size_t(i) * jb;
                const float L = lse[size_t(q0 + i) * s.heads + h], D = dsum[size_t(q0 + i) * s.heads + h];
                for (int j = a; j < b; ++j) {
                    row[j] = std::exp(row[j] - L);
                    drow[j] = row[j] * (drow[j] - D);
                }
                std::fill(row, row + a, 0.0f), std::fill(row + b, row + jb, 0.0f);
                std::fill(drow, drow + a, 0.0f), std::fill(drow + b, drow + jb, 0.0f);
            }
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, jb, d, qn, 1.0f, p.data(), jb, ob, qld, 1.0f, dvb, kld);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, jb, d, qn, scale, dp.data(), jb, qb, qld, 1.0f, dkb, kld);
        }
    }
}

}  // namespace

void attention_backward(const AttnShape& s, const float* q, const float* k, const float* v, int T, const float* dout,
                        float* dq, float* dk, float* dv, float* stats) {
    float* lse = stats;                         // [T, heads]
    float* dsum = stats + size_t(T) * s.heads;  // [T, heads]
    const int blocks = (T + kBlock - 1) / kBlock;
    // Threads only when there is more than a few microseconds of work. Blocks
    // with the most work first: late query blocks in pass 1, early key blocks in pass 2.
    const bool par = size_t(T) * size_t(T) * size_t(s.heads) * size_t(s.head_dim) > (size_t(1) << 16);
    std::atomic<int> next{0};
    parallel_run(
        [&](int, int) {
            thread_local std::vector<float> p, dp;
            for (int pair = next++; pair < blocks * s.heads; pair = next++)
                dq_block(s, q, k, v, T, dout, (blocks - 1 - pair / s.heads) * kBlock, pair % s.heads, dq, lse, dsum, p, dp);
        },
        par);
    // pass 2 reads every row's lse and D: a second parallel run (the first one's end is the barrier)
    next = 0;
    parallel_run(
        [&](int, int) {
            thread_local std::vector<float> p, dp;
            for (int pair = next++; pair < blocks * s.kv_heads; pair = next++)
                dkv_block(s, q, k, v, T, dout, (pair / s.kv_heads) * kBlock, pair % s.kv_heads, lse, dsum, dk, dv, p, dp);
        },
        par);
}

}  // namespace moefy::layers
