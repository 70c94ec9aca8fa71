// moefy import llama-moe --split-dir DIR --model M --out plan.json [--template T] [--residual R] [--experts E] [--method M]
// moefy import llama-moe --importance-dir DIR --model M --out importance.safetensors [--cluster-order lexicographic|numeric]
//                        [--kernel K] [--level L]
// Brings in the files LLaMA-MoE's Python scripts write (torch.save'd split and importance files), read by a
// restricted unpickler that runs no code.
#include "cli/cli_common.h"
#include "common/error.h"
#include "model/checkpoint.h"
#include "split/llama_moe_import.h"

namespace moefy::cli {

MOEFY_COMMAND(80, [](CLI::App& app) {
    auto* group = app.add_subcommand("import", "Bring in split and importance files made by other tools");
    group->require_subcommand(1);
    auto* cmd = group->add_subcommand(
        "llama-moe", "LLaMA-MoE's torch.save'd split folders (-> expert plan) or gradient .change folders (-> importance file)");
    struct Opts {
        std::string split_dir, importance_dir, model, out;
        LlamaMoeSplitOptions split;
        LlamaMoeImportanceOptions importance;
    };
    auto o = std::make_shared<Opts>();
    auto* sd = cmd->add_option("--split-dir", o->split_dir, "Split folder of layers.<l>.mlp.<proj>.weight files -> plan JSON");
    auto* id = cmd->add_option("--importance-dir", o->importance_dir,
                               "Gradients folder of cluster folders of .change files -> importance .safetensors");
    sd->excludes(id);
    cmd->add_option("--model", o->model, "The dense model the files were made for")->required();
    cmd->add_option("--out", o->out, "Output: plan (.json) or importance file (.safetensors)")->required();
    cmd->add_option("--template", o->split.template_name,
                    "Split file name with {} for the layer (default: layers.{}.mlp.up_proj.weight or gate_proj, whichever exists)");
    cmd->add_option("--residual", o->split.residual, "Residual (shared) lists at the front of each file (default: from the folder name)");
    cmd->add_option("--experts", o->split.experts, "Expert count of label files (default: from the folder name, else max label + 1)");
    cmd->add_option("--method", o->split.method, "Method recorded in the plan: random | cluster | graph | gradient (default: from the folder name)");
    cmd->add_option("--cluster-order", o->importance.cluster_order,
                    "Cluster folders in lexicographic order (the reference's: 0, 1, 10, 2, ...) or numeric")
        ->capture_default_str();
    cmd->add_option("--kernel", o->importance.kernel, "Importance kernel recorded (default: from the folder name, else l1)");
    cmd->add_option("--level", o->importance.level, "Importance level recorded (default: from the folder name, else sample)");
    cmd->callback([o] {
        if (o->split_dir.empty() == o->importance_dir.empty()) fail("import llama-moe: give --split-dir or --importance-dir");
        const Checkpoint ck = Checkpoint::open(o->model);
        if (!o->split_dir.empty()) {
            const ExpertPlan p = import_llama_moe_split(o->split_dir, ck, o->split);
            p.save(o->out);
            print_plan_summary(p, o->out);
            fmt::print("from {} ({})\n", p.params["split_dir"].get<std::string>(), p.params["content"].get<std::string>());
            return;
        }
        const ImportanceFile f = import_llama_moe_importance(o->importance_dir, ck, o->importance);
        write_importance_scores(o->out, f);
        fmt::print("wrote {}: {} clusters x {} layers ({} order: {}), {} {} {}\n", o->out, f.clusters, f.num_layers,
                   o->importance.cluster_order, f.metadata.at("cluster_names"), importance_kind_name(f.settings.kind),
                   importance_kernel_name(f.settings.kernel), importance_level_name(f.settings.level));
    });
});

}  // namespace moefy::cli
