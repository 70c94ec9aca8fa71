#pragma once
// `moefy build`: the whole job in one call, each stage timed:
//
//   split      random | cluster | graph | gradient -> ExpertPlan (or a given plan)
//   calibrate  routers and per-layer output scales (route/build_routers.h); runs the
//              dense model over calibration text when the router options need it
//   convert    the MoE checkpoint (convert/convert.h), written atomically
//   eval       dense vs MoE (vs oracle) on held-out text (eval/compare.h)
//
// Calibration text is tokenized once and shared by the split (graph) and the
// routers; evaluation text is never used for calibration.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "convert/convert.h"
#include "data/documents.h"
#include "eval/compare.h"
#include "mpi/rank_group.h"
#include "convert/routing.h"
#include "pipeline/budget.h"
#include "pipeline/heal.h"
#include "route/refit.h"
#include "split/expert_plan.h"
#include "split/shared_split.h"

namespace moefy {

struct Checkpoint;
struct NeuronActivity;

// --method. A new split method: a value here, its name in the table, a case in make_build_plan.
enum class SplitMethod { Random, Cluster, Graph, Gradient };
inline constexpr EnumName<SplitMethod> split_method_names[] = {
    {SplitMethod::Random, "random"}, {SplitMethod::Cluster, "cluster"}, {SplitMethod::Graph, "graph"},
    {SplitMethod::Gradient, "gradient"}};
inline SplitMethod parse_split_method(const std::string& s) { return parse_enum(split_method_names, s, "--method"); }
inline const char* split_method_name(SplitMethod m) { return enum_name(split_method_names, m); }

// Every option typed: the CLI parses words into these once; the stages read them as they are.
struct BuildOptions {
    std::string model_dir;
    std::string out_dir;
    bool force = false;

    // split
    SplitMethod method = SplitMethod::Graph;
    std::string plan_path;         // use this plan instead of splitting (method and experts come from it)
    std::string save_plan;         // also write the plan here
    int experts = 8;                   // experts per layer, shared ones included
    int shared = 0;                    // of them always active (split/shared_split.h); needs calibration text
    SharedCriterion shared_criterion = SharedCriterion::Rate;  // rate measured better (docs/quality.md)
    uint64_t seed = 0;

    // MoE layout
    MoEFormat format = MoEFormat::LlamaMoE;
    int top_k = 2;
    std::optional<GateKind> gate;  // nullopt: the layout's default
    std::optional<DType> dtype;    // nullopt: same as the source
    bool q8_0 = false;             // --dtype q8_0 (--format gguf)

    // routing (convert/routing.h): by default a fitted router, uniform weights, fitted scales
    RoutingChoice routing{RouterKind::Fit, Weighting::Uniform, RoutedScale::fit()};
    // Refit the down projections for the final routing (route/refit.h) when there is
    // calibration text: on by default (demo, graph top-4: 1.347 -> 1.266 x dense).
    bool refit = true;

    // text
    std::string calib_data;   // calibration .jsonl/.txt: the graph split and fitted routers/scales need it
    std::string eval_data;    // held-out text; empty: no eval stage
    std::string text_field;
    int ctx = 512;
    size_t calib_tokens = 32768;  // tokens of calibration text at most
    size_t eval_tokens = 20000;   // predicted tokens of evaluation text at most (0: all)
    bool oracle = false;          // also evaluate oracle routing
    // Routers, scales and refit fitted layer by layer on the converted layers' outputs (route/sequential.h);
    // on whenever the routing is fitted on calibration text (better in 4 of 6 measured settings: docs/quality.md)
    bool sequential = true;
    // heal (pipeline/heal.h) after convert, on the calibration text: steps 0 = off
    int heal_steps = 0;
    double heal_lr = 3e-2;        // measured on the demo model (README, "heal")
    bool heal_all_experts = true;
    bool heal_distill = true;     // distil the dense model (KL), else the text's NLL
    size_t heal_tokens = 262144;  // calibration tokens healing reads (more than the routers': it trains 1e5-1e8 weights)
};

struct StageTime {
    std::string name;  // split, calibrate, convert, eval
    double seconds = 0;
};

struct BuildResult {
    BuildOptions options;
    ExpertPlan plan;
    ConvertReport convert;
    std::vector<LayerRouterReport> routers;  // [layer] scale, temperature, calibration error and mass
    std::vector<RefitLayerReport> refit;     // [layer] when options.refit
    std::optional<HealResult> heal;          // when options.heal_steps > 0
    size_t calib_tokens = 0;                 // calibration tokens the routers saw per layer
    double active_ffn_fraction = 0;
    std::optional<ReferenceComparison> eval;  // when eval_data was given
    std::vector<StageTime> stages;
    std::optional<BudgetSearch> budget;       // build --budget: the search that chose this configuration
    double total_seconds() const;
};

// FFN neurons a token uses over the dense width, averaged over layers:
// (Σ shared widths + k · mean routed width) / I. 0.5 for 8 equal experts at top-4.
double active_ffn_fraction(const ExpertPlan& plan, int top_k);

// stage ("split", "calibrate", "fit", "convert", "eval: dense", ...), done, total.
using BuildProgress = std::function<void(const std::string& stage, double done, double total)>;

// True when these options read calibration text (--data): a split method that
// reads text, shared experts, or a router, weighting or scale fitted on it.
bool build_needs_calibration(const BuildOptions& opt);

// Validates every option before the first expensive step, then runs the stages.
// Throws moefy::Error; the output directory appears only when convert succeeded.
// Data-parallel under `group` (mpirun): the graph and gradient splits, the
// sequential calibration and the eval share their text over the ranks; rank 0
// writes the output (the others wait for it) and every rank returns the result.
BuildResult run_build(const BuildOptions& opt, const BuildProgress& progress = {}, const RankGroup& group = {});

// Machine-readable summary (the `moefy build --json` object): options, table
// values, stage times, per-layer router statistics and the eval comparison.
nlohmann::json build_json(const BuildResult& r);

// The summary table: (heading, value) columns, in order: method, experts,
// top-k, active FFN, router, weighting, dense ppl, MoE ppl, oracle ppl (when
// run), then seconds per stage and in total.
std::vector<std::pair<std::string, std::string>> build_summary(const BuildResult& r);

// The self-contained HTML report of a build (eval/report.h): the summary table,
// expert widths, per-layer FFN error, expert load and, for sharing splits, overlap.
void write_build_report(const BuildResult& r, const std::string& path);

// The split stage alone, as build runs it: a plan for `method` on `dense`
// (calib: the tokenized calibration windows; only graph and gradient read them).
// With opt.shared > 0 the opt.shared most active neuron groups become shared
// experts (measured on calib, or taken from `activity` when given) and the method
// splits the rest into opt.experts − opt.shared routed experts.
ExpertPlan make_build_plan(const Checkpoint& dense, const BuildOptions& opt, const std::vector<TokenWindow>& calib,
                           const BuildProgress& progress = {}, const NeuronActivity* activity = nullptr,
                           const RankGroup& group = {});

}  // namespace moefy
