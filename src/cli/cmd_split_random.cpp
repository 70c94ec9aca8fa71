// moefy split random --model DIR --experts E [--seed S] --out plan.json
#include "cli/cli_common.h"
#include "model/checkpoint.h"
#include "split/random_split.h"

namespace moefy::cli {

MOEFY_COMMAND(20, [](CLI::App& app) {
    auto* cmd = split_group(app)->add_subcommand("random", "Seeded, uniformly random balanced partition of each layer's neurons");
    struct Opts {
        std::string model, out;
        int experts = 8;
        uint64_t seed = 0;
    };
    auto o = std::make_shared<Opts>();
    cmd->add_option("--model", o->model, "Dense model directory")->required();
    cmd->add_option("--experts", o->experts, "Experts per layer")->capture_default_str();
    cmd->add_option("--seed", o->seed, "Random seed")->capture_default_str();
    cmd->add_option("--out", o->out, "Output plan (JSON)")->required();
    cmd->callback([o] {
        Checkpoint ck = Checkpoint::open(o->model);
        ExpertPlan p = random_split(ck, o->experts, o->seed);
        p.save(o->out);
        print_plan_summary(p, o->out);
    });
});

}  // namespace moefy::cli
