#include "split/graph_partition.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <limits>
#include <numeric>

#include "common/error.h"
#include "common/parallel.h"
#include "common/rng.h"
#include "io/output_dir.h"
#include "split/coactivation.h"
#include "split/expert_plan.h"

namespace moefy {

// ---- step 1: threshold and CSR ---------------------------------------------------------------

// Order statistics of `v` at sorted positions lo and lo+1 (clipped), leaving v
// partially ordered so later calls with a larger lo can start at `from`.
static void order_pair(std::vector<float>& v, size_t from, size_t lo, float& a, float& b) {
    std::nth_element(v.begin() + long(from), v.begin() + long(lo), v.end());
    a = v[lo];
    b = lo + 1 < v.size() ? *std::min_element(v.begin() + long(lo) + 1, v.end()) : a;
}

// numpy "linear" percentile on sorted data, given the two neighbours of the
// virtual index (n-1)·q: a + (b-a)·γ, or b - (b-a)·(1-γ) when γ >= 0.5. b-a is
// an f32 difference as numpy computes it on the f32 array.
static double numpy_lerp(float a, float b, double gamma) {
    const double d = double(b - a);
    return gamma >= 0.5 ? double(b) - d * (1.0 - gamma) : double(a) + d * gamma;
}

struct VirtualIndex {
    size_t lo;
    double gamma;
};

static VirtualIndex virtual_index(size_t count, double p) {
    const double v = double(count - 1) * (p / 100.0);
    if (v >= double(count - 1)) return {count - 1, 0.0};
    const double f = std::floor(v);
    return {size_t(f), v - f};
}

double matrix_percentile(const float* adj, int n, double p) {
    if (n < 1) fail("percentile: empty matrix");
    if (!(p >= 0 && p <= 100)) fail("percentile: p = {} outside [0, 100]", p);
    std::vector<float> v(adj, adj + size_t(n) * size_t(n));
    const VirtualIndex vi = virtual_index(v.size(), p);
    float a, b;
    order_pair(v, 0, vi.lo, a, b);
    return numpy_lerp(a, b, vi.gamma);
}

// An unsigned key whose order is the floats' order (finite values).
static uint32_t order_key(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
static float key_float(uint32_t k) {
    const uint32_t u = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

// The value at sorted position `rank` of all n² entries of a symmetric matrix,
// read from its upper triangle (an off-diagonal entry counts twice): a radix
// select on the float keys, 16 bits per pass, with integer counts (exact and
// the same for any thread count). No copy of the matrix, no serial selection.
static float symmetric_order_statistic(const float* adj, int n, uint64_t rank) {
    const size_t N = size_t(n);
    constexpr size_t kBuckets = size_t(1) << 16;
    uint32_t high = 0;  // the key's high 16 bits, after the first pass
    for (int pass = 0; pass < 2; ++pass) {
        // One histogram per thread (integer counts: any order gives the same sums).
        std::vector<std::vector<uint64_t>> local(static_cast<size_t>(parallel_threads()));
        parallel_for_dynamic(n, 16, [&](int64_t i0, int64_t i1, int thread) {
            std::vector<uint64_t>& h = local[size_t(thread)];
            h.resize(kBuckets, 0);
            for (int i = int(i0); i < int(i1); ++i) {
                const float* row = adj + size_t(i) * N;
                for (size_t j = size_t(i); j < N; ++j) {
                    const uint32_t k = order_key(row[j]);
                    const uint64_t count = j == size_t(i) ? 1 : 2;
                    if (pass == 0)
                        h[k >> 16] += count;
                    else if ((k >> 16) == high)
                        h[k & 0xffffu] += count;
                }
            }
        }, n >= 256);
        std::vector<uint64_t> hist(kBuckets, 0);
        for (const std::vector<uint64_t>& h : local)
            for (size_t b = 0; b < h.size(); ++b) hist[b] += h[b];
        size_t b = 0;
        for (; b + 1 < kBuckets && hist[b] <= rank; ++b) rank -= hist[b];
        if (pass == 0)
            high = uint32_t(b);
        else
            return key_float((high << 16) | uint32_t(b));
    }
    return 0.0f;  // not reached
}

double symmetric_percentile(const float* adj, int n, double p) {
    if (n < 1) fail("percentile: empty matrix");
    if (!(p >= 0 && p <= 100)) fail("percentile: p = {} outside [0, 100]", p);
    const size_t count = size_t(n) * size_t(n);
    const VirtualIndex vi = virtual_index(count, p);
    const float a = symmetric_order_statistic(adj, n, vi.lo);
    const float b = vi.lo + 1 < count ? symmetric_order_statistic(adj, n, vi.lo + 1) : a;
    return numpy_lerp(a, b, vi.gamma);
}

// The reference's loop: p = 10, 20, ... until the percentile is non-zero.
static double first_nonzero_decile(const float* adj, int n, int& p_out) {
    for (int p = 10; p <= 100; p += 10) {
        const double x = symmetric_percentile(adj, n, double(p));
        if (x != 0.0) {
            p_out = p;
            return x;
        }
    }
    fail("co-activation graph: all {}x{} entries are zero (no tokens, or activations all zero)", n, n);
}

// Exact symmetry and finiteness, checked block by block to stay cache-friendly.
static void check_symmetric(const float* adj, int n) {
    const size_t N = size_t(n);
    constexpr int B = 64;
    const int nb = (n + B - 1) / B;
    std::vector<long> bad_of(size_t(nb), -1);  // per row block: i * N + j of its last offending entry
    parallel_for_dynamic(nb, 1, [&](int64_t b0, int64_t b1, int) {
        for (int bi = int(b0); bi < int(b1); ++bi) {
            long& bad = bad_of[size_t(bi)];
            const int i0 = bi * B, i1 = std::min(n, i0 + B);
            for (int bj = bi; bj < nb; ++bj) {
                const int j0 = bj * B, j1 = std::min(n, j0 + B);
                for (int i = i0; i < i1; ++i)
                    for (int j = std::max(i, j0); j < j1; ++j) {
                        const float x = adj[size_t(i) * N + size_t(j)];
                        if (!std::isfinite(x) || x != adj[size_t(j) * N + size_t(i)]) bad = std::max(bad, long(size_t(i) * N + size_t(j)));
                    }
            }
        }
    }, nb > 4);
    const long bad = *std::max_element(bad_of.begin(), bad_of.end());
    if (bad >= 0) {
        const size_t i = size_t(bad) / N, j = size_t(bad) % N;
        fail("co-activation matrix [{}, {}]: entry ({}, {}) = {} is not finite or differs from ({}, {}) = {}", n, n, i, j,
             adj[i * N + j], j, i, adj[j * N + i]);
    }
}

MetisGraph build_metis_graph(const float* adj, int n, int64_t max_total_weight) {
    if (n < 1) fail("co-activation graph: empty matrix");
    if (max_total_weight < 1) fail("co-activation graph: weight budget {} must be positive", max_total_weight);
    if (int64_t(n) * (n - 1) > int64_t(std::numeric_limits<idx_t>::max()))
        fail("co-activation graph: {} vertices exceed METIS's {}-bit index type", n, IDXTYPEWIDTH);
    check_symmetric(adj, n);
    MetisGraph g;
    g.n = n;
    const double pct = first_nonzero_decile(adj, n, g.percentile);
    g.threshold = pct * 0.99;
    // numpy divides the f32 matrix by the f64 scalar in f32.
    const float thr = float(g.threshold);
    if (thr == 0.0f || !std::isfinite(thr))
        fail("co-activation graph: threshold {} is not usable in f32 (percentile {})", g.threshold, g.percentile);

    const size_t N = size_t(n);
    // adj[i][j] / thr for an edge, or 0 when i == j or it is below 1.
    auto ratio = [&](size_t i, size_t j) -> float {
        if (i == j) return 0.0f;
        const float w = adj[i * N + j] / thr;
        return w >= 1.0f ? w : 0.0f;
    };

    g.xadj.assign(N + 1, 0);
    // Σ trunc(w) over both directions: per row, then added in row order.
    std::vector<double> row_total(N, 0.0);
    parallel_for_dynamic(n, 16, [&](int64_t i0, int64_t i1, int) {
        for (int i = int(i0); i < int(i1); ++i) {
            idx_t cnt = 0;
            double sum = 0.0;
            for (size_t j = 0; j < N; ++j) {
                const float w = ratio(size_t(i), j);
                if (w != 0.0f) {
                    ++cnt;
                    sum += std::floor(double(w));
                }
            }
            g.xadj[size_t(i) + 1] = cnt;
            row_total[size_t(i)] = sum;
        }
    }, n >= 256);
    double total = 0.0;
    for (double t : row_total) total += t;
    for (size_t i = 0; i < N; ++i) g.xadj[i + 1] += g.xadj[i];
    const int64_t m2 = g.xadj[N];
    if (m2 == 0) fail("co-activation graph: no edge reaches the threshold {} (percentile {})", g.threshold, g.percentile);

    // Scaling keeps every edge (weights stay >= 1): Σ max(1, ⌊w/s⌋) <= total/s + m2 <= max_total_weight.
    double scale = 1.0;
    if (!std::isfinite(total)) fail("co-activation graph: edge weights overflow (threshold {})", g.threshold);
    if (total > double(max_total_weight)) {
        if (m2 >= max_total_weight)
            fail("co-activation graph: {} directed edges exceed the METIS weight budget {}", m2, max_total_weight);
        scale = std::ceil(total / double(max_total_weight - m2));
    }
    g.weight_scale = int64_t(scale);

    g.adjncy.resize(size_t(m2));
    g.adjwgt.resize(size_t(m2));
    parallel_for_dynamic(n, 16, [&](int64_t i0, int64_t i1, int) {
        for (int i = int(i0); i < int(i1); ++i) {
            size_t at = size_t(g.xadj[size_t(i)]);
            for (size_t j = 0; j < N; ++j) {
                const float w = ratio(size_t(i), j);
                if (w == 0.0f) continue;
                double wt = std::floor(double(w));
                if (scale > 1.0) wt = std::max(1.0, std::floor(wt / scale));
                g.adjncy[at] = idx_t(j);
                g.adjwgt[at] = idx_t(wt);
                ++at;
            }
        }
    }, n >= 256);
    return g;
}

std::string metis_graph_text(const MetisGraph& g) {
    std::string s = fmt::format("{} {} 001\n", g.n, g.num_edges());
    for (int i = 0; i < g.n; ++i) {
        for (idx_t k = g.xadj[size_t(i)]; k < g.xadj[size_t(i) + 1]; ++k) {
            if (k > g.xadj[size_t(i)]) s += ' ';
            fmt::format_to(std::back_inserter(s), "{} {}", g.adjncy[size_t(k)] + 1, g.adjwgt[size_t(k)]);
        }
        s += '\n';
    }
    return s;
}

void write_metis_graph(const MetisGraph& g, const std::string& path) { write_file_atomic(path, metis_graph_text(g)); }

// ---- step 2: METIS ---------------------------------------------------------------------------

static const char* metis_status_name(int rc) {
    switch (rc) {
        case METIS_ERROR_INPUT: return "METIS_ERROR_INPUT";
        case METIS_ERROR_MEMORY: return "METIS_ERROR_MEMORY";
        case METIS_ERROR: return "METIS_ERROR";
        default: return "unknown METIS status";
    }
}

// METIS allows parts up to (1 + ufactor/1000) · n/parts vertices. When parts
// does not divide n and n is small, ufactor 30 can forbid the exact widths
// (n = 66, parts = 4: 1.03 · 16.5 < 17), and METIS then returns a poor cut.
static int min_ufactor(int n, int parts) {
    const int widest = (n + parts - 1) / parts;
    return int(std::ceil(1000.0 * (double(widest) * parts / n - 1.0))) + 1;
}

std::vector<int32_t> metis_partition(const MetisGraph& g, int parts, uint64_t seed, int ufactor, int64_t* edgecut) {
    check_expert_count(parts, g.n);
    if (g.xadj.size() != size_t(g.n) + 1 || g.adjncy.size() != size_t(g.xadj.back()) || g.adjwgt.size() != g.adjncy.size())
        fail("METIS graph: inconsistent CSR sizes (n {}, xadj {}, adjncy {}, adjwgt {})", g.n, g.xadj.size(),
             g.adjncy.size(), g.adjwgt.size());
    if (ufactor < 1) fail("METIS: ufactor {} must be positive", ufactor);
    idx_t options[METIS_NOPTIONS];
    METIS_SetDefaultOptions(options);
    options[METIS_OPTION_SEED] = idx_t(seed & 0x7fffffffu);
    options[METIS_OPTION_UFACTOR] = idx_t(std::max(ufactor, min_ufactor(g.n, parts)));
    options[METIS_OPTION_NUMBERING] = 0;
    idx_t nv = g.n, ncon = 1, np = parts, objval = 0;
    std::vector<idx_t> part(size_t(g.n), 0);
    // METIS takes non-const pointers; k-way partitioning reads the graph without changing it.
    const int rc = METIS_PartGraphKway(&nv, &ncon, const_cast<idx_t*>(g.xadj.data()), const_cast<idx_t*>(g.adjncy.data()),
                                       nullptr, nullptr, const_cast<idx_t*>(g.adjwgt.data()), &np, nullptr, nullptr,
                                       options, &objval, part.data());
    if (rc != METIS_OK)
        fail("METIS_PartGraphKway ({} vertices, {} edges, {} parts): {} ({})", g.n, g.num_edges(), parts,
             metis_status_name(rc), rc);
    std::vector<int32_t> labels(part.begin(), part.end());
    for (int i = 0; i < g.n; ++i)
        if (labels[size_t(i)] < 0 || labels[size_t(i)] >= parts)
            fail("METIS_PartGraphKway: vertex {} got part {} outside [0, {})", i, labels[size_t(i)], parts);
    if (edgecut) *edgecut = objval;
    return labels;
}

// ---- step 3: exact balance -------------------------------------------------------------------

int rebalance_partition(std::vector<int32_t>& labels, const float* adj, int n, int parts) {
    check_expert_count(parts, n);
    if (labels.size() != size_t(n)) fail("rebalance: {} labels for {} neurons", labels.size(), n);
    const size_t N = size_t(n), E = size_t(parts);
    std::vector<int> size(E, 0);
    for (size_t v = 0; v < N; ++v) {
        if (labels[v] < 0 || labels[v] >= parts) fail("rebalance: neuron {} has part {} outside [0, {})", v, labels[v], parts);
        ++size[size_t(labels[v])];
    }

    // Capacities: the `extra` currently largest parts may hold one more neuron.
    const int base = n / parts, extra = n % parts;
    std::vector<int> by_size(E);
    std::iota(by_size.begin(), by_size.end(), 0);
    std::stable_sort(by_size.begin(), by_size.end(), [&](int a, int b) { return size[size_t(a)] > size[size_t(b)]; });
    std::vector<int> cap(E, base);
    for (int k = 0; k < extra; ++k) cap[size_t(by_size[size_t(k)])] = base + 1;

    // conn: [n, E], conn[v][p] = Σ_{u in p, u != v} adj[v][u]
    std::vector<double> conn(N * E, 0.0);
    parallel_for_dynamic(n, 16, [&](int64_t v0, int64_t v1, int) {
        for (int v = int(v0); v < int(v1); ++v) {
            const float* row = adj + size_t(v) * N;
            double* c = conn.data() + size_t(v) * E;
            for (size_t u = 0; u < N; ++u)
                if (u != size_t(v)) c[labels[u]] += double(row[u]);
        }
    }, n >= 256);

    int moved = 0;
    std::vector<int> under;
    for (;;) {
        under.clear();
        bool any_over = false;
        for (size_t p = 0; p < E; ++p) {
            if (size[p] < cap[p]) under.push_back(int(p));
            any_over |= size[p] > cap[p];
        }
        if (!any_over) break;
        double best = 0.0;
        int bv = -1, bq = -1;
        for (size_t v = 0; v < N; ++v) {
            const size_t p = size_t(labels[v]);
            if (size[p] <= cap[p]) continue;
            const double* c = conn.data() + v * E;
            for (int q : under) {
                const double cost = c[p] - c[size_t(q)];
                if (bv < 0 || cost < best) best = cost, bv = int(v), bq = q;
            }
        }
        const size_t p = size_t(labels[size_t(bv)]), q = size_t(bq);
        labels[size_t(bv)] = bq;
        --size[p];
        ++size[q];
        ++moved;
        const float* col = adj + size_t(bv) * N;  // adj[u][bv] == adj[bv][u]
        for (size_t u = 0; u < N; ++u) {
            if (u == size_t(bv)) continue;
            conn[u * E + p] -= double(col[u]);
            conn[u * E + q] += double(col[u]);
        }
    }

    // Expert order: the base+1 parts first, so sizes follow balanced_widths(n, parts).
    if (extra > 0) {
        std::vector<int32_t> remap(E);
        int32_t next = 0;
        for (size_t p = 0; p < E; ++p)
            if (cap[p] == base + 1) remap[p] = next++;
        for (size_t p = 0; p < E; ++p)
            if (cap[p] == base) remap[p] = next++;
        for (auto& l : labels) l = remap[size_t(l)];
    }
    return moved;
}

double kept_fraction(const float* adj, int n, const std::vector<int32_t>& labels) {
    if (labels.size() != size_t(n)) fail("kept fraction: {} labels for {} neurons", labels.size(), n);
    const size_t N = size_t(n);
    // Per row, then added in row order: the same sums for any thread count.
    std::vector<double> row_in(N, 0.0), row_all(N, 0.0);
    parallel_for_dynamic(n, 16, [&](int64_t i0, int64_t i1, int) {
        for (int i = int(i0); i < int(i1); ++i) {
            const float* row = adj + size_t(i) * N;
            double in = 0.0, all = 0.0;
            for (size_t j = 0; j < N; ++j) {
                if (j == size_t(i)) continue;
                all += double(row[j]);
                if (labels[j] == labels[size_t(i)]) in += double(row[j]);
            }
            row_in[size_t(i)] = in;
            row_all[size_t(i)] = all;
        }
    }, n >= 256);
    double inside = 0.0, total = 0.0;
    for (size_t i = 0; i < N; ++i) inside += row_in[i], total += row_all[i];
    return total == 0.0 ? 0.0 : inside / total;
}

std::vector<int32_t> random_balanced_labels(int n, int parts, uint64_t seed) {
    check_expert_count(parts, n);
    std::vector<int32_t> perm(static_cast<size_t>(n));
    std::iota(perm.begin(), perm.end(), 0);
    Rng rng(seed, 0x6772617068ull);  // "graph": a stream apart from the random split's per-layer streams
    rng.shuffle(perm.begin(), perm.end());
    std::vector<int32_t> labels(static_cast<size_t>(n));
    size_t at = 0;
    const std::vector<int> widths = balanced_widths(n, parts);
    for (size_t e = 0; e < widths.size(); ++e)
        for (int k = 0; k < widths[e]; ++k) labels[size_t(perm[at++])] = int32_t(e);
    return labels;
}

std::vector<std::vector<int32_t>> experts_from_labels(const std::vector<int32_t>& labels, int parts) {
    std::vector<std::vector<int32_t>> experts(size_t(std::max(parts, 0)));
    for (size_t v = 0; v < labels.size(); ++v) {
        if (labels[v] < 0 || labels[v] >= parts) fail("labels: neuron {} has expert {} outside [0, {})", v, labels[v], parts);
        experts[size_t(labels[v])].push_back(int32_t(v));
    }
    return experts;
}

// ---- all steps -------------------------------------------------------------------------------

nlohmann::json GraphPartitionResult::stats() const {
    return {{"kept_fraction", kept_fraction},
            {"random_kept_fraction", random_kept_fraction},
            {"graph_edges", num_edges},
            {"threshold_percentile", percentile},
            {"threshold", threshold},
            {"weight_scale", weight_scale},
            {"metis_edgecut", metis_edgecut},
            {"rebalance_moved", moved},
            {"saturated_fraction", saturated_fraction}};
}

GraphPartitionResult partition_coactivation(const float* adj, int n, int experts, uint64_t seed) {
    check_expert_count(experts, n);
    GraphPartitionResult r;
    {
        const MetisGraph g = build_metis_graph(adj, n);
        r.num_edges = g.num_edges();
        r.percentile = g.percentile;
        r.threshold = g.threshold;
        r.weight_scale = g.weight_scale;
        r.labels = metis_partition(g, experts, seed, 30, &r.metis_edgecut);
    }  // the CSR can be as large as adj; free it before rebalancing
    r.moved = rebalance_partition(r.labels, adj, n, experts);
    r.kept_fraction = kept_fraction(adj, n, r.labels);
    r.random_kept_fraction = kept_fraction(adj, n, random_balanced_labels(n, experts, seed));
    r.experts = experts_from_labels(r.labels, experts);
    return r;
}

GraphPartitionResult partition_coactivation(const CoactivationAccumulator& acc, int experts, uint64_t seed) {
    if (acc.pending_tokens() > 0)
        fail("co-activation: {} tokens still buffered; call finish() before partitioning", acc.pending_tokens());
    if (acc.chunks() == 0) fail("co-activation: no tokens were added");
    check_expert_count(experts, acc.size());
    const std::vector<float> adj = acc.symmetric();
    GraphPartitionResult r = partition_coactivation(adj.data(), acc.size(), experts, seed);
    r.saturated_fraction = acc.saturated_fraction();
    return r;
}

}  // namespace moefy
