// The HTML report: a table and hand-drawn SVG plots (grouped bars and
// heatmaps), nothing that needs a script or a network to display.
#include "eval/report.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "eval/overlap_plots.h"
#include "io/output_dir.h"
#include "split/gradient_split.h"

namespace moefy {

std::string html_escape(const std::string& s) {
    std::string o;
    o.reserve(s.size());
    for (char c : s) {
        switch (c) {
            case '&': o += "&amp;"; break;
            case '<': o += "&lt;"; break;
            case '>': o += "&gt;"; break;
            case '"': o += "&quot;"; break;
            case '\'': o += "&#39;"; break;
            default: o += c;
        }
    }
    return o;
}

namespace {

// Categorical colours for experts (Tableau 10).
const char* const kPalette[] = {"#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
                                "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"};
const char* const kSharedColor = "#555555";

std::string hex(Rgb c) { return fmt::format("#{:02x}{:02x}{:02x}", c.r, c.g, c.b); }

// Plot area inside an SVG of width W, height H: margins for axes and labels.
struct Frame {
    double W = 760, H = 260;
    double left = 56, right = 16, top = 28, bottom = 40;
    double x0() const { return left; }
    double x1() const { return W - right; }
    double y0() const { return H - bottom; }  // baseline (value 0)
    double y1() const { return top; }
    double pw() const { return x1() - x0(); }
    double ph() const { return y0() - y1(); }
};

std::string svg_open(const std::string& name, double W, double H, const std::string& title) {
    return fmt::format(
        "<svg class=\"plot\" data-plot=\"{}\" role=\"img\" width=\"{:.0f}\" height=\"{:.0f}\" viewBox=\"0 0 {:.0f} {:.0f}\">"
        "<title>{}</title>\n",
        html_escape(name), W, H, W, H, html_escape(title));
}

std::string text(double x, double y, const std::string& s, const char* anchor = "middle", const char* cls = "lbl") {
    return fmt::format("<text class=\"{}\" x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"{}\">{}</text>", cls, x, y, anchor, html_escape(s));
}

std::string mark(double x, double y, double w, double h, const std::string& fill, const std::string& tip) {
    return fmt::format("<rect class=\"mark\" x=\"{:.2f}\" y=\"{:.2f}\" width=\"{:.2f}\" height=\"{:.2f}\" fill=\"{}\"><title>{}</title></rect>",
                       x, y, std::max(w, 0.5), std::max(h, 0.5), fill, html_escape(tip));
}

// A "nice" upper bound for an axis: 1, 2 or 5 times a power of ten, >= v.
double nice_max(double v) {
    if (!(v > 0) || !std::isfinite(v)) return 1.0;
    const double p = std::pow(10.0, std::floor(std::log10(v)));
    for (double m : {1.0, 2.0, 5.0, 10.0})
        if (m * p >= v * (1 - 1e-12)) return m * p;
    return 10 * p;
}

std::string fmt_num(double v) { return fmt::format("{:.4g}", v); }

// Axes, y ticks at 0, max/2, max, and one x label per group (thinned when crowded).
std::string axes(const Frame& f, double ymax, int groups, const std::vector<std::string>& glabels, const std::string& ylabel) {
    std::string s;
    s += fmt::format("<line class=\"axis\" x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\"/>", f.x0(), f.y0(), f.x1(), f.y0());
    s += fmt::format("<line class=\"axis\" x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\"/>", f.x0(), f.y0(), f.x0(), f.y1());
    for (int i = 0; i <= 2; ++i) {
        const double v = ymax * i / 2, y = f.y0() - f.ph() * i / 2;
        s += fmt::format("<line class=\"grid\" x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\"/>", f.x0(), y, f.x1(), y);
        s += text(f.x0() - 6, y + 4, fmt_num(v), "end");
    }
    const int every = std::max(1, groups / 24);
    const double gw = f.pw() / std::max(1, groups);
    for (int g = 0; g < groups; g += every) s += text(f.x0() + gw * (g + 0.5), f.y0() + 16, glabels[size_t(g)]);
    s += fmt::format("<text class=\"lbl\" x=\"14\" y=\"{:.1f}\" text-anchor=\"middle\" transform=\"rotate(-90 14 {:.1f})\">{}</text>",
                     (f.y0() + f.y1()) / 2, (f.y0() + f.y1()) / 2, html_escape(ylabel));
    s += text((f.x0() + f.x1()) / 2, f.H - 6, "layer");
    return s;
}

// Grouped bars: groups × bars per group; value[g][b], colour[g][b], tip[g][b].
struct Bars {
    std::vector<std::string> group_labels;
    std::vector<std::vector<double>> value;
    std::vector<std::vector<std::string>> color, tip;
};

std::string grouped_bars(const std::string& name, const std::string& title, const std::string& ylabel, const Bars& b,
                         const std::string& legend_svg) {
    Frame f;
    const int G = int(b.value.size());
    double vmax = 0;
    for (const auto& g : b.value)
        for (double v : g) vmax = std::max(vmax, v);
    const double ymax = nice_max(vmax);
    std::string s = svg_open(name, f.W, f.H, title);
    s += text(f.W / 2, 16, title, "middle", "ttl");
    s += axes(f, ymax, G, b.group_labels, ylabel);
    const double gw = f.pw() / std::max(1, G);
    for (int g = 0; g < G; ++g) {
        const int n = int(b.value[size_t(g)].size());
        const double bw = gw * 0.85 / std::max(1, n);
        for (int i = 0; i < n; ++i) {
            const double v = std::max(0.0, b.value[size_t(g)][size_t(i)]);
            const double h = f.ph() * v / ymax;
            s += mark(f.x0() + gw * g + gw * 0.075 + bw * i, f.y0() - h, bw, h, b.color[size_t(g)][size_t(i)],
                      b.tip[size_t(g)][size_t(i)]);
        }
        s += "\n";
    }
    s += legend_svg;
    s += "</svg>\n";
    return s;
}

std::string legend(const std::vector<std::pair<std::string, std::string>>& items, double x, double y) {
    std::string s;
    for (const auto& [label, color] : items) {
        s += fmt::format("<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"10\" height=\"10\" fill=\"{}\"/>", x, y - 9, color);
        s += text(x + 14, y, label, "start");
        x += 22 + 7.0 * double(label.size());
    }
    return s;
}

// ---- the plots ---------------------------------------------------------------------

std::string widths_plot(const ExpertPlan& p) {
    Bars b;
    for (size_t l = 0; l < p.layers.size(); ++l) {
        const LayerPlan& lp = p.layers[l];
        b.group_labels.push_back(std::to_string(l));
        std::vector<double> v;
        std::vector<std::string> c, t;
        for (size_t e = 0; e < lp.experts.size(); ++e) {
            v.push_back(double(lp.experts[e].size()));
            c.push_back(kPalette[e % 10]);
            t.push_back(fmt::format("layer {}, expert {}: {} neurons", l, e, lp.experts[e].size()));
        }
        for (size_t r = 0; r < lp.shared.size(); ++r) {
            v.push_back(double(lp.shared[r].size()));
            c.push_back(kSharedColor);
            t.push_back(fmt::format("layer {}, shared expert {}: {} neurons", l, r, lp.shared[r].size()));
        }
        b.value.push_back(v);
        b.color.push_back(c);
        b.tip.push_back(t);
    }
    std::string leg;
    if (p.num_shared() > 0) leg = legend({{"routed (one colour per expert)", kPalette[0]}, {"shared", kSharedColor}}, 70, 44);
    return grouped_bars("widths", "Expert widths", "neurons", b, leg);
}

std::string ffn_error_plot(const ReferenceComparison& c) {
    Bars b;
    for (size_t i = 0; i < c.moe.layers.size(); ++i) {
        const LayerQuality& l = c.moe.layers[i];
        b.group_labels.push_back(std::to_string(l.layer));
        std::vector<double> v = {l.rel_error()};
        std::vector<std::string> col = {kPalette[0]};
        std::vector<std::string> tip = {fmt::format("layer {}: FFN error {:.4f} (router)", l.layer, l.rel_error())};
        if (c.oracle) {
            const double e = c.oracle->layers[i].rel_error();
            v.push_back(e);
            col.push_back(kPalette[1]);
            tip.push_back(fmt::format("layer {}: FFN error {:.4f} (oracle routing)", l.layer, e));
        }
        b.value.push_back(v);
        b.color.push_back(col);
        b.tip.push_back(tip);
    }
    std::vector<std::pair<std::string, std::string>> items = {{"router", kPalette[0]}};
    if (c.oracle) items.push_back({"oracle", kPalette[1]});
    return grouped_bars("ffn_error", "FFN output error per layer: sum |moe - dense|^2 / sum |dense|^2", "relative error", b,
                        legend(items, 70, 44));
}

std::string load_plot(const ReferenceComparison& c) {
    const auto& layers = c.moe.layers;
    const int L = int(layers.size());
    const int E = L ? int(layers[0].counts.size()) : 0;
    const double cell_w = std::clamp(560.0 / std::max(1, E), 8.0, 56.0);
    const double cell_h = std::clamp(420.0 / std::max(1, L), 6.0, 24.0);
    const double left = 70, top = 36, W = left + cell_w * E + 90, H = top + cell_h * L + 40;
    double fmax = 0;
    for (const LayerQuality& l : layers)
        for (double f : l.load()) fmax = std::max(fmax, f);
    std::string s = svg_open("load", W, H, "Expert load");
    s += text(W / 2, 16, "Expert load: fraction of tokens per expert", "middle", "ttl");
    for (int i = 0; i < L; ++i) {
        const LayerQuality& l = layers[size_t(i)];
        const std::vector<double> f = l.load();
        const double y = top + cell_h * i;
        s += text(left - 6, y + cell_h * 0.5 + 4, fmt::format("layer {}", l.layer), "end");
        for (int e = 0; e < E; ++e) {
            const double v = e < int(f.size()) ? f[size_t(e)] : 0.0;
            const Rgb col = viridis(fmax > 0 ? v / fmax : 0.0);
            s += mark(left + cell_w * e, y, cell_w - 1, cell_h - 1, hex(col),
                      fmt::format("layer {}, expert {}: {:.3f} of tokens", l.layer, e, v));
            if (cell_w >= 34 && cell_h >= 14) {
                const bool dark = 0.299 * col.r + 0.587 * col.g + 0.114 * col.b < 140;
                s += fmt::format("<text class=\"cell{}\" x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\">{:.2f}</text>",
                                 dark ? " light" : "", left + cell_w * (e + 0.5), y + cell_h * 0.5 + 4, v);
            }
        }
        s += text(left + cell_w * E + 8, y + cell_h * 0.5 + 4, fmt::format("cv {:.2f}", l.load_cv()), "start");
        s += "\n";
    }
    const int every = std::max(1, E / 16);
    for (int e = 0; e < E; e += every) s += text(left + cell_w * (e + 0.5), top + cell_h * L + 16, std::to_string(e));
    s += text(left + cell_w * E / 2, H - 6, "expert");
    s += "</svg>\n";
    return s;
}

std::string overlap_plot(const OverlapStats& st, int layer) {
    const int E = st.num_experts();
    const double cell = std::clamp(240.0 / std::max(1, E), 4.0, 24.0);
    const double left = 30, top = 30, W = left + cell * E + 10, H = top + cell * E + 10;
    std::string s = svg_open(fmt::format("overlap-{}", layer), W, H, fmt::format("Overlap of layer {}", layer));
    s += text(W / 2, 16, fmt::format("layer {}", layer), "middle", "ttl");
    for (int i = 0; i < E; ++i)
        for (int j = 0; j < E; ++j) {
            const double r = st.rate[size_t(i)][size_t(j)];
            s += mark(left + cell * j, top + cell * i, cell - 0.5, cell - 0.5, hex(viridis(r)),
                      fmt::format("experts {} and {}: overlap {:.3f}", i, j, r));
        }
    s += "</svg>\n";
    return s;
}

std::string scatter_plot(const ReportScatter& sc) {
    Frame f;
    f.H = 320;
    double xmax = 0, ymin = INFINITY, ymax = 0;
    for (const auto& p : sc.points) xmax = std::max(xmax, p.x), ymin = std::min(ymin, p.y), ymax = std::max(ymax, p.y);
    if (sc.y_line > 0) ymin = std::min(ymin, sc.y_line), ymax = std::max(ymax, sc.y_line);
    xmax = nice_max(xmax);
    const double y0v = std::isfinite(ymin) ? std::floor(ymin * 10) / 10 : 0.0;
    const double y1v = std::max(y0v + 0.1, std::ceil(ymax * 10) / 10);
    auto X = [&](double x) { return f.x0() + f.pw() * x / xmax; };
    auto Y = [&](double y) { return f.y0() - f.ph() * (y - y0v) / (y1v - y0v); };
    std::string s = svg_open("pareto", f.W, f.H, sc.title);
    s += text(f.W / 2, 16, sc.title, "middle", "ttl");
    for (int i = 0; i <= 4; ++i) {
        const double yv = y0v + (y1v - y0v) * i / 4, xv = xmax * i / 4;
        s += fmt::format("<line class=\"grid\" x1=\"{:.1f}\" x2=\"{:.1f}\" y1=\"{:.1f}\" y2=\"{:.1f}\"/>", f.x0(), f.x1(), Y(yv), Y(yv));
        s += text(f.x0() - 4, Y(yv) + 4, fmt::format("{:.2f}", yv), "end");
        s += text(X(xv), f.y0() + 14, fmt::format("{:.3g}", xv));
    }
    s += fmt::format("<line class=\"axis\" x1=\"{:.1f}\" x2=\"{:.1f}\" y1=\"{:.1f}\" y2=\"{:.1f}\"/>", f.x0(), f.x1(), f.y0(), f.y0());
    s += fmt::format("<line class=\"axis\" x1=\"{:.1f}\" x2=\"{:.1f}\" y1=\"{:.1f}\" y2=\"{:.1f}\"/>", f.x0(), f.x0(), f.y0(), f.y1());
    s += text(f.x0() + f.pw() / 2, f.H - 6, sc.x_label);
    s += fmt::format("<text class=\"lbl\" transform=\"translate(14 {:.1f}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
                     f.y0() - f.ph() / 2, html_escape(sc.y_label));
    if (sc.y_line > 0)
        s += fmt::format("<line x1=\"{:.1f}\" x2=\"{:.1f}\" y1=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#c0392b\" stroke-dasharray=\"4 3\"/>",
                         f.x0(), f.x1(), Y(sc.y_line), Y(sc.y_line));
    std::vector<std::pair<double, double>> front;
    for (const auto& p : sc.points)
        if (p.front) front.push_back({p.x, p.y});
    std::sort(front.begin(), front.end());
    if (front.size() > 1) {
        std::string pts;
        for (auto [x, y] : front) pts += fmt::format("{:.1f},{:.1f} ", X(x), Y(y));
        s += fmt::format("<polyline points=\"{}\" fill=\"none\" stroke=\"#2c7fb8\" stroke-width=\"1.5\"/>", pts);
    }
    for (const auto& p : sc.points)
        s += fmt::format("<circle class=\"mark\" cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"{}\" fill=\"{}\" stroke=\"#2c7fb8\"><title>{}</title></circle>",
                         X(p.x), Y(std::min(p.y, y1v)), p.chosen ? 6 : 3.5, p.front ? "#2c7fb8" : "#fff", html_escape(p.label));
    s += "</svg>\n";
    return s;
}

bool routed_experts_overlap(const ExpertPlan& p) {
    for (const LayerPlan& lp : p.layers) {
        size_t total = 0;
        for (const auto& e : lp.experts) total += e.size();
        if (overlap_stats(lp.experts, p.intermediate_size).distinct_neurons < int(total)) return true;
    }
    return false;
}

const char* const kCss = R"(
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 980px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
table { border-collapse: collapse; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
dl { display: grid; grid-template-columns: max-content auto; gap: 2px 14px; font-size: 13px; }
dt { color: #666; } dd { margin: 0; font-family: monospace; }
svg.plot { display: block; margin: 8px 0; background: #fff; }
svg .lbl { font-size: 11px; fill: #333; } svg .ttl { font-size: 13px; font-weight: 600; fill: #222; }
svg .cell { font-size: 10px; fill: #111; } svg .cell.light { fill: #fff; }
svg .axis { stroke: #333; stroke-width: 1; } svg .grid { stroke: #e5e5e5; stroke-width: 1; }
.small { display: flex; flex-wrap: wrap; gap: 6px; }
p.note { font-size: 13px; color: #555; }
)";

}  // namespace

std::string render_report_html(const ReportInput& in) {
    std::string h;
    h += "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n";
    h += fmt::format("<title>{}</title>\n<style>{}</style>\n</head>\n<body>\n", html_escape(in.title), kCss);
    h += fmt::format("<h1>{}</h1>\n", html_escape(in.title));

    if (!in.summary.empty()) {
        h += "<table id=\"summary\">\n<tr>";
        for (const auto& [k, v] : in.summary) h += fmt::format("<th>{}</th>", html_escape(k));
        h += "</tr>\n<tr>";
        for (const auto& [k, v] : in.summary) h += fmt::format("<td>{}</td>", html_escape(v));
        h += "</tr>\n</table>\n";
    }
    if (!in.details.empty()) {
        h += "<dl>\n";
        for (const auto& [k, v] : in.details) h += fmt::format("<dt>{}</dt><dd>{}</dd>\n", html_escape(k), html_escape(v));
        h += "</dl>\n";
    }

    if (in.scatter) {
        h += fmt::format("<h2>{}</h2>\n", html_escape(in.scatter->title));
        if (!in.scatter_note.empty()) h += fmt::format("<p class=\"note\">{}</p>\n", html_escape(in.scatter_note));
        h += scatter_plot(*in.scatter);
    }
    if (in.plan) {
        h += "<h2>Expert widths</h2>\n";
        h += "<p class=\"note\">Neurons per routed expert in every layer";
        h += in.plan->num_shared() > 0 ? "; shared (always active) experts in grey.</p>\n" : ".</p>\n";
        h += widths_plot(*in.plan);
    }
    if (in.eval) {
        h += "<h2>FFN output error</h2>\n<p class=\"note\">Per MoE layer, on the MoE model's own FFN inputs: "
             "how much of the dense FFN output the routed experts miss.</p>\n";
        h += ffn_error_plot(*in.eval);
        h += "<h2>Expert load</h2>\n<p class=\"note\">Fraction of tokens that chose each expert (even routing: top-k / "
             "experts each); cv = standard deviation / mean over the layer's experts.</p>\n";
        h += load_plot(*in.eval);
    }
    if (in.plan && routed_experts_overlap(*in.plan)) {
        h += "<h2>Expert overlap</h2>\n<p class=\"note\">Per layer, |S<sub>i</sub> &#8745; S<sub>j</sub>| / "
             "|S<sub>i</sub> &#8746; S<sub>j</sub>| for every pair of routed experts (dark: disjoint, yellow: identical).</p>\n";
        h += "<div class=\"small\">\n";
        for (size_t l = 0; l < in.plan->layers.size(); ++l)
            h += overlap_plot(overlap_stats(in.plan->layers[l].experts, in.plan->intermediate_size), int(l));
        h += "</div>\n";
    }
    h += "</body>\n</html>\n";
    return h;
}

void write_report_html(const std::string& path, const ReportInput& in) { write_file_atomic(path, render_report_html(in)); }

}  // namespace moefy
