#pragma once
// A self-contained HTML report of one build: inline CSS and inline SVG, no
// script and no external resource, so it opens anywhere without a network.
//
//   summary table    the build's columns (method, experts, top-k, perplexities, stage times)
//   expert widths    bars per layer, one per routed expert (shared experts listed apart)
//   FFN error        per MoE layer, Σ‖moe − dense‖² / Σ‖dense‖² (and the oracle's)
//   expert load      heatmap layer × expert of the fraction of tokens, with each layer's cv
//   overlap          for splits whose routed experts share neurons: per layer, the
//                    E × E heatmap of |Si ∩ Sj| / |Si ∪ Sj|
//
// Every data mark is an SVG <rect> with class "mark" inside an <svg> with
// class "plot" and a data-plot name ("widths", "ffn_error", "load",
// "overlap-<layer>"), so a renderer (or a test) can count them:
//   widths: one per routed and shared expert of every layer; ffn_error: one per
//   MoE layer and series (moe, oracle); load: one per layer and routed expert;
//   overlap-<l>: E × E.
#include <string>
#include <utility>
#include <vector>

#include "eval/compare.h"
#include "split/expert_plan.h"

namespace moefy {

// A scatter of (x, y) points with a horizontal budget line (build --budget's
// Pareto front: active FFN fraction vs perplexity ratio).
struct ReportScatter {
    std::string title, x_label, y_label;
    struct Point {
        double x = 0, y = 0;
        std::string label;   // tooltip
        bool front = false;  // on the Pareto front (drawn filled and joined)
        bool chosen = false; // the winner (drawn larger)
    };
    std::vector<Point> points;
    double y_line = 0;  // drawn when > 0
};

struct ReportInput {
    std::string title;
    // Columns of the summary table: (heading, value), in order.
    std::vector<std::pair<std::string, std::string>> summary;
    // Extra (label, value) lines under the table: model, data, layout, ...
    std::vector<std::pair<std::string, std::string>> details;
    const ExpertPlan* plan = nullptr;           // widths and overlap (nullptr: not drawn)
    const ReferenceComparison* eval = nullptr;  // FFN error and load (nullptr: not drawn)
    const ReportScatter* scatter = nullptr;     // drawn after the summary (nullptr: not drawn)
    std::string scatter_note;                   // a paragraph above it
};

std::string render_report_html(const ReportInput& in);
// Writes render_report_html(in) atomically. Throws naming the path.
void write_report_html(const std::string& path, const ReportInput& in);

// Text escaped for HTML element content and attribute values.
std::string html_escape(const std::string& s);

}  // namespace moefy
