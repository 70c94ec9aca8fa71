// moefy convert --model DIR --plan plan.json --out DIR [--format llama-moe|mixtral|deepseek|gguf] [--top-k 2]
//               [--gate mlp|linear] [--dtype same|bf16|f16|f32|q8_0] [--seed 0] [--force]
// moefy convert --model DIR --format gguf --out model.gguf      (dense GGUF, no plan)
//               [--no-softmax] [--no-multiply-gate-scores] [--max-shard-size 5GB]
//               [--router random|centroid|fit] [--weighting softmax|uniform] [--scale auto|fit|FLOAT]
//               [--calib FILE] [--calib-tokens N] [--ctx 512] [--text-field F]
#include <cmath>
#include <filesystem>

#include "cli/cli_common.h"
#include "cli/moe_options.h"
#include "common/error.h"
#include "convert/convert.h"
#include "convert/gguf.h"
#include "convert/routing.h"
#include "data/documents.h"
#include "eval/perplexity.h"
#include "model/checkpoint.h"
#include "mpi/rank_group.h"
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

void print_gguf_report(const GgufReport& g, bool uniform_flattened) {
    const ConvertReport& r = g.convert;
    if (r.num_experts == 0) {
        fmt::print("wrote {}: GGUF {} (dense), {} layers, {} tensors ({}), {:.2f} GB in {:.1f} s\n", r.out_dir, g.arch,
                   r.num_layers, r.tensors, g.type, double(r.tensor_bytes) / 1e9, r.seconds);
    } else {
        fmt::print("wrote {}: GGUF {}, {} layers x {} experts of width {}{} (top-{}, {}), {} tensors ({}), {:.2f} GB in {:.1f} s\n",
                   r.out_dir, g.arch, r.num_layers, r.num_experts, g.expert_width,
                   g.shared_count ? fmt::format(" + {} shared", g.shared_count) : "", r.top_k, scales_summary(r), r.tensors,
                   g.type, double(r.tensor_bytes) / 1e9, r.seconds);
        if (g.padded_neurons)
            fmt::print("padding: {} zero neurons added over all layers so every expert stores width {} (exact: they add nothing)\n",
                       g.padded_neurons, g.expert_width);
        fmt::print("weighting in llama.cpp: {}\n",
                   g.arch == "llama" ? "softmax over all experts, top-k, renormalised (as mixtral)"
                                     : "softmax over all routed experts, top-k, not renormalised; shared experts summed (as deepseek)");
        if (uniform_flattened)
            fmt::print("uniform weighting: written as a flattened softmax (router x 2^-m, scale x {0}): every weight within 0.1% "
                       "of 1/{0} by construction\n",
                       g.arch == "llama" ? "k" : "E");
    }
    fmt::print("tokenizer: {}{}{}, {} tokens\n", g.vocab.model, g.vocab.pre.empty() ? "" : " (pre " + g.vocab.pre + ")",
               g.vocab.chat_template ? ", chat template" : "", g.vocab.tokens);
}

}  // namespace

MOEFY_COMMAND(40, [](CLI::App& app) {
    auto* cmd = app.add_subcommand("convert", "Write an MoE checkpoint from a dense model and an expert plan");
    struct Opts {
        std::string model, plan, out, calib, text_field;
        ConvertOptions convert;
        RoutingChoice routing{RouterKind::Random, Weighting::Softmax, RoutedScale{}, /*reference_by_converter=*/true};
        size_t calib_tokens = 32768;
        int ctx = 512;
        bool no_softmax = false, no_multiply = false;
        RoutingExtras extras;
    };
    auto o = std::make_shared<Opts>();
    ConvertOptions& c = o->convert;
    cmd->add_option("--model", o->model, "Dense model directory (config.json + safetensors)")->required();
    cmd->add_option("--plan", o->plan, "Expert plan (JSON, from moefy split); optional with --format gguf (dense GGUF)");
    cmd->add_option("--out", o->out, "Output model directory (--format gguf: the .gguf file)")->required();
    add_layout_options(cmd, c.format, c.top_k, c.gate, c.dtype, c.q8_0);
    add_routing_options(cmd, o->routing, "--calib");
    cmd->add_option("--calib", o->calib,
                    "Calibration text (.jsonl/.txt) for --router fit, --scale fit or a softmax temperature "
                    "[default: the bundled data/calib.jsonl]");
    cmd->add_option("--calib-tokens", o->calib_tokens, "Calibration tokens at most")->capture_default_str();
    cmd->add_option("--ctx", o->ctx, "Tokens per calibration window")->capture_default_str();
    cmd->add_option("--text-field", o->text_field, "JSONL field holding the calibration text (default: text, else content)");
    cmd->add_flag("--refit", o->extras.refit,
                  "Refit the down projections for the routing on the calibration text (build does by default)");
    cmd->add_flag("--sequential", o->extras.sequential,
                  "Fit routers, scales (and --refit) layer by layer on the converted layers' outputs (build does by default)");
    cmd->add_option("--seed", c.seed, "Seed of the random router initialisation")->capture_default_str();
    cmd->add_flag("--force", c.force, "Replace an existing output directory");
    cmd->add_flag("--no-softmax", o->no_softmax, "llama-moe: weight experts by raw gate logits (gate_use_softmax false)");
    cmd->add_flag("--no-multiply-gate-scores", o->no_multiply,
                  "llama-moe: sum selected experts unweighted (multiply_gate_scores false; the scale is then unused)");
    add_parsed_option(
        cmd, "--max-shard-size", c.max_shard_bytes, [](const std::string& s) { return parse_byte_size(s, "--max-shard-size"); },
        "Largest safetensors file before sharding (e.g. 5GB, 500MB)", "5GB");
    cmd->callback([o] {
        // Under mpirun the ranks share the sequential calibration and rank 0 writes.
        const MpiSession mpi;
        const RankGroup& group = mpi.group();
        ConvertOptions& opt = o->convert;
        opt.gate_softmax = !o->no_softmax;
        opt.multiply_gate_scores = !o->no_multiply;
        check_routing(o->routing, opt);
        if ((o->extras.refit || o->extras.sequential) && is_reference_routing(o->routing) && o->routing.reference_by_converter)
            fail("--refit / --sequential work on routers moefy builds: add --router fit|centroid, --weighting uniform or "
                 "--scale fit (the reference routing is left to the converter)");
        // Refused before any slow work (calibration); convert_checkpoint checks again.
        if (std::filesystem::exists(o->out) && !opt.force)
            fail("{}: output already exists (use --force to replace it)", o->out);
        if (o->plan.empty() && opt.format != MoEFormat::Gguf)
            fail("--plan is required (only --format gguf converts a dense model without one)");
        const Checkpoint dense = Checkpoint::open(o->model);
        if (o->plan.empty()) {
            if (group.rank() != 0) return;  // nothing to share: rank 0 converts
            ProgressBar bar("convert");
            const GgufReport r = convert_to_gguf(dense, nullptr, o->out, opt, gguf_options(opt),
                                                 [&](double done, double total) { bar.update(done / 1e9, total / 1e9, "GB"); });
            bar.finish();
            print_gguf_report(r, false);
            return;
        }
        const ExpertPlan plan = ExpertPlan::load(o->plan);
        plan.validate_for(dense.config, ffn_fingerprint(*dense.tensors, dense.config), o->plan);  // errors name the file
        opt.plan_name = o->plan;

        std::vector<TokenWindow> calib;
        std::string calib_path;
        if (routing_needs_calibration(o->routing, opt) || o->extras.refit) {
            calib_path = o->calib.empty() ? bundled_file("data/calib.jsonl") : o->calib;
            if (calib_path.empty())
                fail("--router {} / --scale {} need calibration text: pass --calib FILE", router_kind_name(o->routing.router),
                     routed_scale_name(o->routing.scale));
            check_context(dense.config, o->ctx, o->model);
            auto tok = Tokenizer::from_dir(o->model);
            calib = make_windows(read_documents(calib_path, o->text_field), *tok, {o->ctx, o->calib_tokens, true});
        }
        ProgressBar cbar(group.size() > 1 ? fmt::format("calibrate (rank 0 of {})", group.size()) : "calibrate");
        const CalibratedRouting cr = calibrate_routing(
            dense, plan, o->routing, o->extras, calib, calib_path, opt,
            [&](const char* stage, double d, double n) { if (group.rank() == 0) cbar.update(d, n, stage); }, group);
        cbar.finish();
        if (group.rank() != 0) return;
        const RoutingResult& routing = cr.routing;
        if (cr.refit)
            fmt::print("refit: down projections for this routing on {} tokens per layer{}\n", cr.refit_tokens,
                       cr.sequential ? ", layer by layer (sequential)" : "");
        if (!calib.empty())
            fmt::print("routers: {} on {} calibration tokens per layer ({})\n", router_kind_name(o->routing.router),
                       routing.calib_tokens, calib_path);
        ProgressBar bar("convert");
        auto on_progress = [&](double done, double total) { bar.update(done / 1e9, total / 1e9, "GB"); };
        if (opt.format == MoEFormat::Gguf) {
            const GgufReport r = convert_to_gguf(dense, &plan, o->out, opt, gguf_options(opt), on_progress);
            bar.finish();
            print_gguf_report(r, routing.built && o->routing.weighting == Weighting::Uniform);
            return;
        }
        const ConvertReport r = convert_checkpoint(dense, plan, o->out, opt, on_progress);
        bar.finish();
        print_report(r);
    });
});

}  // namespace moefy::cli
