#include "data/text_cluster.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>

#include "common/error.h"
#include "io/output_dir.h"

namespace moefy {

namespace fs = std::filesystem;

// ---- output ---------------------------------------------------------------------------

void write_text_clusters(const std::string& out, bool force, const TextCorpus& corpus, const std::vector<int32_t>& assign,
                         int clusters, const nlohmann::json& summary) {
    if (assign.size() != corpus.records.size())
        fail("{}: {} assignments for {} documents", out, assign.size(), corpus.records.size());
    std::vector<std::vector<size_t>> members(static_cast<size_t>(clusters));
    for (size_t i = 0; i < assign.size(); ++i) {
        if (assign[i] < 0 || assign[i] >= clusters) fail("{}: document {} has cluster {} outside [0, {})", out, i, assign[i], clusters);
        members[size_t(assign[i])].push_back(i);
    }
    OutputDir dir(out, force);
    for (int k = 0; k < clusters; ++k) {
        const std::string path = dir.file(fmt::format("{}.jsonl", k));
        std::ofstream f(path, std::ios::binary | std::ios::trunc);
        if (!f) fail("{}: cannot create", path);
        for (size_t i : members[size_t(k)]) {
            f.write(corpus.records[i].data(), std::streamsize(corpus.records[i].size()));
            f.put('\n');
        }
        f.flush();
        if (!f) fail("{}: write failed", path);
    }
    const std::string s = summary.dump(2) + "\n";
    std::ofstream f(dir.file("summary.json"), std::ios::binary | std::ios::trunc);
    f.write(s.data(), std::streamsize(s.size()));
    f.flush();
    if (!f) fail("{}: write failed", dir.file("summary.json"));
    f.close();
    dir.commit();
}

static nlohmann::json base_summary(const TextClusterOptions& opt, const TextCorpus& corpus, const SphericalKMeansResult& r) {
    nlohmann::json j;
    j["clusters"] = opt.kmeans.clusters;
    j["documents"] = corpus.records.size();
    j["sizes"] = r.sizes;
    j["seed"] = opt.kmeans.seed;
    j["objective"] = r.objective;  // Σ cos(document, its centroid)
    j["mean_cosine"] = r.objective / double(corpus.records.size());
    j["restarts"] = opt.kmeans.restarts;
    j["best_restart"] = r.restart;
    j["max_iter"] = opt.kmeans.max_iter;
    j["iterations"] = r.iterations;
    j["converged"] = r.converged;
    j["data"] = corpus.files;
    j["text_field"] = opt.text_field.empty() ? "text|content" : opt.text_field;
    return j;
}

static std::string data_name(const TextCorpus& c) {
    std::string s;
    for (const std::string& f : c.files) s += (s.empty() ? "" : ", ") + f;
    return s;
}

static void refuse_existing(const TextClusterOptions& opt) {
    if (opt.out.empty()) fail("no output directory given");
    std::error_code ec;
    if (fs::exists(opt.out, ec) && !opt.force) fail("{}: output already exists (use --force to replace it)", opt.out);
}

nlohmann::json cluster_text_tfidf(const TextClusterOptions& opt) {
    refuse_existing(opt);
    check_tfidf_options(opt.tfidf);
    TextCorpus corpus = read_text_corpus(opt.data, opt.text_field);
    check_cluster_request(corpus.texts.size(), opt.kmeans, data_name(corpus));
    TfidfEmbedding emb = tfidf_embed(corpus.texts, opt.tfidf);
    SphericalKMeansResult r = spherical_kmeans(emb.docs, emb.dim, opt.kmeans);

    nlohmann::json j = base_summary(opt, corpus, r);
    j["embed"] = "tfidf";
    size_t empty = 0;
    for (const SparseVec& v : emb.docs) empty += v.nnz() == 0;
    j["tfidf"] = {{"hash_bits", opt.tfidf.hash_bits},
                  {"max_df", opt.tfidf.max_df},
                  {"min_word_len", opt.tfidf.min_word_len},
                  {"dropped_buckets", emb.dropped_buckets},
                  {"documents_without_features", empty}};
    auto terms = cluster_top_terms(corpus.texts, emb, r.assign, opt.kmeans.clusters, opt.top_terms, opt.tfidf);
    nlohmann::json names = nlohmann::json::array(), weights = nlohmann::json::array();
    for (const auto& ts : terms) {
        nlohmann::json n = nlohmann::json::array(), w = nlohmann::json::array();
        for (const auto& t : ts) n.push_back(t.word), w.push_back(std::round(double(t.weight) * 1e4) / 1e4);
        names.push_back(n);
        weights.push_back(w);
    }
    j["top_terms"] = names;
    j["top_term_weights"] = weights;
    write_text_clusters(opt.out, opt.force, corpus, r.assign, opt.kmeans.clusters, j);
    return j;
}

nlohmann::json cluster_text_embedded(const TextClusterOptions& opt, const TextCorpus& corpus, const std::vector<float>& x,
                                     size_t dim, const nlohmann::json& embed) {
    refuse_existing(opt);
    const size_t N = corpus.records.size();
    if (dim == 0 || x.size() != N * dim)
        fail("{}: embeddings hold {} values, expected {} documents x {} dims", opt.out, x.size(), N, dim);
    check_cluster_request(N, opt.kmeans, data_name(corpus));
    SphericalKMeansResult r = spherical_kmeans(x.data(), N, dim, opt.kmeans);
    nlohmann::json j = base_summary(opt, corpus, r);
    j["embed"] = embed.value("kind", std::string("dense"));
    j["embedding"] = embed;
    j["embedding"]["dim"] = dim;
    write_text_clusters(opt.out, opt.force, corpus, r.assign, opt.kmeans.clusters, j);
    return j;
}

}  // namespace moefy
