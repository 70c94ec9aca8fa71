#include "model/decoder_layer.h"

#include <algorithm>

#include "model/layers.h"
#include "model/moe_ffn.h"

namespace moefy {

void attention_block_forward(const ModelConfig& c, const LayerWeights& L, const std::vector<float>& inv_freq, float* x, int T,
                             int pos0, const LayerKV& kv, const LayerBuffers& b) {
    const int H = c.hidden_size, D = c.head_dim, Qd = c.num_heads * D, KVd = c.num_kv_heads * D;
    const layers::AttnShape shape{c.num_heads, c.num_kv_heads, D, c.sliding_window};
    layers::rmsnorm(x, L.input_norm.data(), T, H, c.rms_norm_eps, b.xn);
    matmul_multi(b.xn, T, {{&L.q, b.q}, {&L.k, kv.k_new}, {&L.v, kv.v_new}});
    layers::rope(b.q, T, Qd, c.num_heads, D, pos0, inv_freq);
    layers::rope(kv.k_new, T, KVd, c.num_kv_heads, D, pos0, inv_freq);
    layers::attention(shape, b.q, T, pos0, kv.k_all, kv.v_all, kv.S, kv.kpos0, b.att);
    matmul(b.att, T, L.o, x, /*accumulate=*/true);
}

void decoder_layer_forward(const ModelConfig& c, int l, const LayerWeights& L, const std::vector<float>& inv_freq,
                           float* x, int T, int pos0, const LayerKV& kv, const LayerBuffers& b, const RunHooks& hooks) {
    const int H = c.hidden_size;
    attention_block_forward(c, L, inv_freq, x, T, pos0, kv, b);
    if (b.x_mid) std::copy_n(x, size_t(T) * size_t(H), b.x_mid);

    layers::rmsnorm(x, L.post_norm.data(), T, H, c.rms_norm_eps, b.xn);
    if (L.is_moe) {
        moe_ffn(c, l, L.moe, b.xn, T, x, hooks, *b.moe);
        return;
    }
    layers::swiglu_hidden(L.ffn, b.xn, T, b.g, b.u, b.h);
    if (hooks.ffn && hooks.ffn->wants(l))
        hooks.ffn->on_ffn(l, FfnActs{l, T, H, b.xn, -1, false, T, nullptr, nullptr, L.ffn.width(), b.g, b.u, b.h});
    matmul(b.h, T, L.ffn.down, x, /*accumulate=*/true);
}

}  // namespace moefy
