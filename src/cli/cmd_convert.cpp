// moefy convert --model DIR --plan plan.json --out DIR [--format llama-moe|mixtral|deepseek] [--top-k 2]
//               [--scale auto|FLOAT] [--gate mlp|linear] [--dtype same|bf16|f16|f32] [--seed 0] [--force]
//               [--no-softmax] [--no-multiply-gate-scores] [--max-shard-size 5GB]
#include <cmath>

#include "cli/cli_common.h"
#include "common/error.h"
#include "convert/convert.h"

namespace moefy::cli {

namespace {

std::string scales_summary(const ConvertReport& r) {
    if (r.scales.empty()) return "";
    double lo = r.scales[0], hi = r.scales[0];
    for (double s : r.scales) lo = std::min(lo, s), hi = std::max(hi, s);
    std::string v = lo == hi ? fmt::format("{:g}", lo) : fmt::format("{:g}..{:g}", lo, hi);
    return fmt::format("scale {}{}", v, r.scale_folded ? " (folded into the down projections)" : "");
}

}  // namespace

MOEFY_COMMAND(40, [](CLI::App& app) {
    auto* cmd = app.add_subcommand("convert", "Write an MoE checkpoint from a dense model and an expert plan");
    struct Opts {
        std::string model, plan, out;
        std::string format = "llama-moe", scale = "auto", gate, dtype = "same", max_shard = "5GB";
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
    cmd->add_option("--scale", o->scale, "Routed output scale: auto (experts / top-k) or a number")->capture_default_str();
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
        if (o->scale != "auto") {
            try {
                size_t used = 0;
                opt.scale = std::stod(o->scale, &used);
                if (used != o->scale.size()) throw std::invalid_argument("trailing text");
            } catch (const std::exception&) {
                fail("--scale '{}': expected auto or a number", o->scale);
            }
        }
        opt.gate = o->gate;
        opt.dtype = parse_out_dtype(o->dtype);
        opt.seed = o->seed;
        opt.force = o->force;
        opt.gate_softmax = !o->no_softmax;
        opt.multiply_gate_scores = !o->no_multiply;
        opt.max_shard_bytes = parse_byte_size(o->max_shard, "--max-shard-size");

        ProgressBar bar("convert");
        ConvertReport r = convert_model_dir(o->model, o->plan, o->out, opt,
                                            [&](double done, double total) { bar.update(done / 1e9, total / 1e9, "GB"); });
        bar.finish();
        fmt::print("wrote {}: {} layout, {} layers x {} experts{} (top-{}, {} gate, {}), {} {} tensors, {:.2f} GB in {:.1f} s\n",
                   r.out_dir, r.layout, r.num_layers, r.num_experts,
                   r.num_shared ? fmt::format(" + {} shared", r.num_shared) : "", r.top_k, r.gate, scales_summary(r),
                   r.tensors, dtype_name(r.dtype), double(r.tensor_bytes) / 1e9, r.seconds);
    });
});

}  // namespace moefy::cli
