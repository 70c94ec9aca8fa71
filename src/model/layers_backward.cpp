// Backward of RMSNorm, RoPE and the SwiGLU activation (model/backward.h).
#include <algorithm>
#include <cmath>

#include <cblas.h>

#include "model/backward.h"
#include "common/parallel.h"

namespace moefy::layers {

void rmsnorm_backward(const float* x, const float* w, int T, int H, double eps, const float* dy, float* dx,
                      bool accumulate) {
    parallel_for_each(T, [&](int64_t t) {
        const float* xt = x + size_t(t) * H;
        const float* dyt = dy + size_t(t) * H;
        double ss = 0.0, dot = 0.0;  // Σ x², Σ x ⊙ w ⊙ dy
        for (int i = 0; i < H; ++i) {
            ss += double(xt[i]) * double(xt[i]);
            dot += double(xt[i]) * double(w[i]) * double(dyt[i]);
        }
        const double r = 1.0 / std::sqrt(ss / H + eps);
        const float a = float(r), b = float(r * r * r * dot / H);
        float* dxt = dx + size_t(t) * H;
        if (accumulate)
            for (int i = 0; i < H; ++i) dxt[i] += a * w[i] * dyt[i] - b * xt[i];
        else
            for (int i = 0; i < H; ++i) dxt[i] = a * w[i] * dyt[i] - b * xt[i];
    }, size_t(T) * size_t(H) > 4096);
}

void rope_backward(float* dx, int T, int ld, int heads, int d, int pos0, const std::vector<float>& inv_freq) {
    // angle(-f) = -angle(f) exactly in f32, so this is the forward's rotation inverted.
    std::vector<float> neg(inv_freq.size());
    for (size_t i = 0; i < neg.size(); ++i) neg[i] = -inv_freq[i];
    rope(dx, T, ld, heads, d, pos0, neg);
}

void swiglu_backward(const float* g, const float* u, const float* dh, size_t n, float* dg, float* du, float* h) {
    parallel_for(int64_t(n), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
        const float e = 1.0f + std::exp(-g[i]);
        const float sg = 1.0f / e;
        const float silu = g[i] / e;
        const float d = dh[i];
        dg[i] = d * u[i] * sg * (1.0f + g[i] * (1.0f - sg));
        if (h) h[i] = silu * u[i];
        du[i] = d * silu;
    }
    }, n > 4096);
}

void add_weight_grad(float* dW, const float* dy, const float* x, int n, int64_t N, int64_t K) {
    if (n <= 0 || N <= 0 || K <= 0) return;
    // dW[N, K] += dyᵀ[N, n] · x[n, K] in fixed tiles of dW (they depend on N and K
    // only), one single-threaded sgemm each, the tiles shared by the threads:
    // every element is the same call's sum over n whatever the thread count.
    constexpr int64_t kTileRows = 128, kTileCols = 512;
    const int64_t rb = std::min(N, kTileRows), cb = std::min(K, kTileCols);
    const int64_t row_tiles = (N + rb - 1) / rb, col_tiles = (K + cb - 1) / cb;
    parallel_for_each(row_tiles * col_tiles, [&](int64_t t) {
        const int64_t r0 = (t / col_tiles) * rb, c0 = (t % col_tiles) * cb;
        const int64_t rows = std::min(rb, N - r0), cols = std::min(cb, K - c0);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(rows), int(cols), n, 1.0f, dy + r0, int(N), x + c0, int(K),
                    1.0f, dW + size_t(r0) * size_t(K) + size_t(c0), int(K));
    }, N * K * int64_t(n) >= (int64_t(1) << 18));
}

}  // namespace moefy::layers
