#pragma once
// Routing as the converter needs it: the `--router`, `--weighting` and `--scale`
// choices for an output layout (route/build_routers.h builds the routers), and
// the built routers put into ConvertOptions for that layout. route/ knows
// nothing of layouts; this is where the two meet, above both.
#include <cstddef>
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "convert/convert.h"
#include "route/build_routers.h"

namespace moefy {

// `--router`, `--weighting` and `--scale` (fit | auto | a positive number) as
// `moefy convert` and `moefy build` take them, for a layout and gate.
RouterOptions parse_router_options(const std::string& router, const std::string& weighting, const std::string& scale,
                                   MoEFormat format, bool mlp_gate, int top_k, uint64_t seed);

// What config.json records under "moefy" about routers built here:
// {"router": {kind, weighting, scale}} plus {"calibration": {file, tokens_per_layer}}
// when calibration text was read (calib_file not empty).
nlohmann::json routing_provenance(const std::string& router, const std::string& weighting, const std::string& scale,
                                  const std::string& calib_file, size_t calib_tokens);

// Puts routers, weighting and scales into the converter's options for its
// layout (opt.format and opt.top_k must be set):
//   softmax: gate_softmax = multiply_gate_scores = true, layer_scales = scales.
//   uniform: llama-moe with every scale 1: multiply_gate_scores = false (exact,
//            as MoEfication). Otherwise (mixtral/deepseek always; llama-moe with
//            a scale) the softmax is flattened: the routers' last matrix is
//            multiplied by 2^-m, which keeps the selection bit-exact (a power of
//            two scales every float product exactly) while every logit gap
//            shrinks below 1e-3, so the weights are 1/k (llama-moe, mixtral) or
//            1/E (deepseek) to within 0.1%; the scale is multiplied by k or E to
//            make up. Runtimes then compute the uniform sum to bf16 precision.
void set_convert_routing(const RouterBuild& build, ConvertOptions& opt);

}  // namespace moefy
