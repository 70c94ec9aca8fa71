// moefy split cluster --model M --experts 8 [--proj up|gate] [--metric l2|cos|spherical] [--seed 0]
//                     [--restarts 10] [--max-iter 500] [--tol 1e-4] --out plan.json
#include "cli/cli_common.h"
#include "model/checkpoint.h"
#include "split/cluster_split.h"

namespace moefy::cli {

MOEFY_COMMAND(21, [](CLI::App& app) {
    auto* cmd = split_group(app)->add_subcommand("cluster", "Balanced k-means of each layer's normalised weight rows");
    struct Opts {
        std::string model, out;
        ClusterSplitOptions s;
    };
    auto o = std::make_shared<Opts>();
    cmd->add_option("--model", o->model, "Dense model directory")->required();
    cmd->add_option("--experts", o->s.experts, "Experts per layer")->capture_default_str();
    cmd->add_option("--proj", o->s.proj, "Rows to cluster: up or gate")->capture_default_str();
    cmd->add_option("--metric", o->s.metric, "l2 | cos (reference semantics) | spherical (true spherical k-means)")
        ->capture_default_str();
    cmd->add_option("--seed", o->s.seed, "Seed")->capture_default_str();
    cmd->add_option("--restarts", o->s.restarts, "k-means++ restarts; the best inertia wins")->capture_default_str();
    cmd->add_option("--max-iter", o->s.max_iter, "Iterations per restart")->capture_default_str();
    cmd->add_option("--tol", o->s.tol, "Convergence tolerance (relative, as sklearn)")->capture_default_str();
    cmd->add_option("--out", o->out, "Output plan (JSON)")->required();
    cmd->callback([o] {
        Checkpoint ck = Checkpoint::open(o->model);
        ProgressBar bar("cluster");
        ExpertPlan p = cluster_split(ck, o->s, [&](int l, int n) { bar.update(l, n, "layers"); });
        bar.finish();
        p.save(o->out);
        print_plan_summary(p, o->out);
    });
});

}  // namespace moefy::cli
