#pragma once
// Pictures of how the experts of a layer overlap (LLaMA-MoE §5.4, `--plots DIR`):
//   overlap_rate/overlap_rate_layer<l>.png    E x E heatmap of |Si ∩ Sj| / |Si ∪ Sj|, colour bar 0..1
//   overlap_count/overlap_count_layer<l>.png  one stacked bar per expert: its neurons split by
//                                             how many experts select them (r = 1..E, colour bar)
//   total_neurons.txt                         one line per layer: distinct neurons used
// Same file names as the reference; total_neurons.txt is rewritten, not appended (reference bug 27).
#include <string>

#include "io/png.h"
#include "split/expert_plan.h"
#include "split/gradient_split.h"

namespace moefy {

// A viridis-like colour map: t in [0, 1] (clamped) from dark purple to yellow.
Rgb viridis(double t);

// Geometry shared by the renderers and by tests that read pixels back.
struct HeatmapLayout {
    int cell = 0;        // pixels per matrix cell
    int x0 = 0, y0 = 0;  // top-left corner of cell (0, 0); cell (i, j) is row i, column j
};
HeatmapLayout overlap_rate_layout(int experts);

struct BarLayout {
    int bar = 0, gap = 0;      // bar width and the gap before each bar
    int x0 = 0, base = 0;      // left edge of the plot area, y of the zero line (first pixel below the bars)
    int height = 0;            // pixels for the largest expert
};
BarLayout overlap_count_layout(int experts);

Image render_overlap_rate(const OverlapStats& st, int layer);
Image render_overlap_count(const OverlapStats& st, int layer);

// Writes both pictures for every layer of the plan (routed experts; shared experts
// are always active and do not overlap the routed ones in a gradient plan) and
// total_neurons.txt (distinct neurons over routed and shared experts). Creates `dir`.
void write_overlap_plots(const ExpertPlan& plan, const std::string& dir);

}  // namespace moefy
