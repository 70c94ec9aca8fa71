// Rotary position embeddings and causal (optionally sliding-window) attention.
#include <algorithm>
#include <cmath>

#include <cblas.h>

#include "model/layers.h"
#include "model/ops/attention_amx.h"
#include "model/ops/attention_f32.h"
#include "model/scratch.h"
#include "common/parallel.h"
#include "model/vec_math.h"

namespace moefy::layers {

namespace {

// From this many queries on, scores and outputs go through sgemm per head.
constexpr int kAttnGemmMinTokens = 16;
// Queries per block in the sgemm path: bounds the scores scratch to
// [kQueryBlock, S] and skips most of the keys the causal mask would hide.
constexpr int kQueryBlock = 64;
// Less work than this (multiply-adds) stays on one thread.
constexpr int64_t kParallelMinWork = int64_t(1) << 18;

// Keys [lo, hi) visible to the query at absolute position p.
struct KeyRange {
    int lo, hi;
};
inline KeyRange visible(int p, int S, int kpos0, const std::optional<int>& window) {
    int hi = std::min(S, p - kpos0 + 1);
    int lo = window ? std::max(0, p - *window + 1 - kpos0) : 0;
    return {lo, std::max(lo, hi)};
}

// In place over row[0..n): exp(row - max(row)); returns 1 / Σ (0 for n = 0,
// a row with no visible key).
float exp_row(float* row, int n) {
    if (n <= 0) return 0.0f;
    const float m = vmath::max_of(row, size_t(n));
    return 1.0f / vmath::exp_shifted(row, m, row, size_t(n));
}

// In place over row[0..n): softmax; a row with no visible key becomes all zero.
void softmax_row(float* row, int n) {
    const float inv = exp_row(row, n);
    for (int j = 0; j < n; ++j) row[j] *= inv;
}

// One query row t against its visible keys, for head h: o = softmax(q·Kᵀ/√d)·V.
void attend_one(const AttnShape& s, const float* q, int t, int h, int qpos0, const float* k, const float* v, int S,
                int kpos0, float* out, std::vector<float>& p) {
    const int d = s.head_dim, qld = s.heads * d, kld = s.kv_heads * d, g = h / (s.heads / s.kv_heads);
    const float scale = 1.0f / std::sqrt(float(d));
    const KeyRange r = visible(qpos0 + t, S, kpos0, s.window);
    if (p.size() < size_t(S)) p.resize(size_t(S));
    const float* qt = q + size_t(t) * qld + size_t(h) * d;
    for (int j = r.lo; j < r.hi; ++j) {
        const float* kj = k + size_t(j) * kld + size_t(g) * d;
        float acc = 0.0f;
        for (int i = 0; i < d; ++i) acc += qt[i] * kj[i];
        p[size_t(j - r.lo)] = acc * scale;
    }
    softmax_row(p.data(), r.hi - r.lo);
    float* o = out + size_t(t) * qld + size_t(h) * d;
    std::fill(o, o + d, 0.0f);
    for (int j = r.lo; j < r.hi; ++j) {
        const float pj = p[size_t(j - r.lo)];
        const float* vj = v + size_t(j) * kld + size_t(g) * d;
        for (int i = 0; i < d; ++i) o[i] += pj * vj[i];
    }
}

// Few queries (generation): every (query, head) pair on its own, keys read in place.
void attention_direct(const AttnShape& s, const float* q, int T, int qpos0, const float* k, const float* v, int S,
                      int kpos0, float* out) {
    const int64_t pairs = int64_t(T) * s.heads;
    parallel_for(
        pairs,
        [&](int64_t b, int64_t e) {
            thread_local std::vector<float> p;
            for (int64_t i = b; i < e; ++i) attend_one(s, q, int(i / s.heads), int(i % s.heads), qpos0, k, v, S, kpos0, out, p);
        },
        int64_t(T) * S * s.heads * s.head_dim >= kParallelMinWork);
}

// Many queries: per (query block, head) pair, scores = Q·Kᵀ and out = P·V,
// single-threaded on strided views of q, k, v: the AMX tiles of
// model/ops/attention_amx.h (keys and values split into their B layouts once
// per call) or the AVX-512 tiles of model/ops/attention_f32.h (keys transposed
// once per call) where they serve, else sgemm. The threads take the pairs in
// turn, heaviest blocks (most keys) first.
void attention_gemm(const AttnShape& s, const float* q, int T, int qpos0, const float* k, const float* v, int S,
                    int kpos0, float* out) {
    const int d = s.head_dim, qld = s.heads * d, kld = s.kv_heads * d, group = s.heads / s.kv_heads;
    const float scale = 1.0f / std::sqrt(float(d));
    const int blocks = (T + kQueryBlock - 1) / kQueryBlock;
    const bool amx = ops::attention_amx_serves(d);
    const bool own = !amx && ops::attention_kernels_serve(d);
    thread_local std::vector<uint32_t> kb_scratch, vb_scratch;
    uint32_t *kb = nullptr, *vb = nullptr;  // [kv_heads][amx_kv_size], the caller thread's
    const int64_t ldkv = amx ? ops::amx_kv_stride(S) : 0;
    const size_t kv_size = amx ? ops::amx_kv_size(S, d) : 0;
    if (amx) {
        kb = grow_aligned(kb_scratch, size_t(s.kv_heads) * kv_size);
        vb = grow_aligned(vb_scratch, size_t(s.kv_heads) * kv_size);
        parallel_for_each(
            s.kv_heads,
            [&](int64_t g) {
                ops::amx_prepare_kv(k + size_t(g) * d, v + size_t(g) * d, kld, S, d, kb + size_t(g) * kv_size, vb + size_t(g) * kv_size);
            },
            int64_t(S) * kld >= (1 << 16));
    }
    thread_local std::vector<float> kt_scratch;
    float* kt = nullptr;  // [kv_heads][d][ldkt], the caller thread's
    const int64_t ldkt = own ? ops::keys_transposed_stride(S) : 0;
    if (own) {
        kt = grow(kt_scratch, size_t(s.kv_heads) * size_t(d) * size_t(ldkt));
        parallel_for_each(
            s.kv_heads,
            [&](int64_t g) { ops::transpose_keys(k + size_t(g) * d, kld, S, d, kt + size_t(g) * d * size_t(ldkt), ldkt); },
            int64_t(S) * kld >= (1 << 16));
    }
    auto pair = [&](int idx, std::vector<float>& sc) {
        const int t0 = (blocks - 1 - idx / s.heads) * kQueryBlock, h = idx % s.heads, g = h / group;
        const int tb = std::min(kQueryBlock, T - t0);
        const int lo = visible(qpos0 + t0, S, kpos0, s.window).lo;
        const int hi = visible(qpos0 + t0 + tb - 1, S, kpos0, s.window).hi;
        const int nk = hi - lo;
        float* o = out + size_t(t0) * qld + size_t(h) * d;
        if (nk <= 0) {
            for (int i = 0; i < tb; ++i) std::fill(o + size_t(i) * qld, o + size_t(i) * qld + d, 0.0f);
            return;
        }
        const float* qb = q + size_t(t0) * qld + size_t(h) * d;
        if (amx) {
            int key_lo[kQueryBlock], key_hi[kQueryBlock];
            for (int i = 0; i < tb; ++i) {
                const KeyRange r = visible(qpos0 + t0 + i, S, kpos0, s.window);
                key_lo[i] = r.lo, key_hi[i] = r.hi;
            }
            ops::amx_attention_block(qb, qld, tb, kb + size_t(g) * kv_size, vb + size_t(g) * kv_size, ldkv, lo, nk, d, scale,
                                     key_lo, key_hi, o, qld);
            return;
        }
        if (sc.size() < size_t(tb) * size_t(nk)) sc.resize(size_t(tb) * size_t(nk));  // [tb, nk]
        if (own)
            ops::attention_scores(qb, qld, tb, kt + size_t(g) * d * size_t(ldkt) + size_t(lo), ldkt, nk, d, scale, sc.data(), nk);
        else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, tb, nk, d, scale, qb, qld, k + size_t(lo) * kld + size_t(g) * d,
                        kld, 0.0f, sc.data(), nk);
        // P = exp(scores - row max), unnormalised: each output row is divided by
        // its sum after P·V (d columns instead of nk)
        float inv_sum[kQueryBlock];
        for (int i = 0; i < tb; ++i) {
            const KeyRange r = visible(qpos0 + t0 + i, S, kpos0, s.window);
            float* row = sc.data() + size_t(i) * nk;
            const int a = r.lo - lo, b = r.hi - lo;
            std::fill(row, row + a, 0.0f);
            inv_sum[i] = exp_row(row + a, b - a);
            std::fill(row + b, row + nk, 0.0f);
        }
        if (own)
            ops::attention_apply(sc.data(), nk, tb, v + size_t(lo) * kld + size_t(g) * d, kld, nk, d, o, qld);
        else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, tb, d, nk, 1.0f, sc.data(), nk,
                        v + size_t(lo) * kld + size_t(g) * d, kld, 0.0f, o, qld);
        for (int i = 0; i < tb; ++i)
            for (int c = 0; c < d; ++c) o[size_t(i) * qld + size_t(c)] *= inv_sum[i];
    };
    parallel_run(
        [&](int th, int P) {
            thread_local std::vector<float> sc;
            for (int idx = th; idx < blocks * s.heads; idx += P) pair(idx, sc);
        },
        int64_t(T) * S * qld >= kParallelMinWork);
}

}  // namespace

std::vector<float> rope_inv_freq(const ModelConfig& cfg) {
    const int d = cfg.head_dim;
    std::vector<float> f(static_cast<size_t>(d / 2));
    // As HF: base ** (2i/d) in f32, then 1/x.
    for (int i = 0; i < d / 2; ++i)
        f[size_t(i)] = 1.0f / std::pow(float(cfg.rope_theta), float(2 * i) / float(d));
    const RopeScaling& rs = cfg.rope_scaling;
    if (rs.type == "linear") {
        for (float& x : f) x = float(x / rs.factor);
    } else if (rs.type == "llama3") {
        // Llama 3.1: long wavelengths slowed by `factor`, short ones kept, a
        // smooth blend in between.
        const double old_len = rs.original_max_position_embeddings;
        const double low_wavelen = old_len / rs.low_freq_factor, high_wavelen = old_len / rs.high_freq_factor;
        for (float& x : f) {
            const double wavelen = 2.0 * M_PI / x;
            double y = x;
            if (wavelen > low_wavelen) {
                y = x / rs.factor;
            } else if (wavelen >= high_wavelen) {
                const double smooth = (old_len / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
                y = (1.0 - smooth) * x / rs.factor + smooth * x;
            }
            x = float(y);
        }
    }
    return f;
}

void rope(float* x, int T, int ld, int heads, int d, int pos0, const std::vector<float>& inv_freq) {
    const int half = d / 2;
    parallel_for(
        T,
        [&](int64_t b, int64_t e) {
            thread_local std::vector<float> c, s;
            c.resize(size_t(half)), s.resize(size_t(half));
            for (int64_t t = b; t < e; ++t) {
                for (int i = 0; i < half; ++i) {
                    const float angle = float(pos0 + t) * inv_freq[size_t(i)];  // f32 product, as HF
                    c[size_t(i)] = float(std::cos(double(angle)));
                    s[size_t(i)] = float(std::sin(double(angle)));
                }
                for (int h = 0; h < heads; ++h) {
                    float* v = x + size_t(t) * ld + size_t(h) * d;
                    for (int i = 0; i < half; ++i) {
                        const float a = v[i], bb = v[i + half];
                        v[i] = a * c[size_t(i)] - bb * s[size_t(i)];
                        v[i + half] = bb * c[size_t(i)] + a * s[size_t(i)];
                    }
                }
            }
        },
        int64_t(T) * ld >= (1 << 16));
}

void attention(const AttnShape& s, const float* q, int T, int qpos0, const float* k, const float* v, int S, int kpos0,
               float* out) {
    if (T >= kAttnGemmMinTokens)
        attention_gemm(s, q, T, qpos0, k, v, S, kpos0, out);
    else
        attention_direct(s, q, T, qpos0, k, v, S, kpos0, out);
}

}  // namespace moefy::layers
