#include "split/balanced_assignment.h"

#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

#include <lemon/network_simplex.h>
#include <lemon/smart_graph.h>

#include "common/error.h"

namespace moefy {
namespace {

void check_capacities(int n, int k, std::span<const int> cap, const char* who) {
    if (n < 0) fail("{}: negative row count {}", who, n);
    if (k < 1) fail("{}: need at least one column, got {}", who, k);
    if (int(cap.size()) != k) fail("{}: {} capacities for {} columns", who, cap.size(), k);
    int64_t sum = 0;
    for (int j = 0; j < k; ++j) {
        if (cap[j] < 0) fail("{}: capacity of column {} is negative ({})", who, j, cap[j]);
        sum += cap[j];
    }
    if (sum != n) fail("{}: capacities sum to {} but there are {} rows", who, sum, n);
}

// Successive shortest paths, started from the unconstrained optimum.
//
// Start: every row in its cheapest column. That is a min-cost pseudo-flow with
// all potentials 0 (moving row r from its column a to b costs C[r,b]-C[r,a]
// >= 0). Over-full columns hold excess, under-full ones a deficit. Each round
// runs Dijkstra from all excess columns to the sink T (reached from any
// under-full column) over the compressed graph and moves one row along every
// hop of the path; potentials keep reduced costs non-negative. The number of
// rounds is the total excess, usually a small part of n once k-means has
// settled.
template <class Cost>
class ShortestPathAssigner {
public:
    using Dist = std::conditional_t<std::is_integral_v<Cost>, int64_t, double>;

    ShortestPathAssigner(const Cost* C, int n, int k, std::span<const int> cap)
        : C_(C), n_(n), k_(k), cap_(cap.begin(), cap.end()), col_(size_t(n)), count_(size_t(k), 0),
          pot_(size_t(k) + 1, 0), heaps_(size_t(k) * size_t(k)) {}

    Dist solve(int32_t* labels) {
        start_at_argmin();
        int excess = 0;
        for (int j = 0; j < k_; ++j) excess += std::max(0, count_[j] - cap_[j]);
        for (; excess > 0; --excess) augment_once();
        Dist total = 0;
        for (int i = 0; i < n_; ++i) {
            labels[i] = col_[i];
            total += Dist(C_[size_t(i) * k_ + col_[i]]);
        }
        return total;
    }

private:
    struct Entry {
        Dist key;  // C[row, b] - C[row, a] for heap (a, b)
        int32_t row;
    };
    // std heap functions build max-heaps; "later" puts the smallest (key, row) on top.
    static bool later(const Entry& x, const Entry& y) { return x.key > y.key || (x.key == y.key && x.row > y.row); }

    std::vector<Entry>& heap(int a, int b) { return heaps_[size_t(a) * k_ + b]; }
    Dist cost(int r, int j) const { return Dist(C_[size_t(r) * k_ + j]); }

    void start_at_argmin() {
        for (int i = 0; i < n_; ++i) {
            const Cost* c = C_ + size_t(i) * k_;
            int best = 0;
            for (int j = 1; j < k_; ++j)
                if (c[j] < c[best]) best = j;
            col_[i] = best;
            ++count_[best];
        }
        for (int a = 0; a < k_; ++a)
            for (int b = 0; b < k_; ++b)
                if (a != b) heap(a, b).reserve(size_t(count_[a]) + 16);
        for (int i = 0; i < n_; ++i) {
            const int a = col_[i];
            for (int b = 0; b < k_; ++b)
                if (b != a) heap(a, b).push_back({cost(i, b) - cost(i, a), i});
        }
        for (auto& h : heaps_) std::make_heap(h.begin(), h.end(), later);
    }

    // Cheapest row of column a to move to b; drops entries of rows that left a.
    const Entry* top(int a, int b) {
        auto& h = heap(a, b);
        while (!h.empty() && col_[h.front().row] != a) {
            std::pop_heap(h.begin(), h.end(), later);
            h.pop_back();
        }
        return h.empty() ? nullptr : &h.front();
    }

    void place(int r, int a) {
        col_[r] = a;
        for (int b = 0; b < k_; ++b) {
            if (b == a) continue;
            auto& h = heap(a, b);
            h.push_back({cost(r, b) - cost(r, a), r});
            std::push_heap(h.begin(), h.end(), later);
        }
    }

    // One shortest path from the excess columns to the sink T = node k; one row moves per hop.
    void augment_once() {
        const int T = k_;
        const Dist inf = std::numeric_limits<Dist>::max() / 4;
        dist_.assign(size_t(k_) + 1, inf);
        parent_.assign(size_t(k_) + 1, -1);
        done_.assign(size_t(k_) + 1, 0);
        for (int a = 0; a < k_; ++a)
            if (count_[a] > cap_[a]) dist_[a] = 0;
        for (;;) {
            int u = -1;
            for (int v = 0; v <= T; ++v)
                if (!done_[v] && dist_[v] < inf && (u < 0 || dist_[v] < dist_[u])) u = v;
            if (u < 0) fail("balanced_assignment: internal error, no augmenting path");
            done_[u] = 1;
            if (u == T) break;
            const Dist du = dist_[u] + pot_[u];
            if (count_[u] < cap_[u] && du - pot_[T] < dist_[T]) {
                dist_[T] = du - pot_[T];
                parent_[T] = u;
            }
            for (int b = 0; b < k_; ++b) {
                if (done_[b] || b == u) continue;
                const Entry* e = top(u, b);
                if (!e) continue;
                const Dist nd = du + e->key - pot_[b];
                if (nd < dist_[b]) {
                    dist_[b] = nd;
                    parent_[b] = u;
                }
            }
        }
        // Capped update (nodes not reached before T get d(T)) keeps every reduced cost >= 0.
        const Dist dT = dist_[T];
        for (int v = 0; v <= T; ++v) pot_[v] += done_[v] ? dist_[v] : dT;

        path_.clear();
        for (int v = parent_[T]; v >= 0; v = parent_[v]) path_.push_back(v);
        std::reverse(path_.begin(), path_.end());  // excess column ... deficit column
        // Read every hop's row before moving any: a moved row must not be picked again.
        rows_.clear();
        for (size_t h = 0; h + 1 < path_.size(); ++h) rows_.push_back(top(path_[h], path_[h + 1])->row);
        for (size_t h = 0; h < rows_.size(); ++h) place(rows_[h], path_[h + 1]);
        --count_[path_.front()];
        ++count_[path_.back()];
    }

    const Cost* C_;
    int n_, k_;
    std::vector<int> cap_;
    std::vector<int32_t> col_;   // [n] column of each row
    std::vector<int> count_;     // [k]
    std::vector<Dist> pot_;      // [k+1] Johnson potentials, node k is the sink
    std::vector<std::vector<Entry>> heaps_;  // [k*k] lazy min-heaps, one per ordered column pair
    std::vector<Dist> dist_;
    std::vector<int> parent_;
    std::vector<char> done_;
    std::vector<int> path_;
    std::vector<int32_t> rows_;
};

template <class Cost>
auto solve_ssp(const Cost* costs, int n, int k, std::span<const int> cap, int32_t* labels) {
    check_capacities(n, k, cap, "balanced_assignment");
    ShortestPathAssigner<Cost> s(costs, n, k, cap);
    return s.solve(labels);
}

template <class Cost>
auto solve_network_simplex(const Cost* costs, int n, int k, std::span<const int> cap, int32_t* labels) {
    using Dist = std::conditional_t<std::is_integral_v<Cost>, int64_t, double>;
    check_capacities(n, k, cap, "balanced_assignment_network_simplex");
    lemon::SmartDigraph g;
    g.reserveNode(n + k);
    g.reserveArc(n * k);
    std::vector<lemon::SmartDigraph::Node> nodes(size_t(n) + k);
    for (auto& v : nodes) v = g.addNode();
    lemon::SmartDigraph::ArcMap<Dist> arc_cost(g);
    lemon::SmartDigraph::NodeMap<int64_t> supply(g);
    for (int i = 0; i < n; ++i) supply[nodes[i]] = 1;
    for (int j = 0; j < k; ++j) supply[nodes[size_t(n) + j]] = -cap[j];
    for (int i = 0; i < n; ++i)
        for (int j = 0; j < k; ++j) {
            auto a = g.addArc(nodes[i], nodes[size_t(n) + j]);  // arc id i*k + j
            arc_cost[a] = Dist(costs[size_t(i) * k + j]);
        }
    lemon::NetworkSimplex<lemon::SmartDigraph, int64_t, Dist> ns(g);
    ns.costMap(arc_cost).supplyMap(supply);
    if (ns.run() != lemon::NetworkSimplex<lemon::SmartDigraph, int64_t, Dist>::OPTIMAL)
        fail("balanced_assignment_network_simplex: no optimal solution ({} rows, {} columns)", n, k);
    Dist total = 0;
    for (int i = 0; i < n; ++i) {
        labels[i] = -1;
        for (int j = 0; j < k; ++j)
            if (ns.flow(g.arcFromId(i * k + j)) > 0) {
                labels[i] = j;
                total += Dist(costs[size_t(i) * k + j]);
            }
    }
    return total;
}

}  // namespace

int64_t balanced_assignment(const int64_t* costs, int n, int k, std::span<const int> cap, int32_t* labels) {
    return solve_ssp(costs, n, k, cap, labels);
}
double balanced_assignment(const float* costs, int n, int k, std::span<const int> cap, int32_t* labels) {
    return solve_ssp(costs, n, k, cap, labels);
}
int64_t balanced_assignment_network_simplex(const int64_t* costs, int n, int k, std::span<const int> cap,
                                            int32_t* labels) {
    return solve_network_simplex(costs, n, k, cap, labels);
}
double balanced_assignment_network_simplex(const float* costs, int n, int k, std::span<const int> cap,
                                           int32_t* labels) {
    return solve_network_simplex(costs, n, k, cap, labels);
}

}  // namespace moefy
