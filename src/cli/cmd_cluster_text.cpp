// moefy cluster-text --data corpus.jsonl [--text-field text] --clusters 16 [--embed tfidf|model --model M]
//                    [--seed 0] [--max-iter 100] [--restarts 3] [--force] --out clusters/
#include "cli/cli_common.h"
#include "common/error.h"
#include "data/text_cluster.h"
#include "eval/perplexity.h"
#include "model/checkpoint.h"
#include "embed/document_embedding.h"
#include "model/llama.h"
#include "tokenizer/tokenizer.h"

#include <filesystem>

namespace moefy::cli {

MOEFY_COMMAND(60, [](CLI::App& app) {
    auto* cmd = app.add_subcommand("cluster-text",
                                   "Group documents into clusters (seeded spherical k-means) for the gradient split; "
                                   "writes OUT/<c>.jsonl and OUT/summary.json");
    struct Opts {
        TextClusterOptions t;
        std::string embed = "tfidf", model;
        int ctx = 512;
    };
    auto o = std::make_shared<Opts>();
    cmd->add_option("--data", o->t.data, "Data: .jsonl/.json files (one document per line), .txt files (one document each) "
                                         "or directories of them")
        ->required();
    cmd->add_option("--text-field", o->t.text_field, "JSON field holding the text (default: text, else content)");
    cmd->add_option("--clusters", o->t.kmeans.clusters, "Number of clusters")->capture_default_str();
    cmd->add_option("--embed", o->embed, "Document embedding: tfidf (hashed sublinear TF-IDF) or model (mean final hidden state)")
        ->check(CLI::IsMember({"tfidf", "model"}))
        ->capture_default_str();
    cmd->add_option("--model", o->model, "Model directory for --embed model");
    cmd->add_option("--ctx", o->ctx, "Tokens of each document embedded by --embed model")->capture_default_str();
    cmd->add_option("--seed", o->t.kmeans.seed, "Random seed")->capture_default_str();
    cmd->add_option("--max-iter", o->t.kmeans.max_iter, "Lloyd iterations per restart at most")->capture_default_str();
    cmd->add_option("--restarts", o->t.kmeans.restarts, "k-means++ restarts; the best objective wins")->capture_default_str();
    cmd->add_option("--max-df", o->t.tfidf.max_df, "TF-IDF: drop words found in more than this fraction of documents (1: keep all)")
        ->capture_default_str();
    cmd->add_option("--hash-bits", o->t.tfidf.hash_bits, "TF-IDF: 2^bits hashed features")->capture_default_str();
    cmd->add_flag("--force", o->t.force, "Replace an existing output directory");
    cmd->add_option("--out", o->t.out, "Output directory")->required();
    cmd->callback([o] {
        nlohmann::json s;
        if (o->embed == "model") {
            if (o->model.empty()) fail("--embed model needs --model DIR");
            // Refuse an existing output and a bad cluster count before the (slow)
            // embedding pass; cluster_text_embedded checks both again.
            if (std::filesystem::exists(o->t.out) && !o->t.force)
                fail("{}: output already exists (use --force to replace it)", o->t.out);
            const Checkpoint ck = Checkpoint::open(o->model);
            check_context(ck.config, o->ctx, o->model);
            auto tok = Tokenizer::from_dir(o->model);
            auto model = Model::load(ck);
            const TextCorpus corpus = read_text_corpus(o->t.data, o->t.text_field);
            check_cluster_request(corpus.texts.size(), o->t.kmeans, o->t.data.empty() ? "data" : o->t.data[0]);
            ProgressBar bar("embed");
            const std::vector<float> x = embed_documents(*model, *tok, corpus.texts, o->ctx,
                                                         [&](size_t d, size_t n) { bar.update(double(d), double(n), "docs"); });
            bar.finish();
            s = cluster_text_embedded(o->t, corpus, x, size_t(ck.config.hidden_size),
                                      {{"kind", "model"}, {"model", o->model}, {"ctx", o->ctx},
                                       {"pooling", "mean of final hidden states, L2-normalised"}});
        } else {
            s = cluster_text_tfidf(o->t);
        }
        fmt::print("wrote {}: {} documents in {} clusters, sizes {}, mean cosine {:.4f}{}\n", o->t.out,
                   s["documents"].get<size_t>(), s["clusters"].get<int>(), s["sizes"].dump(),
                   s["mean_cosine"].get<double>(), s["converged"].get<bool>() ? "" : " (max-iter reached)");
        const auto terms = s.value("top_terms", nlohmann::json::array());  // TF-IDF only
        for (size_t k = 0; k < terms.size(); ++k) {
            std::string words;
            for (const auto& w : terms[k]) words += " " + w.get<std::string>();
            fmt::print("  {:>3} ({} docs):{}\n", k, s["sizes"][k].get<size_t>(), words);
        }
    });
});

}  // namespace moefy::cli
