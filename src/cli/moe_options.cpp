#include "cli/moe_options.h"

namespace moefy::cli {

void add_layout_options(CLI::App* cmd, MoEFormat& format, int& top_k, std::optional<GateKind>& gate,
                        std::optional<DType>& dtype) {
    add_enum_option(cmd, "--format", format, moe_format_names, "Output layout");
    cmd->add_option("--top-k", top_k, "Experts selected per token")->capture_default_str();
    add_parsed_option(
        cmd, "--gate", gate, [](const std::string& s) { return std::optional<GateKind>(parse_gate_kind(s)); },
        "Router network: mlp (Linear-tanh-Linear, llama-moe only) | linear [default: mlp for llama-moe, linear otherwise]");
    add_parsed_option(cmd, "--dtype", dtype, parse_out_dtype, "Output dtype: same | bf16 | f16 | f32", out_dtype_name(dtype));
}

void add_routing_options(CLI::App* cmd, RoutingChoice& routing, const std::string& calib_flag) {
    add_parsed_option(cmd, "--router", routing.router, parse_router_kind,
                      fmt::format("Router: random (the reference: N(0, 0.02)) | centroid (mean normalised gate rows) | "
                                  "fit (fitted on {} text)",
                                  calib_flag),
                      router_kind_name(routing.router));
    add_parsed_option(cmd, "--weighting", routing.weighting, parse_weighting,
                      "Expert weights: softmax (over the top-k, x scale) | uniform (1 x scale)",
                      weighting_name(routing.weighting));
    add_parsed_option(cmd, "--scale", routing.scale, parse_routed_scale,
                      fmt::format("Routed output scale: auto (softmax: experts / top-k; uniform: 1), fit (per layer, on {} "
                                  "text) or a number",
                                  calib_flag),
                      routed_scale_name(routing.scale));
}

}  // namespace moefy::cli
