// moefy split graph --model M --data calib.jsonl --experts 8 [--proj up|gate] [--metric l1|l2|plain]
//                   [--tokens 200000] [--ctx 512] [--seed 0] [--chunk-tokens 8] --out plan.json
#include "cli/cli_common.h"
#include "data/documents.h"
#include "eval/perplexity.h"
#include "model/checkpoint.h"
#include "mpi/rank_group.h"
#include "split/coactivation.h"
#include "split/graph_split.h"
#include "split/shared_split.h"
#include "tokenizer/tokenizer.h"

namespace moefy::cli {

MOEFY_COMMAND(22, [](CLI::App& app) {
    auto* cmd = split_group(app)->add_subcommand("graph", "Partition each layer's neuron co-activation graph with METIS");
    struct Opts {
        std::string model, data, text_field, out;
        size_t tokens = 200000;
        int ctx = 512;
        GraphSplitOptions s;
        std::string shared_criterion = "rate";
        int shared = 0;
    };
    auto o = std::make_shared<Opts>();
    cmd->add_option("--model", o->model, "Dense model directory")->required();
    cmd->add_option("--data", o->data, "Calibration text (.jsonl or .txt)")->required();
    cmd->add_option("--text-field", o->text_field, "JSONL field holding the text");
    cmd->add_option("--experts", o->s.experts, "Experts per layer")->capture_default_str();
    cmd->add_option("--proj", o->s.proj, "Activation: up (h = silu(gate)*up) or gate (silu(gate))")->capture_default_str();
    cmd->add_option("--metric", o->s.metric, "Kernel on activations: l1 |x|, l2 x^2, plain x")->capture_default_str();
    cmd->add_option("--tokens", o->tokens, "Tokens of calibration text at most")->capture_default_str();
    cmd->add_option("--ctx", o->ctx, "Tokens per window")->capture_default_str();
    cmd->add_option("--seed", o->s.seed, "Seed (METIS and the random baseline)")->capture_default_str();
    cmd->add_option("--chunk-tokens", o->s.chunk_tokens,
                    "Clamp co-activation per this many tokens (MoEfication 8; LLaMA-MoE per dump file, ~8192)")
        ->capture_default_str();
    cmd->add_option("--out", o->out, "Output plan (JSON)")->required();
    cmd->add_option("--shared", o->shared, "Of the experts, this many always active: the neurons most active on --data")
        ->capture_default_str();
    cmd->add_option("--shared-criterion", o->shared_criterion, "Shared neurons by activation rate or mass (mean |h|)")
        ->capture_default_str();
    cmd->callback([o] {
        const MpiSession mpi;  // under mpirun the ranks share the text and rank 0 writes
        const RankGroup& group = mpi.group();
        parse_coact_metric(o->s.metric);  // refuse an unknown metric before any work
        Checkpoint ck = Checkpoint::open(o->model);
        check_context(ck.config, o->ctx, o->model);
        auto tok = Tokenizer::from_dir(o->model);
        auto docs = read_documents(o->data, o->text_field);
        auto windows = make_windows(docs, *tok, {o->ctx, o->tokens, true});
        std::optional<SharedChoice> sc;
        GraphSplitOptions s = o->s;
        if (o->shared > 0) {
            sc = measure_shared(ck, windows, s.experts, o->shared, parse_shared_criterion(o->shared_criterion), o->tokens);
            s.experts -= o->shared;
            s.neurons = sc->rest;
        }
        ProgressBar bar(group.size() > 1 ? fmt::format("graph (rank 0 of {})", group.size()) : "graph");
        GraphSplitTimings t;
        ExpertPlan p = graph_split(
            ck, windows, s, [&](const std::string&, double d, double n) { if (group.rank() == 0) bar.update(d, n); }, &t, group);
        bar.finish();
        if (group.rank() != 0) return;
        if (sc) attach_shared(p, *sc);
        p.save(o->out);
        print_plan_summary(p, o->out);
        fmt::print("co-activation kept inside experts: {:.3f} (a random split keeps {:.3f})\n",
                   p.stats["kept_fraction_mean"].get<double>(), p.stats["random_kept_fraction_mean"].get<double>());
        fmt::print("time: forward {:.1f} s, accumulate {:.1f} s, partition {:.1f} s ({} tokens, {} pass(es))\n", t.forward_s,
                   t.accumulate_s, t.partition_s, t.tokens, t.passes);
    });
});

}  // namespace moefy::cli
