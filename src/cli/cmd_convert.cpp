// moefy convert --model DIR --plan plan.json --out DIR [--format llama-moe|mixtral|deepseek] [--top-k 2]
//               [--scale auto|FLOAT] [--gate mlp|linear] [--dtype same|bf16|f16|f32] [--seed 0] [--force]
//               [--no-softmax] [--no-multiply-gate-scores] [--max-shard-size 5GB]
//               [--router random|centroid|fit] [--weighting softmax|uniform] [--scale auto|fit|FLOAT]
//               [--calib FILE] [--calib-tokens N] [--ctx 512] [--text-field F]
#include <cmath>
#include <filesystem>

#include "cli/cli_common.h"
#include "common/error.h"
#include "convert/convert.h"
#include "data/documents.h"
#include "eval/perplexity.h"
#include "model/checkpoint.h"
#include "route/router_fit.h"
#include "split/expert_plan.h"
#include "tokenizer/tokenizer.h"

namespace moefy::cli {

namespace {

std::string scales_summary(const ConvertReport& r) {
    if (r.scales.empty()) return "";
    double lo = r.scales[0], hi = r.scales[0];
    for (double s : r.scales) lo = std::min(lo, s), hi = std::max(hi, s);
    std::string v = lo == hi ? fmt::format("{:g}", lo) : fmt::format("{:g}..{:g}", lo, hi);
    return fmt::format("scale {}{}", v, r.scale_folded ? " (folded into the down projections)" : "");
}

void print_report(const ConvertReport& r) {
    fmt::print("wrote {}: {} layout, {} layers x {} experts{} (top-{}, {} gate, {}), {} {} tensors, {:.2f} GB in {:.1f} s\n",
               r.out_dir, r.layout, r.num_layers, r.num_experts,
               r.num_shared ? fmt::format(" + {} shared", r.num_shared) : "", r.top_k, r.gate, scales_summary(r), r.tensors,
               dtype_name(r.dtype), double(r.tensor_bytes) / 1e9, r.seconds);
}

}  // namespace

MOEFY_COMMAND(40, [](CLI::App& app) {
    auto* cmd = app.add_subcommand("convert", "Write an MoE checkpoint from a dense model and an expert plan");
    struct Opts {
        std::string model, plan, out;
        std::string format = "llama-moe", scale = "auto", gate, dtype = "same", max_shard = "5GB";
        std::string router = "random", weighting = "softmax", calib, text_field;
        size_t calib_tokens = 32768;
        int ctx = 512;
        int top_k = 2;
        uint64_t seed = 0;
        bool force = false, no_softmax = false, no_multiply = false;
    };
    auto o = std::make_shared<Opts>();
    cmd->add_option("--model", o->model, "Dense model directory (config.json + safetensors)")->required();
    cmd->add_option("--plan", o->plan, "Expert plan (JSON, from moefy split)")->required();
    cmd->add_option("--out", o->out, "Output model directory")->required();
    cmd->add_option("--format", o->format, "Output layout: llama-moe | mixtral | deepseek")->capture_default_str();
    cmd->add_option("--top-k", o->top_k, "Experts selected per token")->capture_default_str();
    cmd->add_option("--scale", o->scale,
                    "Routed output scale: auto (softmax: experts / top-k; uniform: 1), fit (per layer, on --calib text) "
                    "or a number")
        ->capture_default_str();
    cmd->add_option("--router", o->router,
                    "Router: random (the reference: N(0, 0.02)) | centroid (mean normalised gate rows) | fit (fitted on "
                    "--calib text)")
        ->capture_default_str();
    cmd->add_option("--weighting", o->weighting, "Expert weights: softmax (over the top-k, x scale) | uniform (1 x scale)")
        ->capture_default_str();
    cmd->add_option("--calib", o->calib,
                    "Calibration text (.jsonl/.txt) for --router fit, --scale fit or a softmax temperature "
                    "[default: the bundled data/calib.jsonl]");
    cmd->add_option("--calib-tokens", o->calib_tokens, "Calibration tokens at most")->capture_default_str();
    cmd->add_option("--ctx", o->ctx, "Tokens per calibration window")->capture_default_str();
    cmd->add_option("--text-field", o->text_field, "JSONL field holding the calibration text (default: text, else content)");
    cmd->add_option("--gate", o->gate, "Router: mlp (Linear-tanh-Linear, llama-moe only) | linear [default: mlp for llama-moe, linear otherwise]");
    cmd->add_option("--dtype", o->dtype, "Output dtype: same | bf16 | f16 | f32")->capture_default_str();
    cmd->add_option("--seed", o->seed, "Seed of the random router initialisation")->capture_default_str();
    cmd->add_flag("--force", o->force, "Replace an existing output directory");
    cmd->add_flag("--no-softmax", o->no_softmax, "llama-moe: weight experts by raw gate logits (gate_use_softmax false)");
    cmd->add_flag("--no-multiply-gate-scores", o->no_multiply,
                  "llama-moe: sum selected experts unweighted (multiply_gate_scores false; the scale is then unused)");
    cmd->add_option("--max-shard-size", o->max_shard, "Largest safetensors file before sharding (e.g. 5GB, 500MB)")
        ->capture_default_str();
    cmd->callback([o] {
        ConvertOptions opt;
        opt.format = parse_moe_format(o->format);
        opt.top_k = o->top_k;
        opt.gate = o->gate;
        opt.dtype = parse_out_dtype(o->dtype);
        opt.seed = o->seed;
        opt.force = o->force;
        opt.gate_softmax = !o->no_softmax;
        opt.multiply_gate_scores = !o->no_multiply;
        opt.max_shard_bytes = parse_byte_size(o->max_shard, "--max-shard-size");
        if (opt.gate.empty()) opt.gate = opt.format == MoEFormat::LlamaMoE ? "mlp" : "linear";
        const RouterOptions ro = parse_router_options(o->router, o->weighting, o->scale, opt.format, opt.gate == "mlp",
                                                      o->top_k, o->seed);
        // The reference's router (random, softmax x scale) is drawn by the converter
        // itself; every other choice is built here and handed over.
        const bool reference_routing = ro.kind == RouterKind::Random && ro.weighting == Weighting::Softmax && !ro.fit_scale;
        if (!reference_routing && (o->no_softmax || o->no_multiply))
            fail("--no-softmax / --no-multiply-gate-scores set the reference router's weighting by hand; with --router {} "
                 "use --weighting softmax|uniform instead",
                 o->router);
        // Refused before any slow work (calibration); convert_checkpoint checks again.
        if (std::filesystem::exists(o->out) && !o->force)
            fail("{}: output already exists (use --force to replace it)", o->out);
        const Checkpoint dense = Checkpoint::open(o->model);
        const ExpertPlan plan = ExpertPlan::load(o->plan);
        plan.validate_for(dense.config, ffn_fingerprint(*dense.tensors, dense.config), o->plan);  // errors name the file
        opt.plan_name = o->plan;

        std::vector<TokenWindow> calib;
        std::string calib_path;
        if (reference_routing) {
            opt.scale = ro.scale;
        } else {
            if (needs_calibration(ro)) {
                calib_path = o->calib.empty() ? std::string(MOEFY_SOURCE_DIR) + "/data/calib.jsonl" : o->calib;
                if (o->calib.empty() && !std::filesystem::exists(calib_path))
                    fail("--router {} / --scale {} need calibration text: pass --calib FILE", o->router, o->scale);
                check_context(dense.config, o->ctx, o->model);
                auto tok = Tokenizer::from_dir(o->model);
                calib = make_windows(read_documents(calib_path, o->text_field), *tok, {o->ctx, o->calib_tokens, true});
            }
            ProgressBar cbar("calibrate");
            const RouterBuild rb = build_routers(dense, plan, ro, calib, [&](const char* stage, double d, double n) {
                cbar.update(d, n, stage);
            });
            cbar.finish();
            set_convert_routing(rb, opt);
            opt.provenance = routing_provenance(o->router, o->weighting, o->scale, calib_path, rb.calib_tokens);
            if (!calib.empty())
                fmt::print("routers: {} on {} calibration tokens per layer ({})\n", o->router, rb.calib_tokens, calib_path);
        }
        ProgressBar bar("convert");
        const ConvertReport r = convert_checkpoint(dense, plan, o->out, opt, [&](double done, double total) {
            bar.update(done / 1e9, total / 1e9, "GB");
        });
        bar.finish();
        print_report(r);
    });
});

}  // namespace moefy::cli
