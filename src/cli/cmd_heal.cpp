// moefy heal --model MOE_DIR [--teacher DENSE_DIR] --data calib.jsonl --steps N --out DIR [--down-only] [--lr X] [--accumulate N] [--json]
#include "cli/cli_common.h"
#include "common/error.h"
#include "eval/perplexity.h"
#include "model/checkpoint.h"
#include "pipeline/heal.h"
#include "tokenizer/tokenizer.h"

namespace moefy::cli {

MOEFY_COMMAND(55, [](CLI::App& app) {
    auto* cmd = app.add_subcommand("heal", "Train an MoE model's routers and expert down projections briefly on calibration text");
    struct Opts {
        std::string model, data, text_field;
        int ctx = 256;
        size_t tokens = 262144;
        bool json = false;
        HealOptions h;
    };
    auto o = std::make_shared<Opts>();
    cmd->add_option("--model", o->model, "MoE model directory (safetensors, any layout moefy writes)")->required();
    cmd->add_option("--out", o->h.out_dir, "Output directory: the same layout, the trained tensors replaced")->required();
    cmd->add_option("--teacher", o->h.teacher_dir,
                    "The dense model the MoE was made from: distil its next-token distribution (KL) instead of the text's NLL");
    cmd->add_option("--data", o->data,
                    "Calibration text (.jsonl or .txt) [default: the bundled data/calib.jsonl]; one window in 8 is held out");
    cmd->add_option("--text-field", o->text_field, "JSONL field holding the text (default: text, else content)");
    cmd->add_option("--ctx", o->ctx, "Tokens per window")->capture_default_str();
    cmd->add_option("--tokens", o->tokens, "Calibration tokens at most")->capture_default_str();
    cmd->add_option("--steps", o->h.steps, "Optimiser steps")->capture_default_str();
    cmd->add_option("--accumulate", o->h.accumulate, "Windows per step (gradient accumulation)")->capture_default_str();
    cmd->add_option("--lr", o->h.lr, "Peak step size relative to each tensor's RMS (Adam; linear warm-up, cosine decay)")->capture_default_str();
    cmd->add_option("--warmup", o->h.warmup, "Warm-up, as a fraction of the steps")->capture_default_str();
    cmd->add_option("--clip", o->h.clip_norm, "Clip the gradient to this global norm (0: no clipping)")->capture_default_str();
    cmd->add_flag("!--down-only", o->h.all_experts,
                  "Train the routers and the experts' down projections only (default: every expert projection)");
    cmd->add_option("--seed", o->h.seed, "Order of the training windows")->capture_default_str();
    cmd->add_flag("--json", o->json, "Print one JSON object instead of the summary");
    cmd->add_flag("--force", o->h.force, "Replace an existing output directory (it may be --model itself)");
    cmd->callback([o] {
        if (o->data.empty()) {
            o->data = bundled_file("data/calib.jsonl");
            if (o->data.empty()) fail("heal: no --data given and no bundled calibration text found");
            fmt::print(stderr, "calibration text: {} (bundled; --data FILE for your own)\n", o->data);
        }
        Checkpoint ck = Checkpoint::open(o->model);
        check_context(ck.config, o->ctx, o->model);
        auto tok = Tokenizer::from_dir(o->model);
        const auto windows = read_windows(o->data, o->text_field, *tok, o->ctx, o->tokens);
        ProgressBar bar("heal");
        const HealResult r = heal_checkpoint(ck, windows, o->h, [&](int step, int steps, double loss) {
            bar.update(step, steps, fmt::format("steps, loss {:.4f}", loss));
        });
        bar.finish();
        if (o->json) {
            nlohmann::json j = {{"model", o->model}, {"out", o->h.out_dir}, {"steps", r.steps},
                                {"trained_params", r.trained_params}, {"train_windows", r.train_windows},
                                {"heldout_windows", r.heldout_windows}, {"heldout_tokens", r.heldout_tokens},
                                {"heldout_nll_before", r.heldout_nll_before}, {"heldout_nll_after", r.heldout_nll_after},
                                {"first_loss", r.first_loss}, {"last_loss", r.last_loss}, {"seconds", r.seconds}};
            fmt::print("{}\n", j.dump(2));
            return;
        }
        fmt::print("healed {} -> {}: {} steps, {} parameters trained, {:.1f} s\n", o->model, o->h.out_dir, r.steps,
                   r.trained_params, r.seconds);
        fmt::print("held-out calibration perplexity ({} tokens): {:.3f} -> {:.3f}\n", r.heldout_tokens,
                   std::exp(r.heldout_nll_before), std::exp(r.heldout_nll_after));
    });
});

}  // namespace moefy::cli
