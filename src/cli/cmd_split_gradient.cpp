// moefy split gradient --importance importance.safetensors [--experts E] [--expert-size N] [--share]
//                      [--residual R] [--criterion max|min] [--assign greedy|optimal]
//                      [--target up_proj|gate_proj] [--model M] [--plots DIR] --out plan.json
#include "cli/cli_common.h"
#include "eval/overlap_plots.h"
#include "model/checkpoint.h"
#include "split/importance.h"

namespace moefy::cli {

MOEFY_COMMAND(23, [](CLI::App& app) {
    auto* cmd = split_group(app)->add_subcommand(
        "gradient", "Build experts from per-cluster neuron importance (from `moefy importance`)");
    struct Opts {
        std::string importance, out, plots, model, criterion = "max", assign = "greedy", target = "up_proj";
        GradientSplitOptions s;
    };
    auto o = std::make_shared<Opts>();
    cmd->add_option("--importance", o->importance, "Importance file (.safetensors)")->required();
    cmd->add_option("--experts", o->s.experts, "Experts per layer, residual ones included (default: one per cluster)");
    cmd->add_option("--expert-size", o->s.expert_size, "Neurons per expert (default: intermediate size / experts)");
    cmd->add_flag("--share", o->s.share, "Experts may share neurons (each takes its own top neurons)");
    cmd->add_option("--residual", o->s.residual, "Always-active residual experts among --experts")->capture_default_str();
    cmd->add_option("--criterion", o->criterion, "Keep the neurons of highest (max) or lowest (min) importance")
        ->capture_default_str();
    cmd->add_option("--assign", o->assign, "Independent splits: the reference's greedy or the optimal assignment")
        ->capture_default_str();
    cmd->add_option("--target", o->target, "Scores to split by: up_proj (h) or gate_proj (gate pre-activation)")
        ->capture_default_str();
    cmd->add_option("--model", o->model, "Also check that the importance file belongs to this model");
    cmd->add_option("--plots", o->plots, "Write expert-overlap pictures into this directory");
    cmd->add_option("--out", o->out, "Output plan (JSON)")->required();
    cmd->callback([o] {
        o->s.criterion = parse_criterion(o->criterion);
        o->s.assign = parse_assign(o->assign);
        const ImportanceTarget target = parse_importance_target(o->target);
        const ImportanceFile f = read_importance(o->importance);
        if (!o->model.empty()) {
            Checkpoint ck = Checkpoint::open(o->model);
            check_importance_for(f, ck.config, ffn_fingerprint(*ck.tensors, ck.config));
        }
        ExpertPlan p = gradient_split_from_importance(f, target, o->s);
        p.save(o->out);
        print_plan_summary(p, o->out);
        if (p.stats.contains("greedy_total") && p.stats.contains("optimal_total"))
            fmt::print("total importance kept: greedy {:.6g}, optimal {:.6g}\n", p.stats["greedy_total"].get<double>(),
                       p.stats["optimal_total"].get<double>());
        if (!o->plots.empty()) {
            write_overlap_plots(p, o->plots);
            fmt::print("plots in {}\n", o->plots);
        }
    });
});

}  // namespace moefy::cli
