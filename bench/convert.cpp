// bench_convert: `moefy convert` against `cp -r` of the same model directory, in
// the same run, on a synthetic BF16 checkpoint with LLaMA-7B layer shapes.
//
//   bench_convert [--layers 6] [--experts 8] [--reps 3] [--dir DIR] [--cli PATH] [--keep]
//
// Both read a warm page cache and write through the page cache (neither syncs),
// so the ratio is what the converter adds over a plain copy: the row/column
// gathers, the router, and the bookkeeping. Peak RSS is the converter's own
// (wait4 rusage of the child). Targets: time <= 1.3 x cp, peak RSS < 1 GB.
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/rng.h"
#include "io/safetensors.h"
#include "model/checkpoint.h"
#include "model/tensor_names.h"
#include "split/random_split.h"

#include "bench_util.h"

namespace fs = std::filesystem;
using namespace moefy;

namespace {

struct Args {
    int layers = 6, experts = 8, reps = 3;
    std::string dir, cli;
    bool keep = false;
};

std::string exe_dir() { return fs::canonical("/proc/self/exe").parent_path().string(); }

// LLaMA-7B layer shapes (hidden 4096, intermediate 11008, 32 heads) with a small
// vocabulary, so that the FFNs dominate the bytes as they do in a real 7B.
void write_model(const std::string& dir, const Args& a) {
    bench::Synth s;
    s.V = 2048, s.H = 4096, s.I = 11008, s.L = a.layers, s.heads = 32, s.kv = 32, s.max_pos = 4096;
    bench::write_synthetic(dir, s);
}

size_t dir_bytes(const std::string& d) {
    size_t n = 0;
    for (auto& e : fs::recursive_directory_iterator(d))
        if (e.is_regular_file()) n += e.file_size();
    return n;
}

}  // namespace

int main(int argc, char** argv) {
    Args a;
    a.dir = exe_dir();
    a.cli = exe_dir() + "/moefy";
    for (int i = 1; i < argc; ++i) {
        std::string s = argv[i];
        auto next = [&]() -> std::string {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "%s needs a value\n", s.c_str());
                std::exit(2);
            }
            return argv[++i];
        };
        if (s == "--layers") a.layers = std::stoi(next());
        else if (s == "--experts") a.experts = std::stoi(next());
        else if (s == "--reps") a.reps = std::stoi(next());
        else if (s == "--dir") a.dir = next();
        else if (s == "--cli") a.cli = next();
        else if (s == "--keep") a.keep = true;
        else {
            std::fprintf(stderr, "usage: bench_convert [--layers 6] [--experts 8] [--reps 3] [--dir DIR] [--cli PATH] [--keep]\n");
            return 2;
        }
    }
    if (!fs::exists(a.cli)) {
        std::fprintf(stderr, "bench_convert: CLI not found at %s (build the 'moefy' target, or pass --cli)\n", a.cli.c_str());
        return 1;
    }
    std::string tmpl = a.dir + "/bench-convert-XXXXXX";
    if (!mkdtemp(tmpl.data())) {
        std::perror("mkdtemp");
        return 1;
    }
    const std::string root = tmpl, src = root + "/dense", plan = root + "/plan.json";
    int rc = 0;
    try {
        std::printf("bench_convert: writing a synthetic BF16 LLaMA-7B-shaped model, %d layers, in %s\n", a.layers, root.c_str());
        write_model(src, a);
        {
            Checkpoint ck = Checkpoint::open(src);
            random_split(ck, a.experts, 0).save(plan);
        }
        const size_t bytes = dir_bytes(src);
        std::printf("model: %.2f GB; plan: random, %d experts per layer\n", double(bytes) / 1e9, a.experts);
        sync();
        bench::warm_page_cache(src);

        struct Variant {
            const char* name;
            std::vector<std::string> extra;
        };
        const std::vector<Variant> variants = {{"llama-moe", {"--format", "llama-moe"}},
                                               {"mixtral (scale folded)", {"--format", "mixtral", "--top-k", "2"}}};
        std::vector<double> cp_t, cp_c;
        std::vector<std::vector<double>> cv_t(variants.size()), cv_c(variants.size());
        std::vector<long> rss(variants.size(), 0);
        for (int r = 0; r < a.reps; ++r) {
            const std::string cp_out = root + "/cp";
            sync();
            bench::ChildRun c = bench::run_child({"/bin/cp", "-r", src, cp_out}, false);
            if (c.status != 0) throw Error("cp failed");
            std::printf("  rep %d: cp -r %.2f s (CPU %.2f)", r + 1, c.seconds, c.cpu);
            cp_t.push_back(c.seconds);
            cp_c.push_back(c.cpu);
            fs::remove_all(cp_out);
            for (size_t v = 0; v < variants.size(); ++v) {
                const std::string out = root + "/moe";
                std::vector<std::string> cmd = {a.cli, "convert", "--model", src, "--plan", plan, "--out", out};
                cmd.insert(cmd.end(), variants[v].extra.begin(), variants[v].extra.end());
                sync();
                bench::ChildRun m = bench::run_child(cmd, true);
                if (m.status != 0) throw Error(fmt::format("moefy convert failed (exit {})", m.status));
                std::printf(", %s %.2f s (CPU %.2f)", variants[v].name, m.seconds, m.cpu);
                cv_t[v].push_back(m.seconds);
                cv_c[v].push_back(m.cpu);
                rss[v] = std::max(rss[v], m.max_rss_kb);
                fs::remove_all(out);
            }
            std::printf("\n");
            std::fflush(stdout);
        }
        const double cp = bench::median(cp_t), cpc = bench::median(cp_c);
        std::printf("\n%-32s %8s %7s %7s %8s %7s %10s\n", "", "wall s", "GB/s", "x cp", "CPU s", "x cp", "peak RSS");
        std::printf("%-32s %8.3f %7.2f %7.2f %8.3f %7.2f %10s\n", "cp -r", cp, double(bytes) / 1e9 / cp, 1.0, cpc, 1.0, "-");
        for (size_t v = 0; v < variants.size(); ++v) {
            const double t = bench::median(cv_t[v]), c = bench::median(cv_c[v]);
            std::printf("%-32s %8.3f %7.2f %7.2f %8.3f %7.2f %7.0f MB\n", (std::string("convert ") + variants[v].name).c_str(), t,
                        double(bytes) / 1e9 / t, t / cp, c, c / cpc, double(rss[v]) / 1024.0);
        }
        double load[3] = {0, 0, 0};
        getloadavg(load, 3);
        std::printf("\n%d reps, medians; CPU = user + sys of the child; load average %.1f on %ld cores\n", a.reps, load[0],
                    sysconf(_SC_NPROCESSORS_ONLN));
        std::printf("targets: wall <= 1.30 x cp, peak RSS < 1024 MB\n");
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_convert: %s\n", e.what());
        rc = 1;
    }
    if (!a.keep) fs::remove_all(root);
    return rc;
}
