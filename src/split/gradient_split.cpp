#include "split/gradient_split.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <exception>
#include <limits>
#include <numeric>

#include <lemon/network_simplex.h>
#include <lemon/smart_graph.h>

#include "common/error.h"
#include "common/parallel.h"

namespace moefy {

Criterion parse_criterion(const std::string& s) {
    if (s == "max") return Criterion::Max;
    if (s == "min") return Criterion::Min;
    fail("gradient split: criterion '{}' is not one of max, min", s);
}
const char* criterion_name(Criterion c) { return c == Criterion::Max ? "max" : "min"; }

Assign parse_assign(const std::string& s) {
    if (s == "greedy") return Assign::Greedy;
    if (s == "optimal") return Assign::Optimal;
    fail("gradient split: assignment '{}' is not one of greedy, optimal", s);
}
const char* assign_name(Assign a) { return a == Assign::Greedy ? "greedy" : "optimal"; }

// ---------------------------------------------------------------------------------------------
// Validation

// Checks there are at least `need` score vectors, all of one length I >= 1 with finite
// entries, and returns I.
static int check_scores(ScoreSpan s, int need, const char* what) {
    if (need < 1) fail("gradient split: {} needs at least one expert, got {}", what, need);
    if (int(s.size()) < need)
        fail("gradient split: {} score vectors (data clusters) for {} experts; each expert needs its own cluster",
             s.size(), need);
    const size_t I = s[0].size();
    if (I == 0) fail("gradient split: score vector 0 is empty");
    if (I > size_t(std::numeric_limits<int32_t>::max())) fail("gradient split: score vector 0 is too long ({})", I);
    for (size_t c = 0; c < s.size(); ++c) {
        if (s[c].size() != I)
            fail("gradient split: score vector {} has {} entries, score vector 0 has {}; all must have one per neuron",
                 c, s[c].size(), I);
        for (size_t n = 0; n < I; ++n)
            if (!std::isfinite(s[c][n])) fail("gradient split: score vector {} entry {} is not finite ({})", c, n, s[c][n]);
    }
    return int(I);
}

static void check_partition_size(int expert_size, int experts, int I, const char* what) {
    if (expert_size < 1 || int64_t(expert_size) * experts != I)
        fail("gradient split: {}: expert size {} x {} experts = {} must equal the intermediate size {}", what,
             expert_size, experts, int64_t(expert_size) * experts, I);
}

// ---------------------------------------------------------------------------------------------
// Rankings and totals

std::vector<int32_t> rank_neurons(const std::vector<double>& s, Criterion c) {
    std::vector<int32_t> idx(s.size());
    std::iota(idx.begin(), idx.end(), 0);
    // Explicit tie-break instead of stable_sort: same order, no buffer.
    if (c == Criterion::Max)
        std::sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return s[a] > s[b] || (s[a] == s[b] && a < b); });
    else
        std::sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return s[a] < s[b] || (s[a] == s[b] && a < b); });
    return idx;
}

static std::vector<std::vector<int32_t>> rank_all(ScoreSpan s, int experts, Criterion c) {
    std::vector<std::vector<int32_t>> order(static_cast<size_t>(experts));
    for (int e = 0; e < experts; ++e) order[size_t(e)] = rank_neurons(s[size_t(e)], c);
    return order;
}

double split_total(ScoreSpan scores, const ExpertSets& experts) {
    if (scores.size() < experts.size())
        fail("gradient split: {} score vectors for {} experts", scores.size(), experts.size());
    double t = 0;
    for (size_t e = 0; e < experts.size(); ++e)
        for (int32_t n : experts[e]) {
            if (n < 0 || size_t(n) >= scores[e].size())
                fail("gradient split: expert {} has neuron {} outside [0, {})", e, n, scores[e].size());
            t += scores[e][size_t(n)];
        }
    return t;
}

// ---------------------------------------------------------------------------------------------
// Greedy (§5.2, §6.2)

// order[e]: all neurons, best first for expert e. Neurons marked in `used` are never
// picked. Places expert_size neurons in every expert; returns them in pick order.
static ExpertSets greedy_assign(ScoreSpan s, const std::vector<std::vector<int32_t>>& order,
                                std::vector<char>& used, int expert_size, Criterion c) {
    const size_t E = order.size(), I = used.size();
    const bool max = c == Criterion::Max;
    ExpertSets out(E);
    for (auto& o : out) o.reserve(size_t(expert_size));
    std::vector<size_t> ptr(E, 0);
    for (size_t step = 0; step < E * size_t(expert_size); ++step) {
        double best = max ? -INFINITY : INFINITY;
        int be = -1;
        int32_t bn = -1;
        for (size_t e = 0; e < E; ++e) {
            if (out[e].size() == size_t(expert_size)) continue;
            const auto& o = order[e];
            size_t& p = ptr[e];
            while (p < I && used[size_t(o[p])]) ++p;
            if (p == I) continue;
            const double v = s[e][size_t(o[p])];
            if (max ? v >= best : v <= best) {  // >= / <=: ties go to the later expert, as in the reference
                best = v;
                be = int(e);
                bn = o[p];
            }
        }
        if (be < 0) fail("gradient split: greedy ran out of free neurons at step {} (internal error)", step);
        used[size_t(bn)] = 1;
        ++ptr[size_t(be)];
        out[size_t(be)].push_back(bn);
    }
    return out;
}

ExpertSets greedy_independent_split(ScoreSpan scores, int expert_size, Criterion c) {
    const int E = int(scores.size());
    const int I = check_scores(scores, E, "greedy split");
    check_partition_size(expert_size, E, I, "independent split");
    std::vector<char> used(size_t(I), 0);
    ExpertSets out = greedy_assign(scores, rank_all(scores, E, c), used, expert_size, c);
    for (auto& o : out) std::sort(o.begin(), o.end());
    return out;
}

// ---------------------------------------------------------------------------------------------
// Exact optimum (transportation problem)

namespace {

// Assigns the neurons `cand` (ascending) to E experts, expert_size each, minimising
// sum cost(e, n) with cost = -score (Max) or score (Min). asg[k]: expert of cand[k].
struct Transport {
    ScoreSpan s;
    int E;
    const std::vector<int32_t>& cand;
    int expert_size;
    bool max;

    double cost(int e, int32_t n) const { return max ? -s[size_t(e)][size_t(n)] : s[size_t(e)][size_t(n)]; }

    // Network simplex needs integer costs: quantise to 2^40 steps of the largest |score|.
    // The optimum of the quantised problem is within I * 2^-40 * max|s| of the true one.
    std::vector<int> solve_quantised(double maxabs) const {
        using G = lemon::SmartDigraph;
        const size_t m = cand.size();
        G g;
        g.reserveNode(int(m) + E);
        g.reserveArc(int(m * size_t(E)));
        std::vector<G::Node> ex(static_cast<size_t>(E));
        for (auto& x : ex) x = g.addNode();
        std::vector<G::Node> nn(m);
        for (size_t k = 0; k < m; ++k) {
            nn[k] = g.addNode();
            for (int e = 0; e < E; ++e) g.addArc(nn[k], ex[size_t(e)]);  // arc id k*E + e
        }
        G::NodeMap<int> supply(g);
        for (size_t k = 0; k < m; ++k) supply[nn[k]] = 1;
        for (auto& x : ex) supply[x] = -expert_size;
        G::ArcMap<int64_t> qcost(g);
        const double scale = maxabs > 0 ? std::ldexp(1.0, 40) / maxabs : 0.0;
        for (size_t k = 0; k < m; ++k)
            for (int e = 0; e < E; ++e) qcost[g.arcFromId(int(k * size_t(E)) + e)] = std::llround(cost(e, cand[k]) * scale);
        lemon::NetworkSimplex<G, int, int64_t> ns(g);
        ns.supplyMap(supply).costMap(qcost);
        if (ns.run() != lemon::NetworkSimplex<G, int, int64_t>::OPTIMAL)
            fail("gradient split: min-cost flow found no assignment of {} neurons to {} x {} (internal error)", m, E,
                 expert_size);
        std::vector<int> asg(m, -1);
        for (size_t k = 0; k < m; ++k)
            for (int e = 0; e < E; ++e)
                if (ns.flow(g.arcFromId(int(k * size_t(E)) + e)) > 0) asg[k] = e;
        return asg;
    }

    // An assignment with fixed expert sizes is optimal iff moving neurons around a
    // cycle of experts a1 -> a2 -> ... -> a1 (one neuron out of each) never lowers
    // the cost. Edge a -> b weighs min over n in S_a of cost(b,n) - cost(a,n); a
    // negative cycle in this E-node graph (Bellman-Ford) is applied until none is
    // left. This removes what quantisation lost.
    void cancel_negative_cycles(std::vector<int>& asg, double maxabs) const {
        const size_t m = cand.size();
        const double tol = 8.0 * E * std::numeric_limits<double>::epsilon() * maxabs;
        std::vector<double> W(size_t(E * E));   // W: [E, E]
        std::vector<size_t> arg(size_t(E * E));  // neuron (index into cand) that realises W
        std::vector<double> dist(static_cast<size_t>(E));
        std::vector<int> pred(static_cast<size_t>(E));
        for (size_t round = 0; round < 4 * m + 16; ++round) {
            std::fill(W.begin(), W.end(), INFINITY);
            for (size_t k = 0; k < m; ++k) {
                const int a = asg[k];
                const double ca = cost(a, cand[k]);
                for (int b = 0; b < E; ++b) {
                    if (b == a) continue;
                    const double d = cost(b, cand[k]) - ca;
                    if (d < W[size_t(a * E + b)]) W[size_t(a * E + b)] = d, arg[size_t(a * E + b)] = k;
                }
            }
            // Bellman-Ford from a virtual source joined to every expert at distance 0.
            std::fill(dist.begin(), dist.end(), 0.0);
            std::fill(pred.begin(), pred.end(), -1);
            int last = -1;
            for (int pass = 0; pass <= E; ++pass) {
                last = -1;
                for (int a = 0; a < E; ++a)
                    for (int b = 0; b < E; ++b) {
                        const double w = W[size_t(a * E + b)];
                        if (w < INFINITY && dist[size_t(a)] + w < dist[size_t(b)] - tol) {
                            dist[size_t(b)] = dist[size_t(a)] + w;
                            pred[size_t(b)] = a;
                            last = b;
                        }
                    }
                if (last < 0) return;  // converged: no negative cycle
            }
            // Still relaxing after E+1 passes: walking back E steps lands on a cycle.
            int x = last;
            for (int i = 0; i < E && x >= 0; ++i) x = pred[size_t(x)];
            if (x < 0) return;
            std::vector<int> cyc;
            int v = x;
            do {
                cyc.push_back(v);
                v = pred[size_t(v)];
            } while (v != x && v >= 0 && cyc.size() <= size_t(E));
            if (v != x) return;
            double gain = 0;
            for (int b : cyc) gain += W[size_t(pred[size_t(b)] * E + b)];
            if (!(gain < -tol)) return;
            // Distinct source experts on a simple cycle, so the moved neurons are distinct.
            std::vector<std::pair<size_t, int>> moves;
            for (int b : cyc) moves.push_back({arg[size_t(pred[size_t(b)] * E + b)], b});
            for (auto [k, b] : moves) asg[k] = b;
        }
    }

    ExpertSets run() const {
        double maxabs = 0;
        for (int e = 0; e < E; ++e)
            for (int32_t n : cand) maxabs = std::max(maxabs, std::fabs(s[size_t(e)][size_t(n)]));
        std::vector<int> asg = solve_quantised(maxabs);
        cancel_negative_cycles(asg, maxabs);
        ExpertSets out(static_cast<size_t>(E));
        for (size_t k = 0; k < cand.size(); ++k) out[size_t(asg[k])].push_back(cand[k]);  // ascending
        for (int e = 0; e < E; ++e)
            if (out[size_t(e)].size() != size_t(expert_size))
                fail("gradient split: optimal assignment gave expert {} {} neurons, expected {} (internal error)", e,
                     out[size_t(e)].size(), expert_size);
        return out;
    }
};

}  // namespace

ExpertSets optimal_independent_split(ScoreSpan scores, int expert_size, Criterion c) {
    const int E = int(scores.size());
    const int I = check_scores(scores, E, "optimal split");
    check_partition_size(expert_size, E, I, "independent split");
    std::vector<int32_t> cand(static_cast<size_t>(I));
    std::iota(cand.begin(), cand.end(), 0);
    return Transport{scores, E, cand, expert_size, c == Criterion::Max}.run();
}

// ---------------------------------------------------------------------------------------------
// Inner sharing (§5.3)

ExpertSets shared_split(ScoreSpan scores, int expert_size, Criterion c) {
    const int E = int(scores.size());
    const int I = check_scores(scores, E, "shared split");
    if (expert_size < 1 || expert_size > I)
        fail("gradient split: shared split: expert size {} must be between 1 and the intermediate size {}",
             expert_size, I);
    ExpertSets out(static_cast<size_t>(E));
    for (int e = 0; e < E; ++e) {
        auto r = rank_neurons(scores[size_t(e)], c);
        out[size_t(e)].assign(r.begin(), r.begin() + expert_size);
    }
    return out;
}

// ---------------------------------------------------------------------------------------------
// Inter sharing (§6)

// The reference's chunk_list: n contiguous chunks, the first size % n one longer.
static ExpertSets chunk(const std::vector<int32_t>& v, int n) {
    ExpertSets out(static_cast<size_t>(n));
    const size_t base = v.size() / size_t(n), extra = v.size() % size_t(n);
    size_t at = 0;
    for (size_t i = 0; i < size_t(n); ++i) {
        const size_t w = base + (i < extra ? 1 : 0);
        out[i].assign(v.begin() + long(at), v.begin() + long(at + w));
        at += w;
    }
    return out;
}

ResidualSplit residual_split(ScoreSpan scores, int num_routed, int num_residual, int expert_size, Criterion c,
                             bool share, Assign assign) {
    if (num_residual < 1) fail("gradient split: residual split needs at least one residual expert, got {}", num_residual);
    if (num_routed < 1)
        fail("gradient split: {} residual experts leave {} routed experts; at least one must be routed", num_residual,
             num_routed);
    const int I = check_scores(scores, num_routed + num_residual, "residual split");
    if (share) {
        if (expert_size < 1 || int64_t(expert_size) * (num_residual + 1) > I)
            fail("gradient split: shared residual split: expert size {} x ({} residual + 1) must be at most the "
                 "intermediate size {}, so that every routed expert is full",
                 expert_size, num_residual, I);
    } else {
        check_partition_size(expert_size, num_routed + num_residual, I, "residual split");
    }
    // Reference quirk 25: only the first num_routed of the num_routed + R vectors are used.
    const ScoreSpan routed_scores = scores.first(size_t(num_routed));
    const auto order = rank_all(routed_scores, num_routed, c);

    // §6.1: reserve the neurons that most routed experts rank in their top expert_size.
    auto lists = order;
    std::vector<char> is_res(size_t(I), 0);
    std::vector<int32_t> residual;
    const size_t target = size_t(num_residual) * size_t(expert_size);
    residual.reserve(target);
    std::vector<int> votes(static_cast<size_t>(I));
    while (residual.size() < target) {
        std::fill(votes.begin(), votes.end(), 0);
        for (const auto& l : lists)
            for (size_t i = 0; i < std::min(l.size(), size_t(expert_size)); ++i) ++votes[size_t(l[i])];
        const int most = *std::max_element(votes.begin(), votes.end());
        if (most == 0) fail("gradient split: residual selection ran out of neurons (internal error)");
        for (int n = 0; n < I && residual.size() < target; ++n)  // ascending id: the cut keeps low ids
            if (votes[size_t(n)] == most) residual.push_back(n), is_res[size_t(n)] = 1;
        for (auto& l : lists) std::erase_if(l, [&](int32_t n) { return is_res[size_t(n)] != 0; });
    }

    ResidualSplit out;
    out.residual = chunk(residual, num_residual);
    if (share) {
        for (auto& l : lists) out.routed.emplace_back(l.begin(), l.begin() + expert_size);
    } else if (assign == Assign::Greedy) {
        // §6.2: the §5.2 greedy again on fresh rankings, residual neurons pre-marked used.
        std::vector<char> used = is_res;
        out.routed = greedy_assign(routed_scores, order, used, expert_size, c);
    } else {
        std::vector<int32_t> cand;
        cand.reserve(size_t(I) - residual.size());
        for (int n = 0; n < I; ++n)
            if (!is_res[size_t(n)]) cand.push_back(n);
        out.routed = Transport{routed_scores, num_routed, cand, expert_size, c == Criterion::Max}.run();
    }
    return out;
}

// ---------------------------------------------------------------------------------------------
// Overlap statistics (§5.4)

OverlapStats overlap_stats(const ExpertSets& experts, int I) {
    if (I < 1) fail("overlap statistics: intermediate size {} must be positive", I);
    const size_t E = experts.size(), words = (size_t(I) + 63) / 64;
    // One bitset per expert: intersections and unions are popcounts of word ANDs / ORs.
    std::vector<uint64_t> bits(E * words, 0);
    for (size_t e = 0; e < E; ++e)
        for (int32_t n : experts[e]) {
            if (n < 0 || n >= I) fail("overlap statistics: expert {} has neuron {} outside [0, {})", e, n, I);
            bits[e * words + size_t(n) / 64] |= uint64_t(1) << (n % 64);
        }
    OverlapStats st;
    st.intermediate_size = I;
    st.rate.assign(E, std::vector<double>(E, 0.0));
    st.count.assign(E, std::vector<int>(E, 0));
    st.sizes.assign(E, 0);
    for (size_t i = 0; i < E; ++i)
        for (size_t j = i; j < E; ++j) {
            int inter = 0, uni = 0;
            for (size_t w = 0; w < words; ++w) {
                inter += std::popcount(bits[i * words + w] & bits[j * words + w]);
                uni += std::popcount(bits[i * words + w] | bits[j * words + w]);
            }
            st.rate[i][j] = st.rate[j][i] = uni > 0 ? double(inter) / double(uni) : 0.0;
            if (i == j) st.sizes[i] = inter;
        }
    std::vector<int> votes(size_t(I), 0);  // experts that select each neuron
    for (size_t e = 0; e < E; ++e)
        for (int n = 0; n < I; ++n) votes[size_t(n)] += int((bits[e * words + size_t(n) / 64] >> (n % 64)) & 1);
    for (size_t e = 0; e < E; ++e)
        for (int n = 0; n < I; ++n)
            if ((bits[e * words + size_t(n) / 64] >> (n % 64)) & 1) ++st.count[e][size_t(votes[size_t(n)] - 1)];
    st.distinct_neurons = int(std::count_if(votes.begin(), votes.end(), [](int v) { return v > 0; }));
    return st;
}

nlohmann::json OverlapStats::to_json() const {
    return {{"rate", rate}, {"count", count}, {"sizes", sizes}, {"distinct_neurons", distinct_neurons}};
}

OverlapStats OverlapStats::from_json(const nlohmann::json& j, int I, const std::string& where) {
    OverlapStats st;
    st.intermediate_size = I;
    try {
        st.rate = j.at("rate").get<std::vector<std::vector<double>>>();
        st.count = j.at("count").get<std::vector<std::vector<int>>>();
        st.sizes = j.at("sizes").get<std::vector<int>>();
        st.distinct_neurons = j.at("distinct_neurons").get<int>();
    } catch (const nlohmann::json::exception& e) {
        fail("{}: overlap statistics: {}", where, e.what());
    }
    const size_t E = st.rate.size();
    bool ok = st.count.size() == E && st.sizes.size() == E;
    for (size_t e = 0; ok && e < E; ++e) ok = st.rate[e].size() == E && st.count[e].size() == E;
    if (!ok) fail("{}: overlap statistics: rate, count and sizes must all be for {} experts", where, E);
    return st;
}

// ---------------------------------------------------------------------------------------------
// Whole plan

ExpertPlan gradient_split_plan(const std::vector<std::vector<std::vector<double>>>& scores,
                               const GradientSplitOptions& opt) {
    const int L = int(scores.size());
    if (L == 0) fail("gradient split: no layers of scores");
    const size_t C = scores[0].size();
    if (C == 0 || scores[0][0].empty()) fail("gradient split: layer 0 has no score vectors");
    const int I = int(scores[0][0].size());
    for (int l = 0; l < L; ++l) {
        if (scores[size_t(l)].size() != C)
            fail("gradient split: layer {} has {} score vectors (clusters), layer 0 has {}", l, scores[size_t(l)].size(), C);
        for (size_t c = 0; c < C; ++c)
            if (scores[size_t(l)][c].size() != size_t(I))
                fail("gradient split: layer {} cluster {} has {} scores, layer 0 cluster 0 has {}", l, c,
                     scores[size_t(l)][c].size(), I);
    }
    const int E = opt.experts > 0 ? opt.experts : int(C);
    const int R = opt.residual;
    if (opt.experts < 0) fail("gradient split: expert count {} must be positive", opt.experts);
    if (int(C) < E)
        fail("gradient split: {} score vectors (data clusters) per layer for {} experts; each expert needs its own cluster",
             C, E);
    if (R < 0) fail("gradient split: residual expert count {} must not be negative", R);
    if (R >= E) fail("gradient split: {} residual experts of {} experts leave no routed experts", R, E);
    int es = opt.expert_size;
    if (es < 0) fail("gradient split: expert size {} must be positive", es);
    if (es == 0) {
        if (I % E != 0)
            fail("gradient split: {} experts do not divide the intermediate size {}; give the expert size", E, I);
        es = I / E;
    }
    const bool independent = !opt.share;

    ExpertPlan p;
    p.num_layers = L;
    p.hidden_size = opt.hidden_size;
    p.intermediate_size = I;
    p.ffn_fingerprint = opt.ffn_fingerprint;
    p.method = "gradient";
    p.params = {{"experts", E},
                {"routed", E - R},
                {"residual", R},
                {"expert_size", es},
                {"share", opt.share},
                {"criterion", criterion_name(opt.criterion)},
                {"assign", assign_name(opt.assign)},
                {"clusters", C},
                {"cluster_order", "numeric"}};
    p.layers.resize(size_t(L));
    std::vector<double> greedy_t(size_t(L), NAN), optimal_t(size_t(L), NAN);
    std::vector<std::string> errors(static_cast<size_t>(L));

    parallel_for_dynamic(L, 1, [&](int64_t l0, int64_t l1, int) {
        for (int l = int(l0); l < int(l1); ++l) {
            try {
                const ScoreSpan s = ScoreSpan(scores[size_t(l)]).first(size_t(E));
                LayerPlan& lp = p.layers[size_t(l)];
                const bool want_greedy = independent && (opt.assign == Assign::Greedy || opt.compare);
                const bool want_optimal = independent && (opt.assign == Assign::Optimal || opt.compare);
                ExpertSets greedy, optimal;
                if (R == 0) {
                    if (opt.share) lp.experts = shared_split(s, es, opt.criterion);
                    if (want_greedy) greedy = greedy_independent_split(s, es, opt.criterion);
                    if (want_optimal) optimal = optimal_independent_split(s, es, opt.criterion);
                } else {
                    if (opt.share || want_greedy) {
                        auto r = residual_split(s, E - R, R, es, opt.criterion, opt.share, Assign::Greedy);
                        lp.shared = std::move(r.residual);
                        (opt.share ? lp.experts : greedy) = std::move(r.routed);
                    }
                    if (want_optimal) {
                        auto r = residual_split(s, E - R, R, es, opt.criterion, false, Assign::Optimal);
                        lp.shared = std::move(r.residual);
                        optimal = std::move(r.routed);
                    }
                }
                if (independent) {
                    const ScoreSpan routed = s.first(size_t(E - R));
                    if (want_greedy) greedy_t[size_t(l)] = split_total(routed, greedy);
                    if (want_optimal) optimal_t[size_t(l)] = split_total(routed, optimal);
                    lp.experts = std::move(opt.assign == Assign::Greedy ? greedy : optimal);
                }
                const OverlapStats ov = overlap_stats(lp.experts, I);
                ExpertSets all = lp.experts;
                all.insert(all.end(), lp.shared.begin(), lp.shared.end());
                lp.stats = {{"overlap", ov.to_json()}, {"distinct_neurons", overlap_stats(all, I).distinct_neurons}};
                if (want_greedy) lp.stats["greedy_total"] = greedy_t[size_t(l)];
                if (want_optimal) lp.stats["optimal_total"] = optimal_t[size_t(l)];
            } catch (const std::exception& e) {
                errors[size_t(l)] = e.what();
            }
        }
    });
    for (int l = 0; l < L; ++l)
        if (!errors[size_t(l)].empty()) fail("layer {}: {}", l, errors[size_t(l)]);

    nlohmann::json distinct = nlohmann::json::array();
    for (const auto& lp : p.layers) distinct.push_back(lp.stats["distinct_neurons"]);
    p.stats = {{"distinct_neurons", distinct}};
    if (!std::isnan(greedy_t[0])) p.stats["greedy_total"] = std::accumulate(greedy_t.begin(), greedy_t.end(), 0.0);
    if (!std::isnan(optimal_t[0])) p.stats["optimal_total"] = std::accumulate(optimal_t.begin(), optimal_t.end(), 0.0);
    return p;
}

}  // namespace moefy
