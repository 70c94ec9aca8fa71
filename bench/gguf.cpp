// bench_gguf: `moefy convert --format gguf` against `cp` of the same weights, in
// the same run, on a synthetic BF16 checkpoint with TinyLlama-1.1B shapes
// (hidden 2048, intermediate 5632, 22 layers, 32 heads / 4 kv heads, vocab 32000).
//
//   bench_gguf [--reps 3] [--experts 8] [--dir DIR] [--cli PATH] [--keep]
//
// Variants: the MoE plan (random, 8 experts of 704) to GGUF bf16 (a gather and
// copy, as the safetensors layouts) and q8_0 (every weight converted and
// quantised: CPU bound), and the dense model to GGUF bf16 (copy_file_range) and
// q8_0. Both sides read a warm page cache and write through it (nobody syncs);
// the ratio is what the GGUF writer adds over a plain copy. Peak RSS is the child's.
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "common/error.h"
#include "model/checkpoint.h"
#include "split/random_split.h"

#include "bench_util.h"

namespace fs = std::filesystem;
using namespace moefy;

namespace {

}  // namespace

int main(int argc, char** argv) {
    int reps = 3, experts = 8;
    std::string dir = fs::canonical("/proc/self/exe").parent_path().string(), cli = dir + "/moefy";
    bool keep = false;
    for (int i = 1; i < argc; ++i) {
        const std::string s = argv[i];
        if (i + 1 < argc && s == "--reps") reps = std::stoi(argv[++i]);
        else if (i + 1 < argc && s == "--experts") experts = std::stoi(argv[++i]);
        else if (i + 1 < argc && s == "--dir") dir = argv[++i];
        else if (i + 1 < argc && s == "--cli") cli = argv[++i];
        else if (s == "--keep") keep = true;
        else {
            std::fprintf(stderr, "usage: bench_gguf [--reps 3] [--experts 8] [--dir DIR] [--cli PATH] [--keep]\n");
            return 2;
        }
    }
    std::string root = dir + "/bench-gguf-XXXXXX";
    if (!mkdtemp(root.data())) return std::perror("mkdtemp"), 1;
    const std::string src = root + "/dense", plan = root + "/plan.json";
    int rc = 0;
    try {
        bench::Synth s;  // TinyLlama-1.1B shapes
        std::printf("bench_gguf: writing a synthetic BF16 1.1B-shaped model in %s\n", root.c_str());
        bench::write_synthetic(src, s);
        // A tokenizer to embed: the demo model's (its 4096 pieces, padded to the vocabulary).
        fs::copy_file(std::string(MOEFY_SOURCE_DIR) + "/models/tinyllama-demo/tokenizer.model", src + "/tokenizer.model");
        {
            const Checkpoint ck = Checkpoint::open(src);
            random_split(ck, experts, 0).save(plan);
        }
        const size_t bytes = fs::file_size(src + "/model.safetensors");
        std::printf("weights: %.2f GB; plan: random, %d experts per layer\n", double(bytes) / 1e9, experts);
        struct Variant {
            const char* name;
            std::vector<std::string> extra;
        };
        const std::vector<Variant> variants = {
            {"MoE -> gguf bf16", {"--plan", plan, "--dtype", "same"}},
            {"MoE -> gguf q8_0", {"--plan", plan, "--dtype", "q8_0"}},
            {"dense -> gguf bf16", {"--dtype", "same"}},
            {"dense -> gguf q8_0", {"--dtype", "q8_0"}},
        };
        std::vector<double> cp_t;
        std::vector<std::vector<double>> t(variants.size()), c(variants.size());
        std::vector<long> rss(variants.size(), 0);
        std::vector<size_t> out_bytes(variants.size(), 0);
        sync();
        bench::warm_page_cache(src);
        for (int r = 0; r < reps; ++r) {
            sync();
            bench::ChildRun cp = bench::run_child({"/bin/cp", src + "/model.safetensors", root + "/copy"});
            if (cp.status != 0) throw Error("cp failed");
            cp_t.push_back(cp.seconds);
            fs::remove(root + "/copy");
            std::printf("  rep %d: cp %.2f s", r + 1, cp.seconds);
            for (size_t v = 0; v < variants.size(); ++v) {
                const std::string out = root + "/out.gguf";
                std::vector<std::string> cmd = {cli, "convert", "--model", src, "--format", "gguf", "--out", out};
                cmd.insert(cmd.end(), variants[v].extra.begin(), variants[v].extra.end());
                sync();
                const bench::ChildRun m = bench::run_child(cmd);
                if (m.status != 0) throw Error(fmt::format("moefy convert ({}) failed, exit {}", variants[v].name, m.status));
                out_bytes[v] = fs::file_size(out);
                t[v].push_back(m.seconds), c[v].push_back(m.cpu);
                rss[v] = std::max(rss[v], m.max_rss_kb);
                fs::remove(out);
                std::printf(", %s %.2f s", variants[v].name, m.seconds);
            }
            std::printf("\n");
            std::fflush(stdout);
        }
        const double cp = bench::median(cp_t);
        std::printf("\n%-22s %8s %9s %7s %8s %10s\n", "", "wall s", "out GB", "x cp", "CPU s", "peak RSS");
        std::printf("%-22s %8.3f %9.2f %7.2f %8s %10s\n", "cp", cp, double(bytes) / 1e9, 1.0, "-", "-");
        for (size_t v = 0; v < variants.size(); ++v)
            std::printf("%-22s %8.3f %9.2f %7.2f %8.2f %7.0f MB\n", variants[v].name, bench::median(t[v]), double(out_bytes[v]) / 1e9,
                        bench::median(t[v]) / cp, bench::median(c[v]), double(rss[v]) / 1024.0);
        double load[3] = {0, 0, 0};
        getloadavg(load, 3);
        std::printf("\n%d reps, medians; load average %.1f on %ld cores\n", reps, load[0], sysconf(_SC_NPROCESSORS_ONLN));
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_gguf: %s\n", e.what());
        rc = 1;
    }
    if (!keep) fs::remove_all(root);
    return rc;
}
