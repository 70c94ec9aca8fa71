// Neuron importance (split/importance.h): accumulation, the data-parallel run,
// the importance file, and the gradient split on top of it.
#include "split/importance.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>

#include "common/error.h"
#include "io/json.h"
#include "io/output_dir.h"
#include "io/safetensors.h"
#include "model/checkpoint.h"
#include "tokenizer/tokenizer.h"

#ifdef MOEFY_WITH_MPI
// Only the C API is used: keep the deprecated C++ bindings (and their warnings) out.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#endif

namespace moefy {

namespace fs = std::filesystem;

// ---- sums ----------------------------------------------------------------------------------

namespace {

inline double apply_kernel(ImportanceKernel k, double x) {
    switch (k) {
        case ImportanceKernel::L1: return std::fabs(x);
        case ImportanceKernel::L2: return x * x;
        case ImportanceKernel::Plain: return x;
    }
    return x;
}

// acc[i] += Σ_t kernel(s_ti) (sample) or Σ_t s_ti (total), s = grad or feat ⊙ grad; feat, grad: [T, I].
// Columns are split over the threads; each column sums its tokens in order, so
// the result does not depend on the thread count.
void accumulate_columns(const float* feat, const float* grad, int T, int I, const ImportanceSettings& s, double* acc) {
    constexpr int kCols = 64;
    const bool change = s.kind == ImportanceKind::FeatureChange, sample = s.level == ImportanceLevel::Sample;
#pragma omp parallel for schedule(static) if (size_t(T) * size_t(I) > 16384)
    for (int c0 = 0; c0 < I; c0 += kCols) {
        const int c1 = std::min(I, c0 + kCols);
        for (int t = 0; t < T; ++t) {
            const float* f = feat + size_t(t) * I;
            const float* g = grad + size_t(t) * I;
            for (int i = c0; i < c1; ++i) {
                const double x = change ? double(f[i]) * double(g[i]) : double(g[i]);
                acc[i] += sample ? apply_kernel(s.kernel, x) : x;
            }
        }
    }
}

}  // namespace

void ImportanceSums::resize(int layers, int I) {
    num_layers = layers, intermediate_size = I;
    up.assign(size_t(layers) * size_t(I), 0.0);
    gate.assign(size_t(layers) * size_t(I), 0.0);
}

const double* ImportanceSums::sums(ImportanceTarget t, int layer) const {
    return (t == ImportanceTarget::Up ? up : gate).data() + size_t(layer) * size_t(intermediate_size);
}
double* ImportanceSums::sums(ImportanceTarget t, int layer) {
    return (t == ImportanceTarget::Up ? up : gate).data() + size_t(layer) * size_t(intermediate_size);
}

std::vector<double> ImportanceSums::scores(const ImportanceSettings& s, ImportanceTarget t, int layer) const {
    if (layer < 0 || layer >= num_layers) fail("importance: layer {} outside [0, {})", layer, num_layers);
    const double* p = sums(t, layer);
    std::vector<double> out(p, p + intermediate_size);
    const double n = tokens > 0 ? double(tokens) : 1.0;
    for (double& x : out) x = (s.level == ImportanceLevel::Total ? apply_kernel(s.kernel, x) : x) / n;
    return out;
}

void ImportanceSums::add(const ImportanceSums& o) {
    if (o.num_layers != num_layers || o.intermediate_size != intermediate_size)
        fail("importance: adding sums of {} layers x {} to sums of {} x {}", o.num_layers, o.intermediate_size, num_layers,
             intermediate_size);
    for (size_t i = 0; i < up.size(); ++i) up[i] += o.up[i], gate[i] += o.gate[i];
    tokens += o.tokens, windows += o.windows;
}

void ImportanceAccumulator::on_ffn_grads(const FfnGrads& a) {
    if (a.I != sums_.intermediate_size || a.layer >= sums_.num_layers)
        fail("importance: layer {} of width {} does not fit sums of {} layers x {}", a.layer, a.I, sums_.num_layers,
             sums_.intermediate_size);
    accumulate_columns(a.h, a.dh, a.T, a.I, s_, sums_.sums(ImportanceTarget::Up, a.layer));
    accumulate_columns(a.g, a.dg, a.T, a.I, s_, sums_.sums(ImportanceTarget::Gate, a.layer));
}

// ---- processes --------------------------------------------------------------------------------

namespace {
#ifdef MOEFY_WITH_MPI
// Started by mpirun/mpiexec (Open MPI, MPICH/Hydra) or a PMIx launcher such as srun.
bool launched_by_mpi() {
    for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"})
        if (std::getenv(v)) return true;
    return false;
}
void finalize_mpi() {
    int done = 0;
    MPI_Finalized(&done);
    if (!done) MPI_Finalize();
}
#endif
}  // namespace

bool RankGroup::built_with_mpi() {
#ifdef MOEFY_WITH_MPI
    return true;
#else
    return false;
#endif
}

RankGroup RankGroup::world() {
    RankGroup g;
#ifdef MOEFY_WITH_MPI
    if (!launched_by_mpi()) return g;
    int ready = 0;
    MPI_Initialized(&ready);
    if (!ready) {
        if (MPI_Init(nullptr, nullptr) != MPI_SUCCESS) fail("MPI_Init failed");
        std::atexit(finalize_mpi);
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &g.rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &g.size_);
    g.mpi_ = true;
#endif
    return g;
}

RankGroup RankGroup::simulated(int rank, int size) {
    if (size < 1 || rank < 0 || rank >= size) fail("rank group: rank {} of {} is not a rank", rank, size);
    RankGroup g;
    g.rank_ = rank, g.size_ = size;
    return g;
}

void RankGroup::sum(double* v, size_t n) const {
#ifdef MOEFY_WITH_MPI
    if (!mpi_ || size_ == 1) return;
    constexpr size_t kChunk = size_t(1) << 24;  // MPI counts are int
    for (size_t i = 0; i < n; i += kChunk)
        MPI_Allreduce(MPI_IN_PLACE, v + i, int(std::min(kChunk, n - i)), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
#endif
}

void RankGroup::sum(int64_t* v, size_t n) const {
#ifdef MOEFY_WITH_MPI
    if (!mpi_ || size_ == 1) return;
    MPI_Allreduce(MPI_IN_PLACE, v, int(n), MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
#endif
}

void RankGroup::abort(int code) const {
#ifdef MOEFY_WITH_MPI
    if (mpi_ && size_ > 1) MPI_Abort(MPI_COMM_WORLD, code);
#endif
}

// ---- the run ---------------------------------------------------------------------------------------

std::vector<std::string> cluster_files(const std::string& dir) {
    if (!fs::is_directory(dir)) fail("{}: not a directory (expected the output of `moefy cluster-text`)", dir);
    auto file = [&](size_t c) { return (fs::path(dir) / fmt::format("{}.jsonl", c)).string(); };
    std::vector<std::string> files;
    const std::string summary = (fs::path(dir) / "summary.json").string();
    if (fs::exists(summary)) {
        const nlohmann::json j = read_json_file(summary);
        if (!j.is_object() || !j.contains("clusters") || !json_int_in(j["clusters"], 1, 1 << 20))
            fail("{}: no field 'clusters' with a count in [1, {}]", summary, 1 << 20);
        const size_t K = j["clusters"].get<size_t>();
        for (size_t c = 0; c < K; ++c) {
            if (!fs::exists(file(c))) fail("{}: {} says {} clusters but {} is missing", dir, summary, K, file(c));
            files.push_back(file(c));
        }
    } else {
        while (fs::exists(file(files.size()))) files.push_back(file(files.size()));
        if (files.empty()) fail("{}: no cluster files (0.jsonl, 1.jsonl, ...)", dir);
    }
    return files;
}

ImportanceResult compute_importance(const Checkpoint& ck, const Tokenizer& tok, const std::string& clusters_dir,
                                    const ImportanceOptions& opt, const RankGroup& group,
                                    const ImportanceProgress& progress) {
    const auto t0 = std::chrono::steady_clock::now();
    const ModelConfig& c = ck.config;
    if (c.is_moe())
        fail("{}: importance is computed on the dense model, this one is {}", ck.dir, model_kind_name(c.kind));
    if (opt.ctx < 2) fail("importance: --ctx {} leaves nothing to predict (at least 2)", opt.ctx);
    const std::vector<std::string> files = cluster_files(clusters_dir);

    // Every rank tokenizes everything (cheap next to the backward) and takes its share.
    std::vector<std::vector<TokenWindow>> windows;
    size_t my_tokens = 0;
    for (const std::string& f : files) {
        windows.push_back(make_windows(read_documents(f, opt.text_field), tok, {opt.ctx, opt.max_tokens_per_cluster, true}));
        if (windows.back().empty()) fail("{}: no window of at least 2 tokens", f);
        for (size_t i = size_t(group.rank()); i < windows.back().size(); i += size_t(group.size()))
            my_tokens += windows.back()[i].size() - 1;
    }

    ImportanceResult r;
    r.settings = opt.settings;
    r.ctx = opt.ctx;
    r.max_tokens_per_cluster = opt.max_tokens_per_cluster;
    r.model = ck.dir;
    r.data = clusters_dir;
    r.num_layers = c.num_layers;
    r.hidden_size = c.hidden_size;
    r.intermediate_size = c.intermediate_size;
    r.ffn_fingerprint = ffn_fingerprint(*ck.tensors, c);
    r.ranks = group.size();
    r.clusters.resize(files.size());

    auto model = Model::load(ck);
    Backprop bp(*model, opt.backward);
    size_t done = 0;
    for (size_t k = 0; k < files.size(); ++k) {
        ImportanceSums& s = r.clusters[k];
        s.resize(c.num_layers, c.intermediate_size);
        ImportanceAccumulator acc(s, opt.settings);
        const std::vector<TokenWindow>& ws = windows[k];
        for (size_t i = size_t(group.rank()); i < ws.size(); i += size_t(group.size())) {
            bp.run(ws[i].data(), int(ws[i].size()), &acc);
            s.tokens += int64_t(ws[i].size()) - 1;
            s.windows += 1;
            done += ws[i].size() - 1;
            if (progress) progress(done, my_tokens);
        }
    }
    for (ImportanceSums& s : r.clusters) {
        group.sum(s.up.data(), s.up.size());
        group.sum(s.gate.data(), s.gate.size());
        int64_t counts[2] = {s.tokens, s.windows};
        group.sum(counts, 2);
        s.tokens = counts[0], s.windows = counts[1];
    }
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return r;
}

// ---- the file ----------------------------------------------------------------------------------

namespace {
constexpr const char* kFormat = "moefy-importance";
constexpr int kVersion = 1;
constexpr ImportanceTarget kTargets[] = {ImportanceTarget::Up, ImportanceTarget::Gate};
}  // namespace

void write_importance(const std::string& path, const ImportanceResult& r) {
    const int K = int(r.clusters.size()), L = r.num_layers, I = r.intermediate_size;
    std::vector<TensorSpec> specs;
    std::vector<std::vector<float>> values;
    nlohmann::json tokens = nlohmann::json::array(), windows = nlohmann::json::array();
    for (int k = 0; k < K; ++k) {
        const ImportanceSums& s = r.clusters[size_t(k)];
        if (s.num_layers != L || s.intermediate_size != I)
            fail("{}: cluster {} has sums of {} layers x {}, expected {} x {}", path, k, s.num_layers, s.intermediate_size, L, I);
        tokens.push_back(s.tokens);
        windows.push_back(s.windows);
        for (int l = 0; l < L; ++l)
            for (ImportanceTarget t : kTargets) {
                specs.push_back({importance_tensor_name(k, l, t), DType::F32, {I}});
                const std::vector<double> sc = s.scores(r.settings, t, l);
                values.emplace_back(sc.begin(), sc.end());
            }
    }
    const std::map<std::string, std::string> meta = {
        {"format", kFormat},
        {"version", std::to_string(kVersion)},
        {"kind", importance_kind_name(r.settings.kind)},
        {"kernel", importance_kernel_name(r.settings.kernel)},
        {"level", importance_level_name(r.settings.level)},
        {"ctx", std::to_string(r.ctx)},
        {"max_tokens_per_cluster", std::to_string(r.max_tokens_per_cluster)},
        {"clusters", std::to_string(K)},
        {"num_layers", std::to_string(L)},
        {"hidden_size", std::to_string(r.hidden_size)},
        {"intermediate_size", std::to_string(I)},
        {"ffn_fingerprint", r.ffn_fingerprint},
        {"model", r.model},
        {"data", r.data},
        {"ranks", std::to_string(r.ranks)},
        {"tokens", tokens.dump()},
        {"windows", windows.dump()},
        {"scores", "f64 sums / tokens, stored as F32"}};
    check_output_path(path, OutputKind::File, true);
    remove_stale_siblings(path);
    const std::string tmp = temp_sibling(path);
    try {
        write_safetensors(tmp, specs, [&](size_t i, ByteSink& sink) { sink.write(values[i].data(), values[i].size() * 4); },
                          meta);
    } catch (...) {
        std::error_code ec;
        fs::remove(tmp, ec);
        throw;
    }
    commit_file(tmp, path);
}


void check_importance_for(const ImportanceFile& f, const ModelConfig& cfg, const std::string& fingerprint) {
    if (f.num_layers != cfg.num_layers || f.intermediate_size != cfg.intermediate_size || f.hidden_size != cfg.hidden_size)
        fail("{}: computed for a model of {} layers, hidden {}, intermediate {}; this model has {}, {}, {}", f.path,
             f.num_layers, f.hidden_size, f.intermediate_size, cfg.num_layers, cfg.hidden_size, cfg.intermediate_size);
    if (f.ffn_fingerprint != fingerprint)
        fail("{}: computed for another model (FFN fingerprint {}, this model's is {})", f.path, f.ffn_fingerprint,
             fingerprint);
}

ImportanceFile importance_scores(const ImportanceResult& r, const std::string& where) {
    ImportanceFile f;
    f.path = where;
    f.settings = r.settings;
    f.clusters = int(r.clusters.size());
    f.num_layers = r.num_layers;
    f.hidden_size = r.hidden_size;
    f.intermediate_size = r.intermediate_size;
    f.ffn_fingerprint = r.ffn_fingerprint;
    f.up.assign(size_t(r.num_layers), std::vector<std::vector<double>>(r.clusters.size()));
    f.gate = f.up;
    for (size_t k = 0; k < r.clusters.size(); ++k) {
        const ImportanceSums& s = r.clusters[k];
        f.tokens.push_back(s.tokens);
        for (int l = 0; l < r.num_layers; ++l) {
            f.up[size_t(l)][k] = s.scores(r.settings, ImportanceTarget::Up, l);
            f.gate[size_t(l)][k] = s.scores(r.settings, ImportanceTarget::Gate, l);
        }
    }
    return f;
}

ExpertPlan gradient_split_from_importance(const ImportanceFile& f, ImportanceTarget target, GradientSplitOptions opt) {
    const int C = f.clusters, I = f.intermediate_size;
    if (opt.experts < 0) fail("--experts {} must be positive", opt.experts);
    const int E = opt.experts > 0 ? opt.experts : C;
    if (E < 2) fail("{}: {} expert(s); a split needs at least 2", f.path, E);
    if (C < E)
        fail("{}: {} data clusters for {} experts; the gradient split builds each expert from its own cluster "
             "(cluster the text into at least {} clusters)",
             f.path, C, E, E);
    if (opt.residual < 0) fail("--residual {} must not be negative", opt.residual);
    if (opt.residual >= E)
        fail("{} residual experts of {} experts leave no routed experts (--residual must be below --experts)", opt.residual, E);
    const int R = opt.residual;
    int es = opt.expert_size;
    if (es < 0) fail("--expert-size {} must be positive", es);
    if (!opt.share) {
        if (es == 0 && I % E != 0)
            fail("{} experts do not divide the intermediate size {}; give --expert-size with --share, or another expert count",
                 E, I);
        if (es > 0 && int64_t(es) * E != I)
            fail("--expert-size {} does not fit: without --share the {} experts partition the {} neurons, so the size "
                 "must be {}/{}{}",
                 es, E, I, I, E, I % E == 0 ? fmt::format(" = {}", I / E) : std::string(" (not an integer)"));
    } else {
        if (es == 0) {
            if (I % E != 0) fail("{} experts do not divide the intermediate size {}; give --expert-size", E, I);
            es = I / E;
        }
        if (R == 0 && es > I) fail("--expert-size {} exceeds the intermediate size {}", es, I);
        if (R > 0 && int64_t(R + 1) * es > I)
            fail("--expert-size {} does not fit: {} residual experts take {} neurons and each routed expert needs {} more "
                 "of the {} (at most {} per expert)",
                 es, R, int64_t(R) * es, es, I, I / (R + 1));
    }
    opt.hidden_size = f.hidden_size;
    opt.ffn_fingerprint = f.ffn_fingerprint;
    ExpertPlan p = gradient_split_plan(f.scores(target), opt);
    p.params["importance"] = {{"file", f.path},
                              {"target", importance_target_name(target)},
                              {"kind", importance_kind_name(f.settings.kind)},
                              {"kernel", importance_kernel_name(f.settings.kernel)},
                              {"level", importance_level_name(f.settings.level)},
                              {"tokens", f.tokens}};
    return p;
}

}  // namespace moefy
