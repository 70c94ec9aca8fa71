// bench_tokenizer [TOKENIZER_JSON] [--reps N]: the time to load a Hugging Face
// tokenizer.json (default: LLaMA-3's, 9 MB and 280k merges, from
// ../shared/fixtures/tokenizers), against parsing the same bytes as JSON alone
// (nlohmann, the parser the loader uses) in the same run, so the ratio is the
// loader's own work on top of reading the file. CPU seconds of this one thread,
// so that other jobs on a shared machine do not move the figure much.
#include <algorithm>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "tokenizer/tokenizer.h"

namespace {

double cpu_now() { return double(std::clock()) / CLOCKS_PER_SEC; }

std::string slurp(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    std::ostringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
    std::string path = std::string(MOEFY_SOURCE_DIR) + "/../shared/fixtures/tokenizers/llama3-tokenizer.json";
    int reps = 5;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--reps" && i + 1 < argc) reps = std::max(1, std::atoi(argv[++i]));
        else path = a;
    }
    if (!std::filesystem::exists(path)) {
        std::fprintf(stderr, "bench_tokenizer: %s not found (pass a tokenizer.json)\n", path.c_str());
        return 1;
    }
    std::string config = path;  // x/llama3-tokenizer.json -> x/llama3-tokenizer_config.json when present
    config.replace(config.size() - 5, 5, "_config.json");
    if (!std::filesystem::exists(config)) config.clear();

    std::vector<double> load, parse;
    size_t bytes = 0;
    for (int r = 0; r < reps; ++r) {
        double t0 = cpu_now();
        const std::string text = slurp(path);
        const nlohmann::json j = nlohmann::json::parse(text);
        parse.push_back(cpu_now() - t0);
        bytes = text.size();
        t0 = cpu_now();
        auto tok = moefy::Tokenizer::from_file(path, config);
        load.push_back(cpu_now() - t0);
        if (tok->vocab_size() <= 0) return 1;
    }
    const double l = median(load), p = median(parse);
    fmt::print("tokenizer {} ({:.1f} MB), median of {} (CPU s, one thread)\n", path, double(bytes) / 1e6, reps);
    fmt::print("| | CPU s | x JSON parse |\n|---|---|---|\n");
    fmt::print("| read + JSON parse | {:.3f} | 1.00 |\n", p);
    fmt::print("| Tokenizer::from_file | {:.3f} | **{:.2f}** |\n", l, p > 0 ? l / p : 0.0);
    return 0;
}
