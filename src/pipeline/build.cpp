// split -> calibrate -> convert -> eval, each stage timed.
#include "pipeline/build.h"

#include <chrono>
#include <cmath>
#include <filesystem>

#include <unistd.h>

#include "common/error.h"
#include "eval/report.h"
#include "model/checkpoint.h"
#include "model/llama.h"
#include "data/text_cluster.h"
#include "split/cluster_split.h"
#include "split/importance.h"
#include "split/graph_split.h"
#include "split/random_split.h"
#include "split/shared_split.h"
#include "tokenizer/tokenizer.h"

namespace moefy {

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

bool method_reads_text(SplitMethod m) { return m == SplitMethod::Graph || m == SplitMethod::Gradient; }

// The converter's options for the layout, before routing (convert/routing.h) fills in the routers.
ConvertOptions layout_options(const BuildOptions& o) {
    ConvertOptions co;
    co.format = o.format;
    co.top_k = o.top_k;
    co.gate = o.gate;
    co.dtype = o.dtype;
    co.q8_0 = o.q8_0;
    co.seed = o.seed;
    co.force = o.force;
    return co;
}

}  // namespace

bool build_needs_calibration(const BuildOptions& o) {
    return (o.plan_path.empty() && (method_reads_text(o.method) || o.shared > 0)) ||
           routing_needs_calibration(o.routing, layout_options(o)) || o.heal_steps > 0;
}

namespace {

// Everything that can be refused without reading weights or text.
void check_options(const BuildOptions& o) {
    if (o.model_dir.empty()) fail("--model: no model directory given");
    if (o.out_dir.empty()) fail("--out: no output directory given");
    if (o.top_k < 1) fail("--top-k {}: must be at least 1", o.top_k);
    if (o.ctx < 2) fail("--ctx {}: must be at least 2", o.ctx);
    const ConvertOptions co = layout_options(o);
    if (co.gate_kind() == GateKind::Mlp && co.format != MoEFormat::LlamaMoE)
        fail("--gate mlp: only the llama-moe layout has an mlp router");
    check_routing(o.routing, co);
    if (o.plan_path.empty() && method_reads_text(o.method) && o.calib_data.empty())
        fail("--method {} needs calibration text (--data FILE)", split_method_name(o.method));
    if (routing_needs_calibration(o.routing, co) && o.calib_data.empty())
        fail("--router {} with --weighting {} and --scale {} needs calibration text (--data FILE); "
             "--router random --scale auto needs none",
             router_kind_name(o.routing.router), weighting_name(o.routing.weighting), routed_scale_name(o.routing.scale));
    if (std::filesystem::exists(o.out_dir) && !o.force) fail("{}: output already exists (use --force to replace it)", o.out_dir);
    if (o.oracle && o.eval_data.empty()) fail("--oracle needs evaluation text (--eval-data FILE)");
    if (o.heal_steps < 0) fail("--heal-steps {}: must be 0 (no healing) or more", o.heal_steps);
    if (o.heal_steps > 0 && o.calib_data.empty()) fail("--heal-steps needs calibration text (--data FILE)");
    if (o.heal_steps > 0 && o.q8_0)
        fail("--heal-steps with --dtype q8_0: heal writes its result into the GGUF's f32, f16 or bf16 tensors; "
             "heal a bf16 GGUF, or quantise after healing");
    if (o.plan_path.empty()) {
        check_shared_count(o.shared, o.experts);
        if (o.shared > 0 && o.calib_data.empty())
            fail("--shared {} needs calibration text (--data FILE): shared experts are the neurons most active on it", o.shared);
        if (o.shared > 0 && o.method == SplitMethod::Gradient)
            fail("--shared with --method gradient: the gradient split makes its own shared experts (split gradient --residual R)");
        if (o.shared > 0 && o.format == MoEFormat::Mixtral)
            fail("--shared {}: Mixtral has no always-active experts; use --format llama-moe (llama-moe-residual layout) or "
                 "--format deepseek",
                 o.shared);
    }
}

// The gradient split as `moefy build` runs it: the calibration text clustered
// into one TF-IDF cluster per expert, neuron importance per cluster by the
// backward pass (feature_change, l1, sample: the reference's defaults), then the
// neuron-independent split. The clusters go to a scratch directory (importance
// reads cluster files) that is removed afterwards; the chain by hand keeps them.
ExpertPlan gradient_build_plan(const Checkpoint& dense, const BuildOptions& o, const BuildProgress& progress,
                               const RankGroup& group) {
    namespace fs = std::filesystem;
    struct Scratch {
        fs::path dir;
        ~Scratch() {
            std::error_code ec;
            fs::remove_all(dir, ec);
        }
    } scratch{fs::temp_directory_path() / fmt::format("moefy-build-gradient-{}", ::getpid())};
    fs::remove_all(scratch.dir);
    fs::create_directories(scratch.dir);

    TextClusterOptions tc;
    tc.data = {o.calib_data};
    tc.text_field = o.text_field;
    tc.out = (scratch.dir / "clusters").string();
    tc.kmeans.clusters = o.experts;
    tc.kmeans.seed = o.seed;
    cluster_text_tfidf(tc);

    auto tok = Tokenizer::from_dir(o.model_dir);
    ImportanceOptions io;
    io.ctx = o.ctx;
    io.text_field = o.text_field;
    io.max_tokens_per_cluster = o.calib_tokens;
    const ImportanceResult imp = compute_importance(dense, *tok, tc.out, io, group, [&](size_t d, size_t n) {
        if (progress) progress("split", double(d), double(n));
    });
    GradientSplitOptions g;
    g.experts = o.experts;
    g.assign = Assign::Optimal;
    return gradient_split_from_importance(importance_scores(imp, "importance of " + o.calib_data), ImportanceTarget::Up, g);
}

}  // namespace

double BuildResult::total_seconds() const {
    double s = 0;
    for (const StageTime& t : stages) s += t.seconds;
    return s;
}

double active_ffn_fraction(const ExpertPlan& plan, int top_k) {
    if (plan.layers.empty() || plan.intermediate_size <= 0) return 0.0;
    double sum = 0;
    for (const LayerPlan& lp : plan.layers) {
        double shared = 0, routed = 0;
        for (const auto& s : lp.shared) shared += double(s.size());
        for (const auto& e : lp.experts) routed += double(e.size());
        const double mean_routed = lp.experts.empty() ? 0.0 : routed / double(lp.experts.size());
        sum += (shared + double(top_k) * mean_routed) / double(plan.intermediate_size);
    }
    return sum / double(plan.layers.size());
}

ExpertPlan make_build_plan(const Checkpoint& dense, const BuildOptions& o, const std::vector<TokenWindow>& calib,
                           const BuildProgress& progress, const NeuronActivity* activity, const RankGroup& group) {
    check_expert_count(o.experts, dense.config.intermediate_size);
    check_shared_count(o.shared, o.experts);
    // Shared experts first: the most active neurons; the method splits the rest.
    std::optional<SharedChoice> sc;
    if (o.shared > 0) {
        if (o.method == SplitMethod::Gradient) fail("--shared with --method gradient: use split gradient --residual R");
        if (activity) {
            sc = choose_shared(*activity, o.experts, o.shared, o.shared_criterion);
        } else {
            if (calib.empty()) fail("--shared {} needs calibration text (--data FILE)", o.shared);
            sc = measure_shared(dense, calib, o.experts, o.shared, o.shared_criterion, o.calib_tokens);
        }
    }
    const int routed = o.experts - o.shared;
    ExpertPlan plan;
    switch (o.method) {
        case SplitMethod::Random:
            plan = random_split(dense, o.experts, o.seed);
            if (sc)
                for (size_t l = 0; l < plan.layers.size(); ++l)
                    plan.layers[l].experts = random_partition_of(sc->rest[l], routed, o.seed, int(l));
            break;
        case SplitMethod::Cluster: {
            ClusterSplitOptions c;
            c.experts = routed;
            c.seed = o.seed;
            if (sc) c.neurons = sc->rest;
            plan = cluster_split(dense, c, [&](int l, int n) {
                if (progress) progress("split", double(l), double(n));
            });
            break;
        }
        case SplitMethod::Graph: {
            GraphSplitOptions g;
            g.experts = routed;
            g.seed = o.seed;
            if (sc) g.neurons = sc->rest;
            plan = graph_split(
                dense, calib, g, [&](const std::string&, double d, double n) { if (progress) progress("split", d, n); }, nullptr,
                group);
            break;
        }
        case SplitMethod::Gradient: return gradient_build_plan(dense, o, progress, group);
    }
    if (sc) attach_shared(plan, *sc);
    return plan;
}

BuildResult run_build(const BuildOptions& o, const BuildProgress& progress, const RankGroup& group) {
    check_options(o);

    BuildResult r;
    r.options = o;
    Checkpoint dense = Checkpoint::open(o.model_dir);
    if (dense.config.is_moe())
        fail("{}: is already an MoE model ({}); build takes a dense LLaMA-family model", o.model_dir,
             model_kind_name(dense.config.kind));
    check_context(dense.config, o.ctx, o.model_dir);

    std::unique_ptr<Tokenizer> tok;
    if (!o.calib_data.empty() || !o.eval_data.empty()) tok = Tokenizer::from_dir(o.model_dir);
    std::vector<TokenWindow> calib;
    if (!o.calib_data.empty()) calib = read_windows(o.calib_data, o.text_field, *tok, o.ctx, o.calib_tokens);
    std::vector<TokenWindow> eval;
    if (!o.eval_data.empty()) eval = read_windows(o.eval_data, o.text_field, *tok, o.ctx, o.eval_tokens);

    // Each stage runs under its name: timed into r.stages, progress passed through.
    auto stage = [&](const char* name, auto&& body) {
        const auto t0 = Clock::now();
        body();
        r.stages.push_back({name, since(t0)});
    };
    const auto report = [&](const char* what, double d, double n) {
        if (progress) progress(what, d, n);
    };

    stage("split", [&] {
        if (!o.plan_path.empty()) {
            r.plan = ExpertPlan::load(o.plan_path);
            r.plan.validate_for(dense.config, ffn_fingerprint(*dense.tensors, dense.config), o.plan_path);
            r.options.experts = r.plan.num_experts();
        } else {
            r.plan = make_build_plan(dense, o, calib, progress, nullptr, group);
        }
        if (o.top_k > r.plan.num_experts())
            fail("--top-k {}: must be between 1 and the plan's {} experts", o.top_k, r.plan.num_experts());
        if (!o.save_plan.empty() && group.rank() == 0) r.plan.save(o.save_plan);
    });
    r.active_ffn_fraction = active_ffn_fraction(r.plan, o.top_k);

    // calibrate: routers and scales
    ConvertOptions co = layout_options(o);
    // calibrate: routers and scales, then the refit of the down projections for them
    // (sequential: both layer by layer in one pass; the refit's time is inside calibrate)
    {
        const auto t0 = Clock::now();
        const CalibratedRouting cr =
            calibrate_routing(dense, r.plan, o.routing, RoutingExtras{o.refit, o.sequential}, calib, o.calib_data, co, report, group);
        if (!o.plan_path.empty()) co.plan_name = o.plan_path;
        r.routers = cr.routing.layers;
        r.calib_tokens = cr.routing.calib_tokens;
        r.refit = cr.refit_layers;
        r.options.refit = cr.refit;
        r.options.sequential = cr.sequential;
        r.stages.push_back({"calibrate", since(t0) - cr.seconds_refit});
        if (cr.refit) r.stages.push_back({"refit", cr.seconds_refit});
    }

    // Rank 0 writes; the others wait here (the eval reads what it wrote).
    const auto on_rank0 = [&](const char* what, auto&& body) {
        group.run_share(what, [&] {
            if (group.rank() == 0) body();
        });
    };
    stage("convert", [&] {
        on_rank0("convert", [&] {
            r.convert = convert_checkpoint(dense, r.plan, o.out_dir, co, [&](double d, double n) { report("convert", d, n); });
        });
    });

    if (o.heal_steps > 0)
        stage("heal", [&] {
            on_rank0("heal", [&] {
                const Checkpoint moe = Checkpoint::open(o.out_dir);
                HealOptions h;
                h.out_dir = o.out_dir;
                h.force = true;
                h.steps = o.heal_steps;
                h.lr = o.heal_lr;
                h.all_experts = o.heal_all_experts;
                h.seed = o.seed;
                if (o.heal_distill) h.teacher_dir = o.model_dir;
                // Windows of at most 256 tokens: the step cost healing was measured at (README, "heal").
                const auto windows = read_windows(o.calib_data, o.text_field, *tok, std::min(o.ctx, 256), o.heal_tokens);
                r.heal = heal_checkpoint(moe, windows, h, [&](int step, int steps, double) { report("heal", step, steps); });
            });
        });

    if (!eval.empty())
        stage("eval", [&] {
            Checkpoint moe = Checkpoint::open(o.out_dir);
            check_reference_pair(moe, dense);
            auto moe_model = Model::load(moe);
            auto dense_model = Model::load(dense);
            r.eval = compare_with_reference(
                *moe_model, *dense_model, eval, o.oracle,
                [&](const char* what, size_t d, size_t n) {
                    if (progress) progress(std::string("eval: ") + what, double(d), double(n));
                },
                group);
        });
    return r;
}

nlohmann::json build_json(const BuildResult& r) {
    const BuildOptions& o = r.options;
    nlohmann::json stages = nlohmann::json::object();
    for (const StageTime& s : r.stages) stages[s.name] = s.seconds;
    nlohmann::json routers = nlohmann::json::array();
    for (size_t l = 0; l < r.routers.size(); ++l) {
        const LayerRouterReport& x = r.routers[l];
        routers.push_back({{"layer", l}, {"scale", x.scale}, {"temperature", x.temperature}, {"calib_rel_error", x.rel_error},
                           {"calib_mass", x.mass}});
    }
    nlohmann::json refit_layers = nlohmann::json::array();
    for (size_t l = 0; l < r.refit.size(); ++l) {
        const RefitLayerReport& x = r.refit[l];
        refit_layers.push_back({{"layer", l}, {"refitted", x.refitted}, {"ridge", x.ridge}, {"lambda", x.lambda},
                                {"val_rel_error_before", x.val_rel_error_before}, {"val_rel_error_after", x.val_rel_error_after}});
    }
    nlohmann::json widths = nlohmann::json::array(), shared = nlohmann::json::array();
    for (const LayerPlan& lp : r.plan.layers) {
        std::vector<int> w, s;
        for (const auto& e : lp.experts) w.push_back(int(e.size()));
        for (const auto& e : lp.shared) s.push_back(int(e.size()));
        widths.push_back(w);
        shared.push_back(s);
    }
    nlohmann::json j = {{"model", o.model_dir},
                        {"out", o.out_dir},
                        {"method", r.plan.method},
                        {"experts", r.plan.num_experts()},
                        {"shared_experts", r.plan.num_shared()},
                        {"top_k", o.top_k},
                        {"format", moe_format_name(o.format)},
                        {"layout", r.convert.layout},
                        {"gate", r.convert.gate},
                        {"router", router_kind_name(o.routing.router)},
                        {"weighting", weighting_name(o.routing.weighting)},
                        {"scale", routed_scale_name(o.routing.scale)},
                        {"seed", o.seed},
                        {"active_ffn_fraction", r.active_ffn_fraction},
                        {"refit", o.refit},
                        {"sequential", o.sequential},
                        {"shared_criterion", shared_criterion_name(o.shared_criterion)},
                        {"calib_data", o.calib_data},
                        {"calib_tokens", r.calib_tokens},
                        {"stages", stages},
                        {"total_seconds", r.total_seconds()},
                        {"routers", routers},
                        {"plan", {{"method", r.plan.method}, {"params", r.plan.params}, {"widths", widths}, {"shared_widths", shared}}}};
    if (r.heal)
        j["heal"] = {{"steps", r.heal->steps},
                     {"lr", o.heal_lr},
                     {"all_experts", o.heal_all_experts},
                     {"loss", o.heal_distill ? "distill" : "nll"},
                     {"train_windows", r.heal->train_windows},
                     {"trained_params", r.heal->trained_params},
                     {"heldout_tokens", r.heal->heldout_tokens},
                     {"heldout_nll_before", r.heal->heldout_nll_before},
                     {"heldout_nll_after", r.heal->heldout_nll_after},
                     {"seconds", r.heal->seconds}};
    if (!r.refit.empty()) j["refit_layers"] = refit_layers;
    if (r.budget) j["budget"] = budget_json(*r.budget);
    if (r.eval) {
        j["dense_ppl"] = r.eval->dense.perplexity();
        j["moe_ppl"] = r.eval->moe.ppl.perplexity();
        j["ppl_ratio"] = r.eval->ppl_ratio();
        if (r.eval->oracle) j["oracle_ppl"] = r.eval->oracle->ppl.perplexity();
        j["eval"] = comparison_json(*r.eval);
        j["eval"]["data"] = o.eval_data;
    }
    return j;
}

std::vector<std::pair<std::string, std::string>> build_summary(const BuildResult& r) {
    std::vector<std::pair<std::string, std::string>> t = {
        {"method", r.plan.method},
        {"experts", r.plan.num_shared() ? fmt::format("{}+{}", r.plan.num_experts(), r.plan.num_shared())
                                        : std::to_string(r.plan.num_experts())},
        {"top-k", std::to_string(r.options.top_k)},
        {"active FFN", fmt::format("{:.3f}", r.active_ffn_fraction)},
        {"router", router_kind_name(r.options.routing.router)},
        {"weighting", weighting_name(r.options.routing.weighting)},
    };
    if (r.eval) {
        t.push_back({"dense ppl", fmt::format("{:.3f}", r.eval->dense.perplexity())});
        t.push_back({"MoE ppl", fmt::format("{:.3f}", r.eval->moe.ppl.perplexity())});
        if (r.eval->oracle) t.push_back({"oracle ppl", fmt::format("{:.3f}", r.eval->oracle->ppl.perplexity())});
    }
    t.push_back({"refit", r.options.refit ? "yes" : "no"});
    if (r.options.sequential) t.push_back({"sequential", "yes"});
    if (r.heal) t.push_back({"heal steps", std::to_string(r.heal->steps)});
    for (const StageTime& s : r.stages) t.push_back({s.name + " s", fmt::format("{:.1f}", s.seconds)});
    t.push_back({"total s", fmt::format("{:.1f}", r.total_seconds())});
    return t;
}

void write_build_report(const BuildResult& r, const std::string& path) {
    const BuildOptions& o = r.options;
    ReportInput in;
    in.title = fmt::format("moefy build: {} split, {} experts, top-{}", r.plan.method, r.plan.num_experts(), o.top_k);
    // The report is a file: the same inputs and seed give the same bytes, so the
    // wall-clock stage times (printed by the CLI) stay out of it.
    in.summary = build_summary(r);
    std::erase_if(in.summary, [](const auto& kv) { return kv.first.size() >= 2 && kv.first.ends_with(" s"); });
    in.details = {{"model", o.model_dir},
                  {"output", fmt::format("{} ({} layout, {} gate)", o.out_dir, r.convert.layout, r.convert.gate)},
                  {"routing", fmt::format("router {}, weighting {}, scale {}", router_kind_name(o.routing.router),
                                          weighting_name(o.routing.weighting), routed_scale_name(o.routing.scale))}};
    if (!o.calib_data.empty())
        in.details.push_back({"calibration", fmt::format("{} ({} tokens per layer for the routers)", o.calib_data, r.calib_tokens)});
    if (r.eval) {
        in.details.push_back({"evaluation", fmt::format("{} ({} tokens)", o.eval_data, r.eval->dense.tokens)});
        in.details.push_back({"perplexity ratio", fmt::format("{:.3f} (MoE / dense){}", r.eval->ppl_ratio(),
                                                              r.eval->oracle ? fmt::format(", oracle {:.3f}",
                                                                                           r.eval->oracle->ppl.perplexity() /
                                                                                               r.eval->dense.perplexity())
                                                                             : "")});
        in.details.push_back({"FFN error (all layers)", fmt::format("{:.4f}", r.eval->moe.total_rel_error())});
    }
    in.plan = &r.plan;
    in.eval = r.eval ? &*r.eval : nullptr;
    ReportScatter sc;
    if (r.budget) {
        const BudgetSearch& b = *r.budget;
        sc.title = fmt::format("Budget search: active FFN fraction vs perplexity ratio (budget {:.3g})", b.budget);
        sc.x_label = "active FFN fraction";
        sc.y_label = "perplexity / dense (held-out calibration text)";
        sc.y_line = b.budget;
        for (size_t i = 0; i < b.evaluated.size(); ++i) {
            const BudgetCandidate& c = b.evaluated[i];
            sc.points.push_back({c.active, c.ratio,
                                 fmt::format("{} split, {} experts, {} shared, top-{}, refit {}: ratio {:.3f}", c.method, c.experts,
                                             c.shared, c.top_k, c.refit ? "on" : "off", c.ratio),
                                 c.front, int(i) == b.winner});
        }
        in.scatter = &sc;
        in.scatter_note = fmt::format(
            "{} configurations evaluated ({} splits) in {:.0f} s on {} held-out calibration tokens; filled: the Pareto front; "
            "large: the chosen one; dashed: the budget.",
            b.evaluated.size(), b.plans, b.seconds, b.holdout_tokens);
    }
    write_report_html(path, in);
}

}  // namespace moefy
