// What every command shares: the command registry, the split group, the
// progress bar and the plan summary.
#include "cli/cli_common.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "split/expert_plan.h"

namespace moefy::cli {

std::vector<CommandEntry>& command_registry() {
    static std::vector<CommandEntry> r;
    return r;
}

CLI::App* split_group(CLI::App& app) {
    for (CLI::App* s : app.get_subcommands([](CLI::App* c) { return c->get_name() == "split"; })) return s;
    CLI::App* s = app.add_subcommand("split", "Split every FFN into experts and write an expert plan (JSON)");
    s->require_subcommand(1);
    return s;
}

static double now_s() {
    using namespace std::chrono;
    return duration<double>(steady_clock::now().time_since_epoch()).count();
}

ProgressBar::ProgressBar(std::string label) : label_(std::move(label)), start_(now_s()), tty_(isatty(2)) {}
ProgressBar::~ProgressBar() { finish(); }

void ProgressBar::update(double done, double total, const std::string& unit) {
    const double t = now_s();
    last_update_ = t;
    // A terminal gets a bar redrawn in place; a log (redirect, pipe) gets a plain
    // line at most every kLogInterval seconds, so a long run still shows progress
    // and ETA and a short one prints nothing.
    if (tty_ ? (t - last_draw_ < 0.1 && done < total) : (t - (last_draw_ < 0 ? start_ : last_draw_) < kLogInterval))
        return;
    last_draw_ = t;
    const double frac = total > 0 ? std::min(1.0, done / total) : 0.0;
    const double el = t - start_;
    const double eta = frac > 0 ? el * (1 - frac) / frac : 0;
    if (tty_) {
        const int width = 30, fill = int(frac * width);
        std::fprintf(stderr, "\r%s [%.*s%*s] %5.1f%% %.0f/%.0f %s  %.0fs elapsed, ETA %.0fs   ", label_.c_str(), fill,
                     "##############################", width - fill, "", 100 * frac, done, total, unit.c_str(), el, eta);
    } else {
        std::fprintf(stderr, "%s: %5.1f%% %.0f/%.0f %s, %.0fs elapsed, ETA %.0fs\n", label_.c_str(), 100 * frac, done, total,
                     unit.c_str(), el, eta);
    }
    std::fflush(stderr);
    drawn_ = true;
}

void ProgressBar::finish() {
    if (drawn_) {
        if (tty_)
            std::fprintf(stderr, "\n");
        else
            std::fprintf(stderr, "%s: done in %.0fs\n", label_.c_str(), last_update_ - start_);
    }
    drawn_ = false;
}

std::string bundled_file(const std::string& rel) {
    namespace fs = std::filesystem;
    std::error_code ec;
    const fs::path exe_dir = fs::read_symlink("/proc/self/exe", ec).parent_path();
    if (ec) return "";
    const fs::path installed = exe_dir / ".." / "share" / "moefy" / rel;
    if (fs::exists(installed)) return installed.lexically_normal().string();
    // Run from the build directory: the source tree is the one CMake configured it from.
    std::ifstream cache(exe_dir / "CMakeCache.txt");
    const std::string key = "moefy_SOURCE_DIR:STATIC=";
    for (std::string line; std::getline(cache, line);)
        if (line.compare(0, key.size(), key) == 0) {
            const fs::path source = fs::path(line.substr(key.size())) / rel;
            return fs::exists(source) ? source.string() : "";
        }
    return "";
}

void print_plan_summary(const ExpertPlan& p, const std::string& out) {
    auto widths = [&](const LayerPlan& l) {
        size_t lo = SIZE_MAX, hi = 0;
        for (auto& e : l.experts) lo = std::min(lo, e.size()), hi = std::max(hi, e.size());
        return lo == hi ? fmt::format("{}", lo) : fmt::format("{}..{}", lo, hi);
    };
    fmt::print("wrote {}: method {}, {} layers x {} experts of width {}{}\n", out, p.method, p.num_layers, p.num_experts(),
               widths(p.layers[0]), p.num_shared() ? fmt::format(", {} shared", p.num_shared()) : "");
}

}  // namespace moefy::cli
