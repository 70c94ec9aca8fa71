#include "split/shared_split.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "common/error.h"
#include "model/checkpoint.h"
#include "model/llama.h"
#include "split/random_split.h"

namespace moefy {

SharedCriterion parse_shared_criterion(const std::string& s) { return parse_enum(shared_criterion_names, s, "--shared-criterion"); }

const char* shared_criterion_name(SharedCriterion c) { return enum_name(shared_criterion_names, c); }

NeuronActivity::NeuronActivity(int layers, int intermediate_size, int top_count_k)
    : I(intermediate_size), top(std::clamp(top_count_k, 1, intermediate_size)) {
    tokens.assign(size_t(layers), 0);
    abs_sum.assign(size_t(layers), std::vector<double>(size_t(I), 0.0));
    top_count.assign(size_t(layers), std::vector<int64_t>(size_t(I), 0));
}

void NeuronActivity::add(int layer, const float* h, int n) {
    std::vector<double>& s = abs_sum[size_t(layer)];
    std::vector<int64_t>& c = top_count[size_t(layer)];
    std::vector<int32_t> order(static_cast<size_t>(I));
    std::vector<float> a(static_cast<size_t>(I));
    for (int t = 0; t < n; ++t) {
        const float* ht = h + size_t(t) * I;
        for (int i = 0; i < I; ++i) {
            a[size_t(i)] = std::fabs(ht[i]);
            s[size_t(i)] += a[size_t(i)];
        }
        std::iota(order.begin(), order.end(), 0);
        std::nth_element(order.begin(), order.begin() + (top - 1), order.end(), [&](int32_t x, int32_t y) {
            return a[size_t(x)] > a[size_t(y)] || (a[size_t(x)] == a[size_t(y)] && x < y);
        });
        for (int j = 0; j < top; ++j) ++c[size_t(order[size_t(j)])];
    }
    tokens[size_t(layer)] += size_t(n);
}

std::vector<double> NeuronActivity::score(int layer, SharedCriterion crit) const {
    const double n = double(std::max<size_t>(1, tokens[size_t(layer)]));
    std::vector<double> v(static_cast<size_t>(I));
    for (int i = 0; i < I; ++i)
        v[size_t(i)] = crit == SharedCriterion::Mass ? abs_sum[size_t(layer)][size_t(i)] / n : double(top_count[size_t(layer)][size_t(i)]) / n;
    return v;
}

namespace {

struct ActivityObserver : FfnObserver {
    NeuronActivity* act = nullptr;
    void on_ffn(int l, const FfnActs& a) override {
        if (a.expert != -1) fail("shared experts: layer {} is not a dense FFN layer (the model must be dense)", l);
        act->add(l, a.h, a.n);
    }
};

}  // namespace

NeuronActivity collect_neuron_activity(Model& model, const std::vector<TokenWindow>& windows, int top, size_t max_tokens) {
    const ModelConfig& cfg = model.config();
    if (cfg.is_moe()) fail("shared experts: the model is already an MoE model; they are chosen on the dense model");
    NeuronActivity act(cfg.num_layers, cfg.intermediate_size, top);
    ActivityObserver obs;
    obs.act = &act;
    size_t done = 0;
    for (const TokenWindow& w : windows) {
        if (done >= max_tokens) break;
        model.forward(w.data(), int(w.size()), 0, nullptr, nullptr, RunHooks(&obs));
        done += w.size();
    }
    if (done == 0) fail("shared experts: no calibration tokens to measure neuron activity on");
    return act;
}

std::vector<int32_t> top_neurons(const std::vector<double>& score, int count) {
    std::vector<int32_t> order(score.size());
    std::iota(order.begin(), order.end(), 0);
    count = std::clamp(count, 0, int(score.size()));
    std::partial_sort(order.begin(), order.begin() + count, order.end(), [&](int32_t a, int32_t b) {
        return score[size_t(a)] > score[size_t(b)] || (score[size_t(a)] == score[size_t(b)] && a < b);
    });
    order.resize(size_t(count));
    return order;
}

void check_shared_count(int shared, int experts) {
    if (shared < 0) fail("--shared {}: must be at least 0", shared);
    if (shared > experts - 2)
        fail("--shared {}: with {} experts at most {} can be shared (at least two routed experts must remain)", shared, experts,
             experts - 2);
}

int shared_neuron_count(int I, int experts, int shared) {
    const std::vector<int> w = balanced_widths(I, experts);
    return std::accumulate(w.begin(), w.begin() + shared, 0);
}

SharedChoice choose_shared(const NeuronActivity& act, int experts, int shared, SharedCriterion crit) {
    check_expert_count(experts, act.I);
    check_shared_count(shared, experts);
    SharedChoice c;
    c.experts = experts;
    c.shared = shared;
    c.criterion = crit;
    const std::vector<int> widths = balanced_widths(act.I, experts);
    const int S = shared_neuron_count(act.I, experts, shared);
    for (size_t l = 0; l < act.tokens.size(); ++l) {
        const std::vector<int32_t> top = top_neurons(act.score(int(l), crit), S);
        std::vector<std::vector<int32_t>> groups;
        size_t at = 0;
        for (int r = 0; r < shared; ++r) {
            std::vector<int32_t> g(top.begin() + long(at), top.begin() + long(at + size_t(widths[size_t(r)])));
            std::sort(g.begin(), g.end());
            groups.push_back(std::move(g));
            at += size_t(widths[size_t(r)]);
        }
        std::vector<char> taken(size_t(act.I), 0);
        for (int32_t n : top) taken[size_t(n)] = 1;
        std::vector<int32_t> rest;
        for (int n = 0; n < act.I; ++n)
            if (!taken[size_t(n)]) rest.push_back(n);
        c.groups.push_back(std::move(groups));
        c.rest.push_back(std::move(rest));
    }
    return c;
}

void attach_shared(ExpertPlan& plan, const SharedChoice& choice) {
    if (plan.layers.size() != choice.groups.size())
        fail("shared experts: chosen for {} layers, the plan has {}", choice.groups.size(), plan.layers.size());
    for (size_t l = 0; l < plan.layers.size(); ++l) {
        LayerPlan& lp = plan.layers[l];
        std::vector<int32_t> routed;
        for (const auto& e : lp.experts) routed.insert(routed.end(), e.begin(), e.end());
        std::sort(routed.begin(), routed.end());
        if (routed != choice.rest[l])
            fail("shared experts: layer {}: the routed experts do not cover exactly the {} neurons left to route", l,
                 choice.rest[l].size());
        lp.shared = choice.groups[l];
    }
    plan.params["shared"] = choice.shared;
    plan.params["shared_criterion"] = shared_criterion_name(choice.criterion);
    plan.params["experts"] = choice.experts - choice.shared;
}

SharedChoice measure_shared(const Checkpoint& dense, const std::vector<TokenWindow>& windows, int experts, int shared,
                            SharedCriterion c, size_t max_tokens) {
    const int I = dense.config.intermediate_size;
    check_expert_count(experts, I);
    check_shared_count(shared, experts);
    auto model = Model::load(dense);
    return choose_shared(collect_neuron_activity(*model, windows, shared_neuron_count(I, experts, shared), max_tokens), experts, shared, c);
}

std::vector<std::vector<int32_t>> random_partition_of(const std::vector<int32_t>& rest, int experts, uint64_t seed, int layer) {
    std::vector<std::vector<int32_t>> out = random_partition(int(rest.size()), experts, seed, layer);
    for (auto& e : out) {
        for (int32_t& n : e) n = rest[size_t(n)];
        std::sort(e.begin(), e.end());
    }
    return out;
}

}  // namespace moefy
