#include "route/random_router.h"

#include "common/error.h"
#include "common/rng.h"

namespace moefy {

RouterWeights make_random_router(int num_experts, int hidden_size, bool mlp, uint64_t seed, int layer, double stddev) {
    if (num_experts < 1 || hidden_size < 1) fail("random router: {} experts over hidden size {}", num_experts, hidden_size);
    RouterWeights r;
    r.num_experts = num_experts;
    r.hidden_size = hidden_size;
    Rng rng(seed, uint64_t(layer));
    r.w1.resize(size_t(num_experts) * size_t(hidden_size));
    for (float& v : r.w1) v = float(rng.normal() * stddev);
    if (mlp) {
        r.w2.resize(size_t(num_experts) * size_t(num_experts));
        for (float& v : r.w2) v = float(rng.normal() * stddev);
    }
    return r;
}

void check_router(const RouterWeights& r, int num_experts, int hidden_size, bool mlp, const std::string& where) {
    const size_t E = size_t(num_experts), H = size_t(hidden_size);
    if (r.num_experts != num_experts || r.hidden_size != hidden_size || r.w1.size() != E * H)
        fail("{}: router is [{}, {}] ({} values), the model needs [{}, {}]", where, r.num_experts, r.hidden_size, r.w1.size(),
             E, H);
    if (mlp && r.w2.size() != E * E)
        fail("{}: the mlp gate needs a second matrix [{}, {}], the router has {} values", where, E, E, r.w2.size());
    if (!mlp && !r.w2.empty()) fail("{}: a linear gate has one matrix, but the router also has an [E, E] second layer", where);
}

}  // namespace moefy
