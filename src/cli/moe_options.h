#pragma once
// The options `moefy convert` and `moefy build` share, declared once: the
// output layout and the routing choice, parsed at the boundary into their typed
// forms (convert/convert.h, convert/routing.h). A new layout or router is a
// value in its enum's name table; it appears here by itself.
#include <optional>
#include <string>

#include "cli/cli_common.h"
#include "convert/routing.h"

namespace moefy::cli {

// --format, --top-k, --gate, --dtype
void add_layout_options(CLI::App* cmd, MoEFormat& format, int& top_k, std::optional<GateKind>& gate,
                        std::optional<DType>& dtype);

// --router, --weighting, --scale; `calib_flag` names the option that gives the calibration text.
void add_routing_options(CLI::App* cmd, RoutingChoice& routing, const std::string& calib_flag);

}  // namespace moefy::cli
