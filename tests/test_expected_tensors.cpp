// The one tensor list per architecture (model/expected_tensors.h) against real
// files: the demo checkpoint (written by Hugging Face transformers, not by
// moefy) holds exactly the dense list, and what every converter layout writes,
// read back from disk, is exactly its architecture's list, names and shapes.
#include <gtest/gtest.h>

#include <set>

#include "common/error.h"
#include "convert/convert.h"
#include "convert/gguf.h"
#include "io/gguf.h"
#include "io/safetensors.h"
#include "model/checkpoint.h"
#include "model/expected_tensors.h"
#include "model/tensor_names.h"
#include "split/random_split.h"
#include "test_util.h"
#include "tiny_model.h"

using namespace moefy;

namespace {

using TensorList = std::vector<std::pair<std::string, std::vector<int64_t>>>;

TensorList on_disk(const TensorStore& ts) {
    TensorList l;
    for (const std::string& n : ts.names()) l.emplace_back(n, ts.get(n).shape);
    return l;
}

// Half the neurons of every layer shared, the rest in 4 routed experts.
ExpertPlan with_shared(ExpertPlan p) {
    for (LayerPlan& lp : p.layers) {
        std::vector<int32_t> all;
        for (const auto& e : lp.experts) all.insert(all.end(), e.begin(), e.end());
        const size_t half = all.size() / 2;
        lp.shared = {std::vector<int32_t>(all.begin(), all.begin() + long(half))};
        lp.experts.assign(4, {});
        for (size_t i = half; i < all.size(); ++i) lp.experts[(i - half) % 4].push_back(all[i]);
    }
    return p;
}

}  // namespace

TEST(ExpectedTensors, TheDemoCheckpointHoldsExactlyTheDenseList) {
    const auto store = TensorStore::open_dir(demo_model_dir());
    const ModelConfig c = ModelConfig::load(demo_model_dir() + "/config.json");
    const auto expected = expected_tensors(c);
    EXPECT_EQ(expected.size(), 3u + 9u * size_t(c.num_layers));
    check_tensor_list(expected, on_disk(*store), demo_model_dir());
}

TEST(ExpectedTensors, EveryLayoutWritesExactlyItsList) {
    TempDir tmp;
    TinyModelSpec s;
    s.intermediate = 32;
    write_tiny_model(tmp.path + "/dense", s);
    const Checkpoint ck = Checkpoint::open(tmp.path + "/dense");
    const ExpertPlan routed = random_split(ck, 4, 1), shared = with_shared(random_split(ck, 4, 1));
    struct Case { const char* name; MoEFormat f; const ExpertPlan* plan; ModelKind kind; };
    for (const Case& k : {Case{"llama-moe", MoEFormat::LlamaMoE, &routed, ModelKind::LlamaMoE},
                          Case{"llama-moe-residual", MoEFormat::LlamaMoE, &shared, ModelKind::LlamaMoEResidual},
                          Case{"mixtral", MoEFormat::Mixtral, &routed, ModelKind::Mixtral},
                          Case{"deepseek", MoEFormat::Deepseek, &shared, ModelKind::Deepseek}}) {
        SCOPED_TRACE(k.name);
        ConvertOptions o;
        o.format = k.f;
        const std::string out = tmp.path + "/" + k.name;
        convert_checkpoint(ck, *k.plan, out, o);
        const ModelConfig c = ModelConfig::load(out + "/config.json");
        EXPECT_EQ(c.kind, k.kind);
        check_tensor_list(expected_tensors(c), on_disk(*TensorStore::open_dir(out)), out);
    }
}

// GGUF needs a tokenizer to embed: the demo model (vocabulary 4096, 6 layers, FFN 768).
TEST(ExpectedTensors, GgufWritesExactlyLlamaCppsList) {
    TempDir tmp;
    const Checkpoint ck = Checkpoint::open(demo_model_dir());
    const ModelConfig& c = ck.config;
    const ExpertPlan routed = random_split(ck, 8, 0), shared = with_shared(random_split(ck, 4, 1));
    for (const ExpertPlan* p : {&routed, &shared}) {
        ConvertOptions o;
        o.format = MoEFormat::Gguf;
        GgufOptions g;
        g.type = GgmlType::F32;
        const std::string out = tmp.path + (p == &routed ? "/routed.gguf" : "/shared.gguf");
        convert_to_gguf(ck, p, out, o, g);
        const GgufFile f = open_gguf(out);
        TensorList have;
        for (const GgufTensorInfo& t : f.tensors()) have.emplace_back(t.name, t.ne);
        GgufShape gs;
        gs.deepseek = p == &shared;
        gs.layers = c.num_layers, gs.hidden = c.hidden_size, gs.vocab = c.vocab_size;
        gs.q_rows = int64_t(c.num_heads) * c.head_dim, gs.kv_rows = int64_t(c.num_kv_heads) * c.head_dim;
        gs.ffn = c.intermediate_size, gs.experts = p == &routed ? 8 : 4;
        gs.expert_width = c.intermediate_size / 8;             // 96 either way (8 routed, or 4 of the unshared half)
        gs.shared_width = p == &routed ? 0 : c.intermediate_size / 2;
        check_tensor_list(expected_gguf_tensors(gs), have, out);
        EXPECT_EQ(f.get_str("general.architecture"), gs.deepseek ? "deepseek" : "llama");
        EXPECT_EQ(Checkpoint::open(out).config.kind, gs.deepseek ? ModelKind::Deepseek : ModelKind::Mixtral);  // and reads back
    }
}

TEST(ExpectedTensors, CheckTensorListNamesWhatIsWrong) {
    const std::vector<ExpectedTensor> want = {{"a", {2, 3}}, {"b", {3}}, {"c", {4}, true}};
    EXPECT_EQ(error_of([&] { check_tensor_list(want, {{"a", {2, 3}}, {"b", {3}}}, "f"); }), "(no error)");
    EXPECT_EQ(error_of([&] { check_tensor_list(want, {{"a", {2, 3}}}, "f"); }), "f: tensor 'b' is missing");
    EXPECT_EQ(error_of([&] { check_tensor_list(want, {{"a", {2, 3}}, {"b", {3}}, {"d", {1}}}, "f"); }),
              "f: tensor 'd' is not part of the architecture");
    EXPECT_EQ(error_of([&] { check_tensor_list(want, {{"a", {3, 2}}, {"b", {3}}}, "f"); }),
              "f: tensor 'a' has shape [3, 2], the architecture says [2, 3]");
    EXPECT_EQ(error_of([&] { check_tensor_list(want, {{"a", {2, 3}}, {"b", {3}}, {"b", {3}}}, "f"); }), "f: tensor 'b' appears twice");
    EXPECT_EQ(error_of([&] { check_tensor_list(want, {{"a", {2, 3}}, {"b", {3}}, {"c", {5}}}, "f"); }),
              "f: tensor 'c' has shape [5], the architecture says [4]");
}

TEST(ExpectedTensors, TiedEmbeddingsMakeTheHeadOptional) {
    TempDir tmp;
    TinyModelSpec s;
    s.tie_embeddings = true;
    write_tiny_model(tmp.path + "/tied", s);
    const Checkpoint ck = Checkpoint::open(tmp.path + "/tied");
    const auto list = expected_tensors(ck.config);
    const auto head = std::find_if(list.begin(), list.end(), [](const ExpectedTensor& e) { return e.name == names::lm_head(); });
    ASSERT_NE(head, list.end());
    EXPECT_TRUE(head->optional);
    check_tensor_list(list, on_disk(*ck.tensors), tmp.path);
}
