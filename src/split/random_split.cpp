#include "split/random_split.h"

#include <algorithm>
#include <numeric>

#include "common/error.h"
#include "common/rng.h"
#include "model/checkpoint.h"

namespace moefy {

std::vector<std::vector<int32_t>> random_partition(int I, int E, uint64_t seed, int layer) {
    check_expert_count(E, I);
    std::vector<int32_t> perm(static_cast<size_t>(I));
    std::iota(perm.begin(), perm.end(), 0);
    Rng rng(seed, uint64_t(layer));
    rng.shuffle(perm.begin(), perm.end());
    std::vector<std::vector<int32_t>> experts;
    size_t at = 0;
    for (int w : balanced_widths(I, E)) {
        std::vector<int32_t> ids(perm.begin() + long(at), perm.begin() + long(at + size_t(w)));
        std::sort(ids.begin(), ids.end());
        experts.push_back(std::move(ids));
        at += size_t(w);
    }
    return experts;
}

ExpertPlan random_split(const Checkpoint& model, int experts, uint64_t seed) {
    const ModelConfig& c = model.config;
    if (c.is_moe()) fail("{}: already an MoE model ({}); split a dense model", model.dir, model_kind_name(c.kind));
    check_expert_count(experts, c.intermediate_size);
    ExpertPlan p;
    p.num_layers = c.num_layers;
    p.hidden_size = c.hidden_size;
    p.intermediate_size = c.intermediate_size;
    p.ffn_fingerprint = ffn_fingerprint(*model.tensors, c);
    p.method = "random";
    p.params = {{"experts", experts}, {"seed", seed}};
    auto w = balanced_widths(c.intermediate_size, experts);
    p.stats = {{"widths", c.intermediate_size % experts == 0 ? "equal" : "differ by one (E does not divide I)"}};
    for (int l = 0; l < c.num_layers; ++l) p.layers.push_back({random_partition(c.intermediate_size, experts, seed, l), {}, {}});
    return p;
}

}  // namespace moefy
