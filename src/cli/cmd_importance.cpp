// moefy importance --model M --data clusters/ [--kind feature_change|feature_grad] [--kernel l1|l2|plain]
//                  [--level sample|total] [--ctx 2048] [--max-tokens-per-cluster N] [--text-field F]
//                  [--memory auto|store|recompute] --out importance.safetensors
// Under mpirun (moefy built with MPI) the ranks share each cluster's windows and rank 0 writes.
#include <cstdio>
#include <filesystem>

#include "cli/cli_common.h"
#include "common/error.h"
#include "eval/perplexity.h"
#include "model/checkpoint.h"
#include "mpi/rank_group.h"
#include "split/importance.h"
#include "tokenizer/tokenizer.h"

namespace moefy::cli {

MOEFY_COMMAND(62, [](CLI::App& app) {
    auto* cmd = app.add_subcommand("importance", "Neuron importance per data cluster from the gradients of the LM loss "
                                                 "(for split gradient); runs data-parallel under mpirun");
    struct Opts {
        std::string model, data, out, kind = "feature_change", kernel = "l1", level = "sample", memory = "auto";
        ImportanceOptions o;
    };
    auto o = std::make_shared<Opts>();
    cmd->add_option("--model", o->model, "Dense model directory")->required();
    cmd->add_option("--data", o->data, "Directory of text clusters (0.jsonl .. K-1.jsonl, from cluster-text)")->required();
    cmd->add_option("--kind", o->kind, "feature_change (|h * dL/dh|-style) or feature_grad (dL/dh)")->capture_default_str();
    cmd->add_option("--kernel", o->kernel, "Kernel per token: l1 |x|, l2 x^2, plain x")->capture_default_str();
    cmd->add_option("--level", o->level, "sample: kernel per token, then sum; total: sum, then kernel")->capture_default_str();
    cmd->add_option("--ctx", o->o.ctx, "Tokens per window")->capture_default_str();
    cmd->add_option("--max-tokens-per-cluster", o->o.max_tokens_per_cluster, "Predicted tokens per cluster at most (0: all)");
    cmd->add_option("--text-field", o->o.text_field, "JSONL field holding the text (default: text, else content)");
    cmd->add_option("--memory", o->memory, "Forward activations: store all layers, recompute per layer, or auto")
        ->capture_default_str();
    cmd->add_option("--out", o->out, "Output file (.safetensors)")->required();
    cmd->callback([o] {
        const MpiSession mpi;  // MPI from here to the end of the command, when started by mpirun
        const RankGroup& group = mpi.group();
        try {
            o->o.settings = {parse_importance_kind(o->kind), parse_importance_kernel(o->kernel),
                             parse_importance_level(o->level)};
            o->o.backward.memory = parse_activation_memory(o->memory);
            const std::filesystem::path parent = std::filesystem::path(o->out).parent_path();
            if (!parent.empty() && !std::filesystem::is_directory(parent))
                fail("--out {}: directory {} does not exist", o->out, parent.string());
            Checkpoint ck = Checkpoint::open(o->model);
            check_context(ck.config, o->o.ctx, o->model);
            auto tok = Tokenizer::from_dir(o->model);
            ProgressBar bar(group.size() > 1 ? fmt::format("importance (rank 0 of {})", group.size()) : "importance");
            const ImportanceResult r = compute_importance(ck, *tok, o->data, o->o, group, [&](size_t d, size_t n) {
                if (group.rank() == 0) bar.update(double(d), double(n), "tokens");
            });
            bar.finish();
            if (group.rank() != 0) return;
            write_importance(o->out, r);
            int64_t tokens = 0;
            std::vector<int64_t> per;
            for (const ImportanceSums& s : r.clusters) tokens += s.tokens, per.push_back(s.tokens);
            fmt::print("wrote {}: {} clusters x {} layers, {} {} {}, tokens per cluster [{}]\n", o->out, r.clusters.size(),
                       r.num_layers, importance_kind_name(r.settings.kind), importance_kernel_name(r.settings.kernel),
                       importance_level_name(r.settings.level), fmt::join(per, ", "));
            fmt::print("time: {:.1f} s for {} tokens ({:.0f} tokens/s, {} process(es))\n", r.seconds, tokens,
                       r.seconds > 0 ? double(tokens) / r.seconds : 0.0, r.ranks);
        } catch (const Error& e) {
            // Every rank returns the error (split/importance_run.h): say which rank.
            if (group.size() > 1) fail("rank {} of {}: {}", group.rank(), group.size(), e.what());
            throw;
        }
    });
});

}  // namespace moefy::cli
