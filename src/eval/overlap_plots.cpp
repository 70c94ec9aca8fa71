#include "eval/overlap_plots.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>

#include "common/error.h"

namespace moefy {

namespace {

constexpr Rgb kWhite{255, 255, 255}, kBlack{0, 0, 0}, kGrey{110, 110, 110};
constexpr int kTitleH = 22;   // title band at the top
constexpr int kLabelPad = 4;  // gap between a label and what it names
constexpr int kBarW = 18;     // colour bar width

// Label every `step`-th of `n` slots `slot` pixels wide so that labels of `maxw` pixels do not touch.
int label_step(int slot, int maxw) { return std::max(1, (maxw + 3 + slot - 1) / slot); }

// Black or white, whichever reads better on `bg`.
Rgb ink_on(Rgb bg) { return 0.299 * bg.r + 0.587 * bg.g + 0.114 * bg.b > 140 ? kBlack : kWhite; }

// Vertical colour bar at (x, y), `h` pixels tall, value 1 at the top; `colour(t)` for t in [0, 1].
template <typename F>
void colour_bar(Image& img, int x, int y, int h, F colour) {
    for (int i = 0; i < h; ++i) img.fill_rect(x, y + i, x + kBarW, y + i + 1, colour(1.0 - (i + 0.5) / h));
}

}  // namespace

Rgb viridis(double t) {
    // Samples of matplotlib's viridis at t = 0, 1/8, ..., 1, linearly interpolated.
    static constexpr double k[9][3] = {{68, 1, 84},    {71, 44, 122},  {59, 81, 139},  {44, 113, 142}, {33, 144, 141},
                                       {39, 173, 129}, {92, 200, 99},  {170, 220, 50}, {253, 231, 37}};
    if (!(t > 0)) t = 0;  // also maps NaN to 0
    if (t > 1) t = 1;
    const double x = t * 8;
    const int i = std::min(int(x), 7);
    const double f = x - i;
    auto mix = [&](int c) { return uint8_t(std::lround(k[i][c] + (k[i + 1][c] - k[i][c]) * f)); };
    return {mix(0), mix(1), mix(2)};
}

// ---------------------------------------------------------------------------------------------
// Overlap rate heatmap

HeatmapLayout overlap_rate_layout(int E) {
    HeatmapLayout l;
    l.cell = std::clamp(512 / std::max(E, 1), 4, 48);
    l.x0 = text_width(std::to_string(std::max(E - 1, 0))) + 2 * kLabelPad + 4;
    l.y0 = kTitleH;
    return l;
}

Image render_overlap_rate(const OverlapStats& st, int layer) {
    const int E = st.num_experts();
    if (E < 1) fail("overlap plot: layer {} has no experts", layer);
    const HeatmapLayout lo = overlap_rate_layout(E);
    const int grid = lo.cell * E;
    const int bar_x = lo.x0 + grid + 16;
    const int width = bar_x + kBarW + kLabelPad + text_width("1.0") + 8;
    const int height = lo.y0 + grid + 8 + 8 + 12;
    Image img(width, std::max(height, lo.y0 + 60), kWhite);
    img.draw_text(lo.x0, 7, fmt::format("layer {} overlap rate", layer), kBlack);

    // Cells, with the rate in percent when a cell is wide enough for three digits.
    const bool values = lo.cell >= text_width("100") + 4;
    for (int i = 0; i < E; ++i)
        for (int j = 0; j < E; ++j) {
            const Rgb c = viridis(st.rate[size_t(i)][size_t(j)]);
            const int x = lo.x0 + j * lo.cell, y = lo.y0 + i * lo.cell;
            img.fill_rect(x, y, x + lo.cell, y + lo.cell, c);
            if (values) {
                const std::string v = std::to_string(int(std::lround(100 * st.rate[size_t(i)][size_t(j)])));
                img.draw_text(x + (lo.cell - text_width(v)) / 2, y + (lo.cell - 7) / 2, v, ink_on(c));
            }
        }

    // Expert ids: rows on the left, columns below.
    const int step = label_step(lo.cell, std::max(8, text_width(std::to_string(E - 1))));
    for (int e = 0; e < E; e += step) {
        const std::string s = std::to_string(e);
        img.draw_text(lo.x0 - kLabelPad - text_width(s), lo.y0 + e * lo.cell + (lo.cell - 7) / 2, s, kBlack);
        img.draw_text(lo.x0 + e * lo.cell + (lo.cell - text_width(s)) / 2, lo.y0 + grid + kLabelPad, s, kBlack);
    }

    colour_bar(img, bar_x, lo.y0, grid, viridis);
    img.draw_text(bar_x + kBarW + kLabelPad, lo.y0, "1.0", kBlack);
    img.draw_text(bar_x + kBarW + kLabelPad, lo.y0 + grid - 7, "0.0", kBlack);
    return img;
}

// ---------------------------------------------------------------------------------------------
// Overlap count bars

BarLayout overlap_count_layout(int E) {
    BarLayout l;
    l.bar = std::clamp(480 / std::max(E, 1), 3, 40);
    l.gap = std::max(1, l.bar / 4);
    l.x0 = 6 * 7 + 2 * kLabelPad;  // room for a 7-digit count
    l.height = 240;
    l.base = kTitleH + l.height;
    return l;
}

Image render_overlap_count(const OverlapStats& st, int layer) {
    const int E = st.num_experts();
    if (E < 1) fail("overlap plot: layer {} has no experts", layer);
    const BarLayout lo = overlap_count_layout(E);
    const int plot_w = E * (lo.bar + lo.gap) + lo.gap;
    const int bar_x = lo.x0 + plot_w + 16;
    const std::string top_r = fmt::format("r={}", E);
    const int width = bar_x + kBarW + kLabelPad + text_width(top_r) + 8;
    Image img(width, lo.base + 1 + kLabelPad + 8 + 8, kWhite);
    img.draw_text(lo.x0, 7, fmt::format("layer {} overlap count", layer), kBlack);

    int most = 1;
    for (int s : st.sizes) most = std::max(most, s);
    // r = 1 (neurons only this expert uses) at the bottom of each bar.
    auto colour_of_r = [&](int r) { return viridis(E > 1 ? double(r - 1) / (E - 1) : 0.0); };
    for (int e = 0; e < E; ++e) {
        const int x = lo.x0 + lo.gap + e * (lo.bar + lo.gap);
        long cum = 0;
        for (int r = 1; r <= E; ++r) {
            const long lo_c = cum;
            cum += st.count[size_t(e)][size_t(r - 1)];
            // Segment ends from the cumulative count, so rounding never leaves gaps.
            const int y_hi = lo.base - int(std::lround(double(cum) * lo.height / most));
            const int y_lo = lo.base - int(std::lround(double(lo_c) * lo.height / most));
            img.fill_rect(x, y_hi, x + lo.bar, y_lo, colour_of_r(r));
        }
    }

    // Axes and labels: 0 and the largest expert size on y, expert ids on x.
    img.fill_rect(lo.x0 - 1, lo.base - lo.height, lo.x0, lo.base + 1, kGrey);
    img.fill_rect(lo.x0 - 1, lo.base, lo.x0 + plot_w, lo.base + 1, kGrey);
    const std::string ms = std::to_string(most);
    img.draw_text(lo.x0 - kLabelPad - text_width(ms), lo.base - lo.height, ms, kBlack);
    img.draw_text(lo.x0 - kLabelPad - text_width("0"), lo.base - 7, "0", kBlack);
    const int step = label_step(lo.bar + lo.gap, text_width(std::to_string(E - 1)));
    for (int e = 0; e < E; e += step) {
        const std::string s = std::to_string(e);
        const int x = lo.x0 + lo.gap + e * (lo.bar + lo.gap);
        img.draw_text(x + (lo.bar - text_width(s)) / 2, lo.base + 1 + kLabelPad, s, kBlack);
    }

    // Discrete colour bar for r = 1..E, E at the top.
    for (int r = 1; r <= E; ++r)
        img.fill_rect(bar_x, lo.base - int(std::lround(double(r) * lo.height / E)), bar_x + kBarW,
                      lo.base - int(std::lround(double(r - 1) * lo.height / E)), colour_of_r(r));
    img.draw_text(bar_x + kBarW + kLabelPad, lo.base - 7, "r=1", kBlack);
    if (E > 1) img.draw_text(bar_x + kBarW + kLabelPad, lo.base - lo.height, top_r, kBlack);
    return img;
}

// ---------------------------------------------------------------------------------------------

void write_overlap_plots(const ExpertPlan& plan, const std::string& dir) {
    namespace fs = std::filesystem;
    std::error_code ec;
    for (const char* sub : {"overlap_rate", "overlap_count"}) {
        fs::create_directories(fs::path(dir) / sub, ec);
        if (ec) fail("{}/{}: cannot create directory: {}", dir, sub, ec.message());
    }
    std::string totals;
    for (size_t l = 0; l < plan.layers.size(); ++l) {
        const LayerPlan& lp = plan.layers[l];
        const OverlapStats st = overlap_stats(lp.experts, plan.intermediate_size);
        write_png(fmt::format("{}/overlap_rate/overlap_rate_layer{}.png", dir, l), render_overlap_rate(st, int(l)));
        write_png(fmt::format("{}/overlap_count/overlap_count_layer{}.png", dir, l), render_overlap_count(st, int(l)));
        ExpertSets all = lp.experts;
        all.insert(all.end(), lp.shared.begin(), lp.shared.end());
        totals += fmt::format("{}\n", overlap_stats(all, plan.intermediate_size).distinct_neurons);
    }
    const std::string path = dir + "/total_neurons.txt";
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f << totals;
    f.close();
    if (!f) fail("{}: write failed", path);
}

}  // namespace moefy
