// moefy build --model M --method random|cluster|graph|gradient --experts 8 --top-k 2 [--data calib.jsonl] [--heal-steps N]
//             [--eval-data eval.jsonl] --format llama-moe|mixtral|deepseek|gguf --out DIR
//             [--router fit|centroid|random] [--weighting uniform|softmax] [--scale fit|auto|X] [--gate mlp|linear]
//             [--oracle] [--report report.html] [--json] [--plan plan.json] [--save-plan plan.json] [--force]
#include <algorithm>

#include "cli/cli_common.h"
#include "cli/moe_options.h"
#include "common/error.h"
#include "mpi/rank_group.h"
#include "pipeline/build.h"

namespace moefy::cli {

namespace {

// Two aligned lines: headings, values.
void print_summary(const std::vector<std::pair<std::string, std::string>>& cols) {
    std::string head, row;
    for (const auto& [k, v] : cols) {
        const size_t w = std::max(k.size(), v.size());
        head += fmt::format("{:<{}}  ", k, w);
        row += fmt::format("{:<{}}  ", v, w);
    }
    fmt::print("{}\n{}\n", head, row);
}

}  // namespace

MOEFY_COMMAND(50, [](CLI::App& app) {
    auto* cmd = app.add_subcommand("build", "Split, build routers, convert and evaluate in one go");
    struct Opts {
        BuildOptions b;
        std::string report;
        bool json = false;
        double budget = 0;
        BudgetSpace space;
    };
    auto o = std::make_shared<Opts>();
    BuildOptions& b = o->b;
    cmd->add_option("--model", b.model_dir, "Dense model directory")->required();
    cmd->add_option("--out", b.out_dir, "Output MoE model directory")->required();
    add_enum_option(cmd, "--method", b.method, split_method_names, "Split");
    cmd->add_option("--experts", b.experts, "Experts per layer, shared ones included")->capture_default_str();
    cmd->add_option("--shared", b.shared, "Of the experts, this many always active: the most active neurons on --data")
        ->capture_default_str();
    add_enum_option(cmd, "--shared-criterion", b.shared_criterion, shared_criterion_names,
                    "Shared neurons by activation rate or mass (mean |h|)");
    cmd->add_flag("--refit,!--no-refit", b.refit,
                  "Refit the down projections for the final routing on --data (on when --data is given)");
    cmd->add_flag("--sequential,!--no-sequential", b.sequential,
                  "Fit each layer's router, scale and refit on the outputs of the layers before it as converted "
                  "(on when the routing is fitted on --data)");
    add_layout_options(cmd, b.format, b.top_k, b.gate, b.dtype, b.q8_0);
    cmd->add_option("--data", b.calib_data,
                    "Calibration text (.jsonl or .txt): graph split, fitted routers and scales [default, when one of them needs "
                    "text: the bundled data/calib.jsonl]");
    cmd->add_option("--eval-data", b.eval_data, "Held-out text: evaluate dense vs MoE at the end");
    cmd->add_option("--text-field", b.text_field, "JSONL field holding the text (default: text, else content)");
    cmd->add_option("--calib-tokens", b.calib_tokens, "Calibration tokens at most")->capture_default_str();
    cmd->add_option("--eval-tokens", b.eval_tokens, "Evaluation tokens at most (0: all)")->capture_default_str();
    cmd->add_option("--ctx", b.ctx, "Tokens per window")->capture_default_str();
    add_routing_options(cmd, b.routing, "--data");
    cmd->add_option("--seed", b.seed, "Seed of every random choice")->capture_default_str();
    cmd->add_option("--plan", b.plan_path, "Use this expert plan instead of splitting");
    cmd->add_option("--save-plan", b.save_plan, "Also write the expert plan here");
    cmd->add_option("--budget", o->budget,
                    "Search methods x shared x top-k x refit for the smallest active FFN within RATIO x dense perplexity "
                    "on held-out calibration text, then build and evaluate the winner");
    cmd->add_option("--budget-methods", o->space.methods, "Split methods the budget search tries")->delimiter(',')
        ->capture_default_str();
    cmd->add_option("--budget-shared", o->space.shared, "Shared-expert counts the budget search tries")->delimiter(',')
        ->capture_default_str();
    cmd->add_option("--heal-steps", b.heal_steps,
                    "After convert, train routers and expert down projections this many steps on --data (moefy heal)")
        ->capture_default_str();
    cmd->add_option("--heal-tokens", b.heal_tokens, "Calibration tokens healing reads at most")->capture_default_str();
    cmd->add_option("--heal-lr", b.heal_lr, "Healing's peak step size, relative to each tensor's RMS")->capture_default_str();
    cmd->add_flag("!--heal-down-only", b.heal_all_experts,
                  "Healing trains the routers and the experts' down projections only (default: every expert projection)");
    cmd->add_flag("--heal-distill,!--heal-nll", b.heal_distill,
                  "Healing distils the dense model's next-token distribution (default), or fits the text's tokens");
    cmd->add_flag("--oracle", b.oracle, "Also evaluate oracle routing (needs --eval-data)");
    cmd->add_option("--report", o->report, "Write a self-contained HTML report here");
    cmd->add_flag("--json", o->json, "Print one JSON object instead of the table");
    cmd->add_flag("--force", b.force, "Replace an existing output directory");
    cmd->callback([o] {
        if (!o->report.empty() && o->b.eval_data.empty())
            fail("--report needs --eval-data (the report plots the evaluation)");
        // Under mpirun the ranks share the model-running stages and rank 0 writes and prints.
        const MpiSession mpi;
        const RankGroup& group = mpi.group();
        if (group.size() > 1 && o->budget > 0) fail("--budget does not run under mpirun (run it as one process)");
        std::unique_ptr<ProgressBar> bar;
        std::string current;
        auto progress = [&](const std::string& stage, double d, double n) {
            if (group.rank() != 0) return;
            if (stage != current) {
                bar.reset();
                bar = std::make_unique<ProgressBar>(stage);
                current = stage;
            }
            bar->update(d, n);
        };
        // As convert: the calibration text moefy ships with, when the choices need text and none is given.
        if (o->b.calib_data.empty() && (o->budget > 0 || build_needs_calibration(o->b))) {
            o->b.calib_data = bundled_file("data/calib.jsonl");
            if (!o->b.calib_data.empty()) fmt::print(stderr, "calibration text: {} (bundled; --data FILE for your own)\n", o->b.calib_data);
        }
        BuildResult r = o->budget > 0 ? run_budget_build(o->b, o->budget, o->space, progress) : run_build(o->b, progress, group);
        bar.reset();
        if (group.rank() != 0) return;
        if (!o->report.empty()) write_build_report(r, o->report);
        if (o->json) {
            nlohmann::json j = build_json(r);
            if (!o->report.empty()) j["report"] = o->report;
            fmt::print("{}\n", j.dump(2));
            return;
        }
        if (r.budget) {
            const BudgetSearch& s = *r.budget;
            fmt::print("budget search: {} configurations ({} splits) in {:.0f} s, dense perplexity {:.3f} on {} held-out "
                       "calibration tokens; Pareto front:\n{}",
                       s.evaluated.size(), s.plans, s.seconds, s.dense_ppl, s.holdout_tokens, budget_table(s));
        }
        fmt::print("wrote {} ({} layout, {} gate)\n", r.options.out_dir, r.convert.layout, r.convert.gate);
        if (r.eval)
            fmt::print("eval on {} tokens of {}: FFN error {:.4f}, perplexity x{:.3f} of dense\n", r.eval->dense.tokens,
                       r.options.eval_data, r.eval->moe.total_rel_error(), r.eval->ppl_ratio());
        if (!o->report.empty()) fmt::print("report: {}\n", o->report);
        print_summary(build_summary(r));
    });
});

}  // namespace moefy::cli
