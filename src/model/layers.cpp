// RMSNorm and the SwiGLU hidden activation.
#include <algorithm>
#include <cmath>

#include "model/layers.h"
#include "common/parallel.h"
#include "model/vec_math.h"

namespace moefy::layers {

void rmsnorm(const float* x, const float* w, int T, int H, double eps, float* y) {
    parallel_for_each(
        T,
        [&](int64_t t) {
            const float* xt = x + size_t(t) * H;
            const double ss = vmath::sum_squares(xt, size_t(H));
            const float inv_rms = float(1.0 / std::sqrt(ss / H + eps));
            float* yt = y + size_t(t) * H;
            for (int i = 0; i < H; ++i) yt[i] = w[i] * (xt[i] * inv_rms);
        },
        int64_t(T) * H >= (1 << 16));
}

void swiglu_hidden(const FfnWeights& f, const float* x, int n, float* g, float* u, float* h) {
    matmul_multi(x, n, {{&f.gate, g}, {&f.up, u}});
    const size_t total = size_t(n) * size_t(f.width());
    parallel_for(
        int64_t(total), [&](int64_t b, int64_t e) { vmath::silu_mul(g + b, u + b, h + b, size_t(e - b)); },
        total >= (1 << 16));
}

}  // namespace moefy::layers
