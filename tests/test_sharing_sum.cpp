// Converted sharing plans (overlapping experts, shared residual experts) with
// every expert on and weight 1 compute exactly what the plan says: each neuron's
// contribution once per expert that holds it. The test builds that sum as a dense
// model whose down_proj column n is multiplied by count(n), the number of experts
// (routed and shared) holding neuron n, and compares the logits of both models.
#include <gtest/gtest.h>

#include <cmath>

#include "convert/convert.h"
#include "data/documents.h"
#include "eval/perplexity.h"
#include "io/safetensors.h"
#include "model/checkpoint.h"
#include "model/llama.h"
#include "model/tensor_names.h"
#include "split/expert_plan.h"
#include "split/random_split.h"
#include "tokenizer/tokenizer.h"
#include "test_util.h"
#include "tiny_model.h"

using namespace moefy;

namespace {

// The dense model with down_proj[:, n] *= counts[layer][n].
std::string write_counted_dense(const Checkpoint& dense, const std::vector<std::vector<int>>& counts, const std::string& dir) {
    std::filesystem::create_directories(dir);
    const TensorStore& ts = *dense.tensors;
    std::vector<TensorSpec> specs;
    for (const std::string& n : ts.names()) specs.push_back({n, DType::F32, ts.get(n).shape});
    write_checkpoint_tensors(dir, specs, [&](size_t i, ByteSink& sink) {
        std::vector<float> v = ts.read_f32(specs[i].name);
        for (int l = 0; l < dense.config.num_layers; ++l) {
            if (specs[i].name != names::dense_ffn(l, "down")) continue;
            const int64_t H = specs[i].shape[0], I = specs[i].shape[1];
            for (int64_t r = 0; r < H; ++r)
                for (int64_t n = 0; n < I; ++n) v[size_t(r * I + n)] *= float(counts[size_t(l)][size_t(n)]);
        }
        sink.write(v.data(), v.size() * sizeof(float));
    }, size_t(1) << 40);
    std::filesystem::copy_file(dense.dir + "/config.json", dir + "/config.json");
    return dir;
}

std::vector<float> logits_of(const Checkpoint& ck, const std::vector<int32_t>& toks) {
    auto m = Model::load(ck);
    std::vector<float> out(toks.size() * size_t(ck.config.vocab_size));
    m->forward(toks.data(), int(toks.size()), 0, nullptr, out.data());
    return out;
}

void expect_same_logits(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
    ASSERT_EQ(got.size(), want.size());
    double num = 0, den = 0;
    for (size_t i = 0; i < got.size(); ++i) {
        num += std::pow(double(got[i]) - want[i], 2);
        den += std::pow(double(want[i]), 2);
    }
    EXPECT_LT(std::sqrt(num / den), 1e-5) << what;
}

struct Case {
    const char* name;
    std::vector<LayerPlan> layers;
};

}  // namespace

TEST(SharingSum, AllExpertsOnWeightOneSumEveryHolderOfEachNeuron) {
    TempDir tmp;
    TinyModelSpec s;  // F32, I = 24, 2 layers
    s.seed = 5;
    const Checkpoint dense = Checkpoint::open(write_tiny_model(tmp.path + "/dense", s));
    const int I = s.intermediate;

    // inner sharing: 4 experts of 9 neurons drawn with overlaps; neurons 20..23 unused.
    // residual: 2 shared experts of 4 and 4 routed experts of 4 (neurons 0..23, disjoint),
    // plus routed experts that overlap the shared ones (the reference's shared mode
    // never does this, but the layout can hold it and the sum must still be exact).
    std::vector<Case> cases;
    {
        Case c{"inner-sharing", {}};
        for (int l = 0; l < 2; ++l) {
            LayerPlan lp;
            for (int e = 0; e < 4; ++e) {
                std::vector<int32_t> ids;
                for (int j = 0; j < 9; ++j) ids.push_back((e * 5 + j * (l + 1)) % 20);
                std::sort(ids.begin(), ids.end());
                ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
                lp.experts.push_back(ids);
            }
            c.layers.push_back(lp);
        }
        cases.push_back(c);
    }
    {
        Case c{"residual", {}};
        for (int l = 0; l < 2; ++l) {
            LayerPlan lp;
            lp.shared = {{0, 1, 2, 3}, {4, 5, 6, 7}};
            lp.experts = {{8, 9, 10, 11}, {12, 13, 14, 15}, {16, 17, 18, 19}, {20, 21, 22, l == 0 ? 3 : 23}};
            c.layers.push_back(lp);
        }
        cases.push_back(c);
    }

    std::vector<int32_t> toks;
    for (int t = 0; t < 20; ++t) toks.push_back(int32_t((t * 7 + 3) % s.vocab));
    for (const Case& c : cases) {
        ExpertPlan plan;
        plan.num_layers = dense.config.num_layers;
        plan.hidden_size = dense.config.hidden_size;
        plan.intermediate_size = I;
        plan.ffn_fingerprint = ffn_fingerprint(*dense.tensors, dense.config);
        plan.method = c.name;
        plan.layers = c.layers;

        std::vector<std::vector<int>> counts(2, std::vector<int>(size_t(I), 0));
        for (int l = 0; l < 2; ++l) {
            for (const auto& e : c.layers[size_t(l)].experts)
                for (int32_t n : e) ++counts[size_t(l)][size_t(n)];
            for (const auto& e : c.layers[size_t(l)].shared)
                for (int32_t n : e) ++counts[size_t(l)][size_t(n)];
        }
        const Checkpoint counted = Checkpoint::open(write_counted_dense(dense, counts, tmp.path + "/counted-" + c.name));

        ConvertOptions o;
        o.format = MoEFormat::LlamaMoE;
        o.top_k = int(c.layers[0].experts.size());  // every routed expert on
        o.multiply_gate_scores = false;             // weight 1 each
        o.dtype = DType::F32;
        const std::string out = tmp.path + "/moe-" + c.name;
        convert_checkpoint(dense, plan, out, o);
        const Checkpoint moe = Checkpoint::open(out);
        expect_same_logits(logits_of(moe, toks), logits_of(counted, toks), c.name);
        // And the counts matter: against the plain dense model the logits differ.
        const std::vector<float> a = logits_of(moe, toks), b = logits_of(dense, toks);
        double diff = 0;
        for (size_t i = 0; i < a.size(); ++i) diff = std::max(diff, double(std::fabs(a[i] - b[i])));
        EXPECT_GT(diff, 1e-3) << c.name;
    }
}

// Issue contract for both standard layouts: every expert selected, weight 1, no
// scaling gives the dense model's perplexity (to 1e-4) on real text. llama-moe
// writes it directly (multiply_gate_scores false); Mixtral always renormalises a
// softmax over the selected experts, so weight 1 is a zero router (every weight
// exactly 1/E) with the scale E folded into w2 (a power of two: exact in BF16).
TEST(SharingSum, AllExpertsPerplexityEqualsDenseInBothLayouts) {
    TempDir tmp;
    const Checkpoint dense = Checkpoint::open(demo_model_dir());
    auto tok = Tokenizer::from_dir(demo_model_dir());
    const auto docs = read_documents(std::string(MOEFY_SOURCE_DIR) + "/data/eval.jsonl");
    const auto windows = make_windows(std::vector<std::string>(docs.begin(), docs.begin() + 4), *tok, {256, 600, true});
    auto dense_model = Model::load(dense);
    const double want = evaluate_perplexity(*dense_model, windows).perplexity();
    const int E = 4;
    const ExpertPlan plan = random_split(dense, E, 3);
    for (MoEFormat f : {MoEFormat::LlamaMoE, MoEFormat::Mixtral}) {
        ConvertOptions o;
        o.format = f;
        o.top_k = E;
        if (f == MoEFormat::LlamaMoE) {
            o.multiply_gate_scores = false;
        } else {
            o.scale = double(E);
            for (int l = 0; l < dense.config.num_layers; ++l) {
                RouterWeights r;
                r.num_experts = E;
                r.hidden_size = dense.config.hidden_size;
                r.w1.assign(size_t(E) * size_t(r.hidden_size), 0.0f);
                o.routers.push_back(r);
            }
        }
        const std::string out = tmp.path + "/" + moe_format_name(f);
        convert_checkpoint(dense, plan, out, o);
        const Checkpoint moe_ck = Checkpoint::open(out);
        auto moe = Model::load(moe_ck);
        const PerplexityResult got = evaluate_perplexity(*moe, windows);
        EXPECT_EQ(got.tokens, 600u);
        EXPECT_NEAR(got.perplexity() / want, 1.0, 1e-4) << moe_format_name(f) << ": " << got.perplexity() << " vs " << want;
    }
}
