// build --budget: search, then the winner converted and evaluated.
#include "pipeline/budget.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>

#include "common/error.h"
#include "eval/perplexity.h"
#include "model/checkpoint.h"
#include "model/llama.h"
#include "pipeline/build.h"
#include "route/calibration.h"
#include "route/refit.h"
#include "convert/routing.h"
#include "route/build_routers.h"
#include "split/shared_split.h"
#include "tokenizer/tokenizer.h"

namespace moefy {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string group_key(const BudgetCandidate& c) {
    return fmt::format("{}/{}/{}/{}", c.method, c.experts, c.shared, c.refit ? 1 : 0);
}
std::string plan_key(const BudgetCandidate& c) { return fmt::format("{}/{}/{}", c.method, c.experts, c.shared); }
std::string cand_key(const BudgetCandidate& c) { return fmt::format("{}/{}", group_key(c), c.top_k); }

}  // namespace

std::vector<BudgetCandidate> budget_candidates(const BudgetSpace& space, int default_experts, bool shared_ok) {
    std::vector<int> experts = space.experts.empty() ? std::vector<int>{default_experts} : space.experts;
    std::vector<BudgetCandidate> out;
    for (const std::string& m : space.methods)
        for (int E : experts)
            for (int N : space.shared) {
                if (N < 0 || N > E - 2 || (N > 0 && !shared_ok)) continue;
                for (bool rf : space.refit)
                    for (int k = 1; k <= E - N - 1; ++k) {
                        BudgetCandidate c;
                        c.method = m;
                        c.experts = E;
                        c.shared = N;
                        c.top_k = k;
                        c.refit = rf;
                        c.active = double(N + k) / double(E);
                        out.push_back(c);
                    }
            }
    return out;
}

void mark_pareto_front(std::vector<BudgetCandidate>& c) {
    for (BudgetCandidate& a : c) {
        a.front = true;
        for (const BudgetCandidate& b : c)
            if (&a != &b && b.active <= a.active && b.ratio <= a.ratio && (b.active < a.active || b.ratio < a.ratio)) {
                a.front = false;
                break;
            }
    }
}

BudgetSearch search_budget(const std::vector<BudgetCandidate>& space, double budget,
                           const std::function<double(const BudgetCandidate&)>& eval) {
    if (!(budget >= 1.0) || !std::isfinite(budget)) fail("--budget {}: must be a perplexity ratio of at least 1", budget);
    BudgetSearch s;
    s.budget = budget;
    // Groups in order of appearance, refit groups first (they usually win, so the
    // others are searched only below the best active fraction found).
    std::vector<std::string> order;
    std::map<std::string, std::vector<BudgetCandidate>> groups;
    for (const BudgetCandidate& c : space) {
        auto& g = groups[group_key(c)];
        if (g.empty()) order.push_back(group_key(c));
        g.push_back(c);
    }
    std::stable_partition(order.begin(), order.end(), [&](const std::string& k) { return groups[k][0].refit; });
    std::map<std::string, int> done;  // candidate key -> index in s.evaluated
    auto evaluate = [&](const BudgetCandidate& c0) -> const BudgetCandidate& {
        const std::string key = cand_key(c0);
        if (auto it = done.find(key); it != done.end()) return s.evaluated[size_t(it->second)];
        BudgetCandidate c = c0;
        const auto t0 = Clock::now();
        c.ratio = eval(c);
        c.seconds = since(t0);
        c.meets = c.ratio <= budget;
        done[key] = int(s.evaluated.size());
        s.evaluated.push_back(c);
        return s.evaluated.back();
    };
    double best_active = INFINITY;
    for (const std::string& key : order) {
        std::vector<BudgetCandidate>& g = groups[key];
        std::sort(g.begin(), g.end(), [](const BudgetCandidate& a, const BudgetCandidate& b) { return a.top_k < b.top_k; });
        // Only top-k that could still win (or tie) on active fraction.
        int n = 0;
        while (n < int(g.size()) && g[size_t(n)].active <= best_active + 1e-12) ++n;
        if (n == 0) continue;
        if (!evaluate(g[size_t(n - 1)]).meets) continue;  // not even the largest allowed top-k fits
        int lo = 0, hi = n - 1;                           // hi meets
        while (lo < hi) {
            const int mid = (lo + hi) / 2;
            if (evaluate(g[size_t(mid)]).meets)
                hi = mid;
            else
                lo = mid + 1;
        }
        best_active = std::min(best_active, g[size_t(hi)].active);
    }
    for (size_t i = 0; i < s.evaluated.size(); ++i) {
        const BudgetCandidate& c = s.evaluated[i];
        if (!c.meets) continue;
        if (s.winner < 0) {
            s.winner = int(i);
            continue;
        }
        const BudgetCandidate& w = s.evaluated[size_t(s.winner)];
        if (c.active < w.active - 1e-12 || (std::fabs(c.active - w.active) <= 1e-12 && c.ratio < w.ratio)) s.winner = int(i);
    }
    mark_pareto_front(s.evaluated);
    return s;
}

namespace {

// Routers fitted once per plan; the scale refitted per top-k (closed form).
RouterBuild rescale_for_k(const RouterBuild& fitted, const std::vector<LayerCalib>& stats, const RouterOptions& ro, int k) {
    RouterBuild rb = fitted;
    const bool over_all = ro.combine == CombineRule::SoftmaxAll;
    for (size_t l = 0; l < stats.size(); ++l) {
        const std::vector<float> z = calib_logits(stats[l], rb.routers[l]);
        const ScaleTerms t = logits_scale_terms(stats[l], z, k, ro.weighting, over_all);
        double s = ro.scale ? *ro.scale : (ro.weighting == Weighting::Softmax ? double(stats[l].E) / k : 1.0);
        if (ro.fit_scale && t.best_scale() > 0) s = t.best_scale();
        rb.scales[l] = s;
        rb.layers[l].scale = s;
        rb.layers[l].rel_error = t.rel_error(s);
    }
    return rb;
}

struct PlanState {
    ExpertPlan plan;
    std::vector<LayerCalib> stats;
    RouterBuild fitted;
    RouterOptions ro;
};

struct Artifacts {
    RouterBuild rb;
    RefitResult refit;
};

}  // namespace

BuildResult run_budget_build(const BuildOptions& o, double budget, const BudgetSpace& space, const BudgetProgress& progress) {
    const auto t_all = Clock::now();
    if (o.calib_data.empty()) fail("--budget needs calibration text (--data FILE): the search measures on its held-out part");
    if (!o.plan_path.empty()) fail("--budget searches the split itself: it does not take --plan");
    if (std::filesystem::exists(o.out_dir) && !o.force) fail("{}: output already exists (use --force to replace it)", o.out_dir);
    const MoEFormat format = o.format;
    for (const std::string& m : space.methods) {
        const SplitMethod sm = parse_split_method(m);
        if (sm == SplitMethod::Gradient) fail("--budget-methods: the gradient split is not searched (it takes minutes per plan)");
    }
    Checkpoint dense = Checkpoint::open(o.model_dir);
    if (dense.config.is_moe()) fail("{}: is already an MoE model; build takes a dense model", o.model_dir);
    check_context(dense.config, o.ctx, o.model_dir);
    auto tok = Tokenizer::from_dir(o.model_dir);
    auto read = [&](const std::string& path, size_t max_tokens) {
        return make_windows(read_documents(path, o.text_field), *tok, {o.ctx, max_tokens, true});
    };
    std::vector<TokenWindow> windows = read(o.calib_data, o.calib_tokens);
    // The last windows (about 1/8 of the text, at least one) are held out for the search.
    size_t total = 0;
    for (const auto& w : windows) total += w.size();
    std::vector<TokenWindow> fit, holdout;
    size_t held = 0;
    for (size_t i = windows.size(); i-- > 0;) {
        if (held < total / 8 || holdout.empty()) {
            held += windows[i].size();
            holdout.insert(holdout.begin(), windows[i]);
        } else {
            fit.insert(fit.begin(), windows[i]);
        }
    }
    if (fit.empty() || predicted_tokens(holdout) == 0)
        fail("{}: too little calibration text for --budget ({} tokens; it holds out 1/8 for the search)", o.calib_data, total);

    BudgetSearch search;
    auto model = Model::load(dense);
    if (progress) progress("budget: dense", 0, 1);
    search.dense_ppl = evaluate_perplexity(*model, holdout).perplexity();
    search.holdout_tokens = predicted_tokens(holdout);
    const size_t kept = std::min<size_t>(8192, o.calib_tokens);
    const std::vector<DenseLayerActs> acts = collect_dense_acts(*model, fit, kept, [&](size_t d, size_t n) {
        if (progress) progress("budget: dense activations", double(d), double(n));
    });
    search.fit_tokens = acts.empty() ? 0 : size_t(acts[0].N);

    std::map<std::string, PlanState> plans;
    std::map<std::string, NeuronActivity> activity;  // per (experts, shared)
    std::map<std::string, Artifacts> artifacts;      // per candidate
    const fs::path scratch = fs::temp_directory_path() / fmt::format("moefy-budget-{}", ::getpid());
    struct Cleanup {
        fs::path p;
        ~Cleanup() {
            std::error_code ec;
            fs::remove_all(p, ec);
        }
    } cleanup{scratch};
    fs::create_directories(scratch);
    // The converter's options for the layout (routing filled in per candidate).
    auto layout = [&](int top_k) {
        ConvertOptions co;
        co.format = format;
        co.top_k = top_k;
        co.gate = o.gate;
        co.dtype = o.dtype;
        co.seed = o.seed;
        return co;
    };

    const std::vector<BudgetCandidate> space_c = budget_candidates(space, o.experts, format != MoEFormat::Mixtral);
    if (space_c.empty()) fail("--budget: the search space is empty");
    int evals = 0;
    auto eval = [&](const BudgetCandidate& c) -> double {
        const std::string pk = plan_key(c);
        if (!plans.count(pk)) {
            BuildOptions po = o;
            po.method = parse_split_method(c.method);
            po.experts = c.experts;
            po.shared = c.shared;
            const NeuronActivity* act = nullptr;
            if (c.shared > 0) {
                const std::string ak = fmt::format("{}/{}", c.experts, c.shared);
                if (!activity.count(ak)) {
                    NeuronActivity a(int(acts.size()), dense.config.intermediate_size,
                                     shared_neuron_count(dense.config.intermediate_size, c.experts, c.shared));
                    for (size_t l = 0; l < acts.size(); ++l) a.add(int(l), acts[l].h.data(), acts[l].N);
                    activity.emplace(ak, std::move(a));
                }
                act = &activity.at(ak);
            }
            PlanState ps;
            ps.plan = make_build_plan(dense, po, fit, {}, act);
            CalibOptions co;
            co.max_tokens = kept;
            ps.stats = calibration_from_acts(*model, ps.plan, acts, co);
            const int routed = c.experts - c.shared;
            ps.ro = router_options(o.routing, layout(std::max(1, routed / 2)));
            ps.ro.fit.iters = 150;  // the search's budget; the final router is this one too
            ps.fitted = build_routers_from_stats(dense, ps.plan, ps.ro, ps.stats);
            plans.emplace(pk, std::move(ps));
            ++search.plans;
        }
        const PlanState& ps = plans.at(pk);
        Artifacts art;
        art.rb = rescale_for_k(ps.fitted, ps.stats, ps.ro, c.top_k);
        ConvertOptions co = layout(c.top_k);
        co.force = true;
        set_convert_routing(art.rb, co);
        if (c.refit) {
            RefitOptions ropt;
            ropt.max_tokens = kept;
            art.refit = refit_from_acts(*model, ps.plan, refit_routing(art.rb, c.top_k, ps.ro.combine), acts, ropt);
            co.down_proj = art.refit.down;
        }
        const std::string dir = (scratch / "candidate").string();
        convert_checkpoint(dense, ps.plan, dir, co);
        double ppl = 0;
        {
            const Checkpoint moe = Checkpoint::open(dir);
            auto m = Model::load(moe);
            ppl = evaluate_perplexity(*m, holdout).perplexity();
        }
        art.refit.down.clear();  // recomputed for the winner only: keeps memory flat
        artifacts[cand_key(c)] = std::move(art);
        ++evals;
        if (progress) progress("budget: search", double(evals), double(space_c.size()));
        return ppl / search.dense_ppl;
    };
    search = [&] {
        BudgetSearch s = search_budget(space_c, budget, eval);
        s.dense_ppl = search.dense_ppl;
        s.holdout_tokens = search.holdout_tokens;
        s.fit_tokens = search.fit_tokens;
        s.plans = search.plans;
        return s;
    }();
    for (BudgetCandidate& c : search.evaluated) c.ppl = c.ratio * search.dense_ppl;
    const double t_search = since(t_all);
    search.seconds = t_search;
    if (search.winner < 0)
        fail("--budget {}: no configuration searched is within {} x the dense perplexity on held-out calibration text "
             "(best ratio {:.3f}); raise the budget",
             budget, budget,
             std::min_element(search.evaluated.begin(), search.evaluated.end(),
                              [](const BudgetCandidate& a, const BudgetCandidate& b) { return a.ratio < b.ratio; })
                 ->ratio);

    // The winner, as searched, to --out; evaluated on --eval-data.
    const BudgetCandidate& w = search.evaluated[size_t(search.winner)];
    const PlanState& ps = plans.at(plan_key(w));
    Artifacts& art = artifacts.at(cand_key(w));
    BuildResult r;
    r.options = o;
    r.options.method = parse_split_method(w.method);
    r.options.experts = w.experts;
    r.options.shared = w.shared;
    r.options.top_k = w.top_k;
    r.options.refit = w.refit;
    r.plan = ps.plan;
    r.routers = art.rb.layers;
    r.calib_tokens = search.fit_tokens;
    r.active_ffn_fraction = active_ffn_fraction(r.plan, w.top_k);
    r.stages.push_back({"search", t_search});
    auto t0 = Clock::now();
    ConvertOptions co = layout(w.top_k);
    co.force = o.force;
    set_convert_routing(art.rb, co);
    co.provenance = routing_provenance(o.routing, o.calib_data, search.fit_tokens);
    if (w.refit) {
        RefitOptions ropt;
        ropt.max_tokens = kept;
        RefitResult rf = refit_from_acts(*model, ps.plan, refit_routing(art.rb, w.top_k, ps.ro.combine), acts, ropt);
        r.refit = rf.layers;
        co.down_proj = std::move(rf.down);
        co.provenance["refit"] = {{"tokens_per_layer", search.fit_tokens}, {"held_out_every", ropt.val_every}};
    }
    co.provenance["budget"] = {{"ratio", budget}, {"held_out_calibration_tokens", search.holdout_tokens}};
    r.convert = convert_checkpoint(dense, r.plan, o.out_dir, co, [&](double d, double n) {
        if (progress) progress("convert", d, n);
    });
    r.stages.push_back({"convert", since(t0)});
    if (!o.eval_data.empty()) {
        t0 = Clock::now();
        const std::vector<TokenWindow> ev = read(o.eval_data, o.eval_tokens);
        Checkpoint moe = Checkpoint::open(o.out_dir);
        auto mm = Model::load(moe);
        r.eval = compare_with_reference(*mm, *model, ev, o.oracle, [&](const char* stage, size_t d, size_t n) {
            if (progress) progress(std::string("eval: ") + stage, double(d), double(n));
        });
        r.stages.push_back({"eval", since(t0)});
    }
    r.budget = std::move(search);
    return r;
}

nlohmann::json budget_json(const BudgetSearch& s) {
    nlohmann::json c = nlohmann::json::array();
    for (const BudgetCandidate& x : s.evaluated)
        c.push_back({{"method", x.method}, {"experts", x.experts}, {"shared", x.shared}, {"top_k", x.top_k}, {"refit", x.refit},
                     {"active_ffn_fraction", x.active}, {"ppl", x.ppl}, {"ratio", x.ratio}, {"meets", x.meets},
                     {"pareto", x.front}, {"seconds", x.seconds}});
    nlohmann::json j = {{"budget", s.budget},         {"dense_ppl", s.dense_ppl}, {"holdout_tokens", s.holdout_tokens},
                        {"fit_tokens", s.fit_tokens}, {"plans", s.plans},         {"seconds", s.seconds},
                        {"candidates", c}};
    j["winner"] = s.winner >= 0 ? nlohmann::json(s.winner) : nlohmann::json(nullptr);
    return j;
}

std::string budget_table(const BudgetSearch& s) {
    std::vector<const BudgetCandidate*> f;
    for (const BudgetCandidate& c : s.evaluated)
        if (c.front) f.push_back(&c);
    std::sort(f.begin(), f.end(), [](const BudgetCandidate* a, const BudgetCandidate* b) { return a->active < b->active; });
    std::string t = fmt::format("{:<8} {:>7} {:>6} {:>5} {:>5} {:>10} {:>9} {:>7}\n", "method", "experts", "shared", "top-k",
                                "refit", "active FFN", "ppl", "ratio");
    for (const BudgetCandidate* c : f)
        t += fmt::format("{:<8} {:>7} {:>6} {:>5} {:>5} {:>10.3f} {:>9.3f} {:>7.3f}{}\n", c->method, c->experts, c->shared, c->top_k,
                         c->refit ? "yes" : "no", c->active, c->ppl, c->ratio,
                         s.winner >= 0 && c == &s.evaluated[size_t(s.winner)] ? "  <- chosen" : (c->meets ? "" : "  (over budget)"));
    return t;
}

}  // namespace moefy
