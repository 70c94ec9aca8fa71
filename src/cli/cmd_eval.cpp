// moefy eval --model DIR --data FILE [--ctx 512] [--max-tokens N] [--text-field F] [--json]
//            [--reference DENSE_DIR [--oracle]]
// Under mpirun (moefy built with MPI) the ranks share the windows and rank 0 prints.
#include <chrono>
#include <cmath>
#include <cstdio>

#include "cli/cli_common.h"
#include "common/error.h"
#include "data/documents.h"
#include "eval/compare.h"
#include "eval/perplexity.h"
#include "model/checkpoint.h"
#include "mpi/rank_group.h"
#include "tokenizer/tokenizer.h"

namespace moefy::cli {

static void print_load_rows(const nlohmann::json& load) {
    fmt::print("expert load (fraction of tokens per expert; cv = coefficient of variation)\n");
    for (const auto& l : load) {
        std::string row;
        for (double f : l["fraction"]) row += fmt::format(" {:.3f}", f);
        fmt::print("  layer {:2d}:{}  cv {:.2f}\n", l["layer"].get<int>(), row, l["cv"].get<double>());
    }
}

// `moefy eval --reference`: dense vs MoE (vs oracle) on the same tokens.
static void print_comparison(const ReferenceComparison& c) {
    const double dp = c.dense.perplexity();
    fmt::print("tokens       {}\n", c.dense.tokens);
    fmt::print("perplexity   dense {:.3f}   moe {:.3f} (x{:.3f})", dp, c.moe.ppl.perplexity(), c.ppl_ratio());
    if (c.oracle) fmt::print("   oracle {:.3f} (x{:.3f})", c.oracle->ppl.perplexity(), c.oracle->ppl.perplexity() / dp);
    fmt::print("\nFFN error    {:.4f} (all layers: sum |moe - dense|^2 / sum |dense|^2){}\n", c.moe.total_rel_error(),
               c.oracle ? fmt::format(", oracle {:.4f}", c.oracle->total_rel_error()) : "");
    fmt::print("per layer    FFN error{}  load cv  load (fraction of tokens per expert)\n", c.oracle ? "    oracle" : "");
    for (size_t i = 0; i < c.moe.layers.size(); ++i) {
        const LayerQuality& l = c.moe.layers[i];
        std::string row;
        for (double f : l.load()) row += fmt::format(" {:.3f}", f);
        fmt::print("  layer {:2d}   {:9.4f}{}  {:7.2f} {}\n", l.layer, l.rel_error(),
                   c.oracle ? fmt::format("  {:8.4f}", c.oracle->layers[i].rel_error()) : "", l.load_cv(), row);
    }
}

MOEFY_COMMAND(70, [](CLI::App& app) {
    auto* cmd = app.add_subcommand("eval", "Perplexity of a dense or MoE model on a .jsonl or .txt file");
    struct Opts {
        std::string model, data, text_field, reference;
        int ctx = 512;
        size_t max_tokens = 0;
        bool json = false, oracle = false;
    };
    auto o = std::make_shared<Opts>();
    cmd->add_option("--model", o->model, "Model directory")->required();
    cmd->add_option("--data", o->data, "Evaluation text: .jsonl (one document per line) or .txt")->required();
    cmd->add_option("--ctx", o->ctx, "Tokens per window")->capture_default_str();
    cmd->add_option("--max-tokens", o->max_tokens, "Stop after this many predicted tokens (0: all)");
    cmd->add_option("--text-field", o->text_field, "JSONL field holding the text (default: text, else content)");
    cmd->add_flag("--json", o->json, "Print one JSON object");
    cmd->add_option("--reference", o->reference,
                    "Dense model the MoE model was made from: also report its perplexity on the same tokens, "
                    "per-layer FFN output error and expert load");
    cmd->add_flag("--oracle", o->oracle,
                  "With --reference: also evaluate oracle routing (the experts with the largest true output per token)");
    cmd->callback([o] {
        const MpiSession mpi;  // MPI from here to the end of the command, when started by mpirun
        const RankGroup& group = mpi.group();
        const bool printer = group.rank() == 0;
        const std::string label = group.size() > 1 ? fmt::format("eval (rank 0 of {})", group.size()) : "eval";
        if (o->oracle && o->reference.empty()) fail("--oracle needs --reference DENSE_DIR");
        Checkpoint ck = Checkpoint::open(o->model);
        check_context(ck.config, o->ctx, o->model);
        auto tok = Tokenizer::from_dir(o->model);
        auto docs = read_documents(o->data, o->text_field);
        auto windows = make_windows(docs, *tok, {o->ctx, o->max_tokens, true});
        auto model = Model::load(ck);
        if (!o->reference.empty()) {
            Checkpoint ref = Checkpoint::open(o->reference);
            check_reference_pair(ck, ref);
            auto dense = Model::load(ref);
            ProgressBar bar(label);
            ReferenceComparison c = compare_with_reference(
                *model, *dense, windows, o->oracle,
                [&](const char* stage, size_t d, size_t t) {
                    if (printer) bar.update(double(d), double(t), std::string("tokens (") + stage + ")");
                },
                group);
            bar.finish();
            if (!printer) return;
            nlohmann::json j = comparison_json(c);
            j["model"] = o->model;
            j["reference"] = o->reference;
            j["data"] = o->data;
            j["documents"] = docs.size();
            j["ctx"] = o->ctx;
            if (o->json) {
                fmt::print("{}\n", j.dump(2));
                return;
            }
            fmt::print("model        {}\n", o->model);
            fmt::print("reference    {}\n", o->reference);
            fmt::print("data         {} ({} documents, ctx {})\n", o->data, docs.size(), o->ctx);
            print_comparison(c);
            return;
        }
        ProgressBar bar(label);
        PerplexityResult r = evaluate_perplexity(
            *model, windows, [&](size_t d, size_t t) { if (printer) bar.update(double(d), double(t), "tokens"); }, nullptr, group);
        bar.finish();
        if (!printer) return;
        nlohmann::json j = {{"model", o->model},
                            {"data", o->data},
                            {"documents", docs.size()},
                            {"ctx", o->ctx},
                            {"tokens", r.tokens},
                            {"mean_nll", r.mean_nll()},
                            {"perplexity", r.perplexity()},
                            {"seconds", r.seconds},
                            {"tokens_per_second", r.tokens_per_second()}};
        if (ck.config.is_moe()) j["expert_load"] = routing_load_json(r.routing);
        if (o->json) {
            fmt::print("{}\n", j.dump(2));
            return;
        }
        fmt::print("model        {}\n", o->model);
        fmt::print("data         {} ({} documents, ctx {})\n", o->data, docs.size(), o->ctx);
        fmt::print("tokens       {}\n", r.tokens);
        fmt::print("mean NLL     {:.4f}\n", r.mean_nll());
        fmt::print("perplexity   {:.3f}\n", r.perplexity());
        fmt::print("speed        {:.0f} tokens/s\n", r.tokens_per_second());
        if (ck.config.is_moe()) print_load_rows(j["expert_load"]);
    });
});

MOEFY_COMMAND(75, [](CLI::App& app) {
    auto* cmd = app.add_subcommand("generate", "Generate text from a prompt (KV cache; greedy by default)");
    struct Opts {
        std::string model, prompt;
        int n = 64;
        float temperature = 0, top_p = 1;
        uint64_t seed = 0;
        bool timings = false;
    };
    auto o = std::make_shared<Opts>();
    cmd->add_option("--model", o->model, "Model directory")->required();
    cmd->add_option("--prompt", o->prompt, "Prompt text")->required();
    cmd->add_flag("--timings", o->timings, "Print prompt and generation tokens/s to stderr at the end");
    cmd->add_option("-n,--tokens", o->n, "New tokens at most")->capture_default_str();
    cmd->add_option("--temperature", o->temperature, "0: greedy")->capture_default_str();
    cmd->add_option("--top-p", o->top_p, "Nucleus mass when sampling")->capture_default_str();
    cmd->add_option("--seed", o->seed, "Sampling seed")->capture_default_str();
    cmd->callback([o] {
        if (o->n < 0) fail("-n must not be negative");
        if (o->temperature < 0) fail("--temperature must not be negative");
        if (!(o->top_p > 0 && o->top_p <= 1)) fail("--top-p must be in (0, 1]");
        Checkpoint ck = Checkpoint::open(o->model);
        auto tok = Tokenizer::from_dir(o->model);
        auto model = Model::load(ck);
        std::vector<int32_t> prompt = tok->encode(o->prompt, false);
        if (tok->bos_id() >= 0) prompt.insert(prompt.begin(), tok->bos_id());
        fmt::print("{}", o->prompt);
        std::fflush(stdout);
        GenerateOptions g;
        g.max_new_tokens = o->n;
        g.temperature = o->temperature;
        g.top_p = o->top_p;
        g.seed = o->seed;
        // Each token's own text as it comes (decode_token keeps a word-initial
        // piece's space and yields byte tokens as raw bytes, so a multi-byte
        // character split over byte tokens is whole once its last byte is out).
        using clock = std::chrono::steady_clock;
        const auto t0 = clock::now();
        auto t1 = t0;  // the first new token: the prompt's forward pass
        int produced = 0;
        generate(*model, prompt, g, [&](int32_t t) {
            if (produced++ == 0) t1 = clock::now();
            const std::string piece = tok->decode_token(t);
            if (piece.empty()) return;
            std::fwrite(piece.data(), 1, piece.size(), stdout);
            std::fflush(stdout);
        });
        fmt::print("\n");
        if (o->timings) {
            const auto secs = [](auto a, auto b) { return std::chrono::duration<double>(b - a).count(); };
            const double tp = secs(t0, t1), tg = secs(t1, clock::now());
            fmt::print(stderr, "prompt: {} tokens in {:.3f} s ({:.1f} tokens/s); generated: {} tokens after the first in {:.3f} s ({:.2f} tokens/s)\n",
                       prompt.size(), tp, double(prompt.size()) / tp, std::max(produced - 1, 0), tg,
                       produced > 1 ? double(produced - 1) / tg : 0.0);
        }
    });
});

}  // namespace moefy::cli
