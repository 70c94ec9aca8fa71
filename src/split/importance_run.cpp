// The importance run (split/importance_run.h).
#include "split/importance_run.h"

#include <chrono>
#include <exception>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "io/json.h"
#include "data/documents.h"
#include "io/output_dir.h"
#include "model/checkpoint.h"
#include "model/llama.h"
#include "split/expert_plan.h"
#include "tokenizer/tokenizer.h"

namespace moefy {

namespace fs = std::filesystem;

std::vector<std::string> cluster_files(const std::string& dir) {
    if (!fs::is_directory(dir)) fail("{}: not a directory (expected the output of `moefy cluster-text`)", dir);
    auto file = [&](size_t c) { return (fs::path(dir) / fmt::format("{}.jsonl", c)).string(); };
    std::vector<std::string> files;
    const std::string summary = (fs::path(dir) / "summary.json").string();
    if (fs::exists(summary)) {
        const nlohmann::json j = read_json_file(summary);
        if (!j.is_object() || !j.contains("clusters") || !json_int_in(j["clusters"], 1, 1 << 20))
            fail("{}: no field 'clusters' with a count in [1, {}]", summary, 1 << 20);
        const size_t K = j["clusters"].get<size_t>();
        for (size_t c = 0; c < K; ++c) {
            if (!fs::exists(file(c))) fail("{}: {} says {} clusters but {} is missing", dir, summary, K, file(c));
            files.push_back(file(c));
        }
    } else {
        while (fs::exists(file(files.size()))) files.push_back(file(files.size()));
        if (files.empty()) fail("{}: no cluster files (0.jsonl, 1.jsonl, ...)", dir);
    }
    return files;
}

ImportanceResult compute_importance(const Checkpoint& ck, const Tokenizer& tok, const std::string& clusters_dir,
                                    const ImportanceOptions& opt, const RankGroup& group,
                                    const ImportanceProgress& progress) {
    const auto t0 = std::chrono::steady_clock::now();
    ImportanceResult r;
    // Everything before the all-reduce is local to this rank. An error here is
    // counted by every rank before any sum, so all ranks return an error
    // (instead of the others waiting forever in the all-reduce).
    group.run_share("importance", [&] {
        const ModelConfig& c = ck.config;
        if (c.is_moe())
            fail("{}: importance is computed on the dense model, this one is {}", ck.dir, model_kind_name(c.kind));
        if (opt.ctx < 2) fail("importance: --ctx {} leaves nothing to predict (at least 2)", opt.ctx);
        const std::vector<std::string> files = cluster_files(clusters_dir);

        // Every rank tokenizes everything (cheap next to the backward) and takes its share.
        std::vector<std::vector<TokenWindow>> windows;
        size_t my_tokens = 0;
        for (const std::string& f : files) {
            windows.push_back(make_windows(read_documents(f, opt.text_field), tok, {opt.ctx, opt.max_tokens_per_cluster, true}));
            if (windows.back().empty()) fail("{}: no window of at least 2 tokens", f);
            for (size_t i = size_t(group.rank()); i < windows.back().size(); i += size_t(group.size()))
                my_tokens += windows.back()[i].size() - 1;
        }

        r.settings = opt.settings;
        r.ctx = opt.ctx;
        r.max_tokens_per_cluster = opt.max_tokens_per_cluster;
        r.model = ck.dir;
        r.data = clusters_dir;
        r.num_layers = c.num_layers;
        r.hidden_size = c.hidden_size;
        r.intermediate_size = c.intermediate_size;
        r.ffn_fingerprint = ffn_fingerprint(*ck.tensors, c);
        r.ranks = group.size();
        r.clusters.resize(files.size());

        auto model = Model::load(ck);
        Backprop bp(*model, opt.backward);
        size_t done = 0;
        for (size_t k = 0; k < files.size(); ++k) {
            ImportanceSums& s = r.clusters[k];
            s.resize(c.num_layers, c.intermediate_size);
            ImportanceAccumulator acc(s, opt.settings);
            const std::vector<TokenWindow>& ws = windows[k];
            for (size_t i = size_t(group.rank()); i < ws.size(); i += size_t(group.size())) {
                bp.run(ws[i].data(), int(ws[i].size()), &acc);
                s.tokens += int64_t(ws[i].size()) - 1;
                s.windows += 1;
                done += ws[i].size() - 1;
                if (progress) progress(done, my_tokens);
            }
        }
        });
    for (ImportanceSums& s : r.clusters) {
        group.sum(s.up.data(), s.up.size());
        group.sum(s.gate.data(), s.gate.size());
        int64_t counts[2] = {s.tokens, s.windows};
        group.sum(counts, 2);
        s.tokens = counts[0], s.windows = counts[1];
    }
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return r;
}

}  // namespace moefy
