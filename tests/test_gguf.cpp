// GGUF: the reader refuses every bad header field by name (one test per case,
// on files built here byte by byte, independently of the writer); the writer's
// files read back; q8_0 rounds within half a step; a killed write leaves nothing;
// and converted demo models evaluate in moefy's engine exactly as the same plan
// converted to mixtral / deepseek / llama-moe (f32), or within the dtype's rounding.
#include <gtest/gtest.h>

#include <chrono>
#include <functional>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/rng.h"
#include "convert/convert.h"
#include "convert/gguf.h"
#include "data/documents.h"
#include "eval/perplexity.h"
#include "io/dtype.h"
#include "io/gguf.h"
#include "model/checkpoint.h"
#include "model/llama.h"
#include "model/tensor_names.h"
#include "route/random_router.h"
#include "split/cluster_split.h"
#include "split/expert_plan.h"
#include "split/graph_split.h"
#include "split/random_split.h"
#include "tokenizer/tokenizer.h"
#include "test_util.h"

using namespace moefy;
namespace fs = std::filesystem;

namespace {

// ------------------------------------------------------------ a GGUF byte builder

struct Bytes {
    std::string b;
    template <typename T>
    Bytes& put(T v) {
        b.append(reinterpret_cast<const char*>(&v), sizeof v);
        return *this;
    }
    Bytes& str(const std::string& s) {
        put<uint64_t>(s.size());
        b += s;
        return *this;
    }
};

struct TensorDesc {
    std::string name;
    std::vector<uint64_t> ne;
    uint32_t type = 0;  // f32
    uint64_t offset = 0;
};

// Header (one string kv "general.architecture" = "llama") + tensor infos, padded
// to 32, then `data_bytes` bytes of data.
std::string make_gguf(const std::vector<TensorDesc>& ts, size_t data_bytes, uint32_t version = 3) {
    Bytes h;
    h.b = "GGUF";
    h.put<uint32_t>(version).put<uint64_t>(ts.size()).put<uint64_t>(1);
    h.str("general.architecture").put<uint32_t>(8).str("llama");
    for (const TensorDesc& t : ts) {
        h.str(t.name).put<uint32_t>(uint32_t(t.ne.size()));
        for (uint64_t d : t.ne) h.put<uint64_t>(d);
        h.put<uint32_t>(t.type).put<uint64_t>(t.offset);
    }
    h.b.resize((h.b.size() + 31) / 32 * 32, '\0');
    h.b.append(data_bytes, '\x01');
    return h.b;
}

std::vector<TensorDesc> good_tensors() { return {{"a", {8}, 0, 0}, {"b", {4, 2}, 0, 32}}; }

std::string parse_error(const std::string& bytes) {
    try {
        parse_gguf(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "x.gguf");
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

#define EXPECT_REFUSED(bytes, needle)                                  \
    do {                                                               \
        const std::string msg = parse_error(bytes);                    \
        EXPECT_NE(msg.find(needle), std::string::npos) << "got: " << msg; \
        EXPECT_NE(msg.find("x.gguf"), std::string::npos) << msg;      \
    } while (0)

}  // namespace

TEST(GgufReader, ReadsAHandBuiltFile) {
    const std::string f = make_gguf(good_tensors(), 64);
    GgufFile g = parse_gguf(reinterpret_cast<const uint8_t*>(f.data()), f.size(), "x.gguf");
    EXPECT_EQ(g.version(), 3u);
    EXPECT_EQ(g.get_str("general.architecture"), "llama");
    ASSERT_EQ(g.tensors().size(), 2u);
    EXPECT_EQ(g.tensor("b").torch_shape(), (std::vector<int64_t>{2, 4}));
    EXPECT_EQ(g.tensor("b").nbytes, 32u);
    EXPECT_EQ(g.tensor("b").data - reinterpret_cast<const uint8_t*>(f.data()), ptrdiff_t(g.data_offset() + 32));
    EXPECT_EQ(g.data_offset() % 32, 0u);
}

TEST(GgufReader, TruncatedFile) {
    const std::string f = make_gguf(good_tensors(), 64);
    EXPECT_REFUSED(f.substr(0, 20), "truncated");          // inside the counts / first key
    EXPECT_REFUSED(f.substr(0, f.size() - 1), "run past"); // inside tensor b's data
}

TEST(GgufReader, BadMagic) {
    std::string f = make_gguf(good_tensors(), 64);
    f[0] = 'G', f[1] = 'G', f[2] = 'M', f[3] = 'L';
    EXPECT_REFUSED(f, "bad magic");
}

TEST(GgufReader, WrongVersion) {
    EXPECT_REFUSED(make_gguf(good_tensors(), 64, 4), "unsupported GGUF version 4");
    EXPECT_REFUSED(make_gguf(good_tensors(), 64, 1), "version 1");
}

TEST(GgufReader, StringLengthPastTheEnd) {
    std::string f = make_gguf(good_tensors(), 64);
    const uint64_t huge = 1ull << 40;
    std::memcpy(&f[24], &huge, 8);  // length of the first key
    EXPECT_REFUSED(f, "past the end");
}

TEST(GgufReader, CountsTheFileCannotHold) {
    std::string f = make_gguf(good_tensors(), 64);
    const uint64_t huge = 1ull << 60;
    std::memcpy(&f[8], &huge, 8);
    EXPECT_REFUSED(f, "tensor count");
    f = make_gguf(good_tensors(), 64);
    std::memcpy(&f[16], &huge, 8);
    EXPECT_REFUSED(f, "metadata count");
}

TEST(GgufReader, OffsetPastTheEnd) {
    auto ts = good_tensors();
    ts[1].offset = 1 << 20;
    EXPECT_REFUSED(make_gguf(ts, 64), "run past");
}

TEST(GgufReader, MisalignedOffset) {
    auto ts = good_tensors();
    ts[1].offset = 36;
    EXPECT_REFUSED(make_gguf(ts, 96), "not a multiple of the alignment 32");
}

TEST(GgufReader, OverlappingTensors) {
    auto ts = good_tensors();
    ts[1].ne = {16};  // 64 bytes from 32
    ts[0].ne = {16};  // 64 bytes from 0: overlaps b
    EXPECT_REFUSED(make_gguf(ts, 128), "overlap");
}

TEST(GgufReader, UnknownAndUnsupportedTensorType) {
    auto ts = good_tensors();
    ts[1].type = 77;
    EXPECT_REFUSED(make_gguf(ts, 64), "unknown tensor type 77");
    ts[1].type = 12;  // q4_K
    ts[1].ne = {256};
    EXPECT_REFUSED(make_gguf(ts, 1024), "q4_K");
}

TEST(GgufReader, BadDimensionsAndRowLengths) {
    auto ts = good_tensors();
    ts[1].ne = {0};
    EXPECT_REFUSED(make_gguf(ts, 64), "ne[0] = 0");
    ts[1].ne = {1, 1, 1, 1, 1};
    EXPECT_REFUSED(make_gguf(ts, 64), "5 dimensions");
    ts = good_tensors();
    ts[1].type = 8;  // q8_0 needs rows of 32
    ts[1].ne = {16};
    EXPECT_REFUSED(make_gguf(ts, 64), "not a multiple of the q8_0 block");
}

TEST(GgufReader, DuplicateKeysAndTensors) {
    auto ts = good_tensors();
    ts[1].name = "a";
    EXPECT_REFUSED(make_gguf(ts, 64), "tensor name 'a' appears twice");
    Bytes h;
    h.b = "GGUF";
    h.put<uint32_t>(3).put<uint64_t>(0).put<uint64_t>(2);
    h.str("k").put<uint32_t>(4).put<uint32_t>(1);
    h.str("k").put<uint32_t>(4).put<uint32_t>(2);
    EXPECT_REFUSED(h.b, "metadata key 'k' appears twice");
}

TEST(GgufReader, BadValueTypesAndArrays) {
    Bytes h;
    h.b = "GGUF";
    h.put<uint32_t>(3).put<uint64_t>(0).put<uint64_t>(1);
    h.str("k").put<uint32_t>(99).put<uint32_t>(1);
    EXPECT_REFUSED(h.b, "unknown type 99");
    Bytes a;
    a.b = "GGUF";
    a.put<uint32_t>(3).put<uint64_t>(0).put<uint64_t>(1);
    a.str("arr").put<uint32_t>(9).put<uint32_t>(4).put<uint64_t>(1ull << 50);
    EXPECT_REFUSED(a.b, "claims");
    Bytes al;
    al.b = "GGUF";
    al.put<uint32_t>(3).put<uint64_t>(0).put<uint64_t>(1);
    al.str("general.alignment").put<uint32_t>(4).put<uint32_t>(24);
    EXPECT_REFUSED(al.b, "not a power of two");
}

TEST(GgufReader, MissingTensorIsNamedWhenTheModelLoads) {
    TempDir tmp;
    const std::string path = tmp.path + "/m.gguf";
    std::vector<GgufKV> kv = {{"general.architecture", GgufValue::str("llama")},
                              {"llama.embedding_length", GgufValue::u32(32)},
                              {"llama.block_count", GgufValue::u32(1)},
                              {"llama.feed_forward_length", GgufValue::u32(64)},
                              {"llama.attention.head_count", GgufValue::u32(4)},
                              {"llama.attention.layer_norm_rms_epsilon", GgufValue::f32(1e-5f)}};
    std::vector<GgufTensorSpec> specs = {{"token_embd.weight", GgmlType::F32, {32, 10}}, {"output_norm.weight", GgmlType::F32, {32}}};
    write_gguf(path, kv, specs, [&](size_t i, ByteSink& s) {
        std::vector<uint8_t> z(specs[i].nbytes());
        s.write(z.data(), z.size());
    });
    try {
        Checkpoint::open(path);
        FAIL() << "opened a file without blk.0 tensors";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("tensor 'blk.0.attn_norm.weight' not found"), std::string::npos) << e.what();
    }
}

TEST(GgufWriter, RoundTripOfMetadataTensorsAndQ8) {
    TempDir tmp;
    const std::string path = tmp.path + "/w.gguf";
    std::vector<GgufKV> kv = {{"a.u32", GgufValue::u32(7)},
                              {"a.f32", GgufValue::f32(0.25f)},
                              {"a.bool", GgufValue::boolean(true)},
                              {"a.str", GgufValue::str("héllo")},
                              {"a.strs", GgufValue::str_array({"x", "", "yz"})},
                              {"a.f32s", GgufValue::f32_array({1.5, -2})},
                              {"a.i32s", GgufValue::i32_array({-1, 3})}};
    Rng rng(5, 0);
    std::vector<float> x(64 * 3);
    for (float& v : x) v = float(rng.normal()) * 3.0f;
    x[5] = 0;
    std::vector<GgufTensorSpec> specs = {{"f", GgmlType::F32, {3}}, {"h", GgmlType::BF16, {5}}, {"q", GgmlType::Q8_0, {64, 3}}};
    write_gguf(path, kv, specs, [&](size_t i, ByteSink& s) {
        if (i == 0) {
            const float f[3] = {1, 2, 3};
            s.write(f, sizeof f);
        } else if (i == 1) {
            uint16_t h[5];
            for (int k = 0; k < 5; ++k) h[k] = f32_to_bf16(float(k) - 2.5f);
            s.write(h, sizeof h);
        } else {
            Q8Sink q(s, "q");
            q.write(x.data(), 100);  // in pieces that straddle floats and blocks
            q.write(reinterpret_cast<const uint8_t*>(x.data()) + 100, x.size() * 4 - 100);
            q.finish();
        }
    });
    GgufFile g = open_gguf(path);
    EXPECT_EQ(g.get_int("a.u32"), 7);
    EXPECT_EQ(g.get_float("a.f32"), 0.25);
    EXPECT_TRUE(g.get_bool("a.bool", false));
    EXPECT_EQ(g.get_str("a.str"), "héllo");
    EXPECT_EQ(g.get("a.strs").strs, (std::vector<std::string>{"x", "", "yz"}));
    EXPECT_EQ(g.get("a.f32s").reals, (std::vector<double>{1.5, -2}));
    EXPECT_EQ(g.get("a.i32s").ints, (std::vector<int64_t>{-1, 3}));
    for (const GgufTensorInfo& t : g.tensors()) EXPECT_EQ(t.offset % 32, 0u) << t.name;
    std::vector<float> back(x.size());
    gguf_read_rows_f32(g.tensor("q"), 0, 3, back.data());
    for (size_t b = 0; b < x.size() / 32; ++b) {
        // q = round(x / d) with d = amax / 127 in f32, stored as f16 d': |d'q - x| <= d'/2 + 127 |d' - d|.
        float amax = 0;
        for (size_t j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[b * 32 + j]));
        const float d = amax / 127.0f, dh = f16_to_f32(f32_to_f16(d));
        const float bound = 0.5f * dh + 127.0f * std::fabs(dh - d) + 1e-6f;
        for (size_t j = 0; j < 32; ++j) EXPECT_LE(std::fabs(back[b * 32 + j] - x[b * 32 + j]), bound);
    }
    EXPECT_EQ(back[5], 0.0f);
    std::vector<float> h(5);
    gguf_read_rows_f32(g.tensor("h"), 0, 1, h.data());
    EXPECT_EQ(h[4], 1.5f);
    // A producer that writes the wrong byte count is refused, and nothing is left.
    const std::string bad = tmp.path + "/bad.gguf";
    EXPECT_THROW(write_gguf(bad, kv, specs, [](size_t, ByteSink& s) { s.write("x", 1); }), Error);
    EXPECT_FALSE(fs::exists(bad));
    for (const auto& e : fs::directory_iterator(tmp.path)) EXPECT_EQ(e.path().string().find(".tmp-"), std::string::npos) << e.path();
    EXPECT_THROW(write_gguf(path, kv, specs, [](size_t, ByteSink&) {}), Error);  // exists, no force
}

TEST(GgufWriter, AKilledWriteLeavesNoFileAtThePath) {
    TempDir tmp;
    const std::string path = tmp.path + "/k.gguf";
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        std::vector<GgufTensorSpec> specs = {{"a", GgmlType::F32, {8}}, {"b", GgmlType::F32, {8}}};
        write_gguf(path, {}, specs, [&](size_t i, ByteSink& s) {
            if (i == 1) raise(SIGKILL);
            std::vector<uint8_t> z(32);
            s.write(z.data(), z.size());
        });
        _exit(0);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    ASSERT_TRUE(WIFSIGNALED(st));
    EXPECT_FALSE(fs::exists(path));
}

// ------------------------------------------------------------ the demo model

namespace {

struct Demo {
    Checkpoint ck = Checkpoint::open(demo_model_dir());
    std::vector<TokenWindow> windows;
    Demo() {
        auto tok = Tokenizer::from_dir(demo_model_dir());
        auto docs = read_documents(std::string(MOEFY_SOURCE_DIR) + "/data/eval.jsonl");
        WindowOptions wo;
        wo.ctx = 128;
        wo.max_tokens = 300;
        windows = make_windows(docs, *tok, wo);
    }
    double nll(const std::string& path) const {
        Checkpoint c = Checkpoint::open(path);
        auto m = Model::load(c);
        return evaluate_perplexity(*m, windows).mean_nll();
    }
};

Demo& demo() {
    static Demo d;
    return d;
}

double rel(double a, double b) { return std::fabs(a - b) / std::fabs(b); }

// Plan with the first `shared_neurons` of a seeded permutation as one shared
// expert and the rest cut into `routed` experts.
ExpertPlan residual_plan(const Checkpoint& ck, int shared_neurons, int routed) {
    ExpertPlan plan = random_split(ck, 8, 3);
    const int I = ck.config.intermediate_size;
    for (size_t l = 0; l < plan.layers.size(); ++l) {
        std::vector<int32_t> perm(static_cast<size_t>(I));
        for (int i = 0; i < I; ++i) perm[size_t(i)] = i;
        Rng rng(11, l);
        for (int i = I - 1; i > 0; --i) std::swap(perm[size_t(i)], perm[rng.below(uint64_t(i + 1))]);
        LayerPlan& lp = plan.layers[l];
        lp.shared = {std::vector<int32_t>(perm.begin(), perm.begin() + shared_neurons)};
        lp.experts.assign(size_t(routed), {});
        for (int i = shared_neurons; i < I; ++i) lp.experts[size_t((i - shared_neurons) % routed)].push_back(perm[size_t(i)]);
    }
    return plan;
}

ConvertOptions f32_opts(MoEFormat f, int k) {
    ConvertOptions o;
    o.format = f;
    o.top_k = k;
    o.dtype = DType::F32;
    o.gate = GateKind::Linear;
    return o;
}

}  // namespace

TEST(GgufDemo, DenseGgufEqualsDenseSafetensors) {
    Demo& d = demo();
    TempDir tmp;
    const double dense = d.nll(demo_model_dir());
    GgufOptions g;  // same dtype: bf16 weights, f32 norms (exact)
    GgufReport r = convert_to_gguf(d.ck, nullptr, tmp.path + "/dense.gguf", ConvertOptions{}, g);
    EXPECT_EQ(r.arch, "llama");
    EXPECT_EQ(r.type, "bf16");
    EXPECT_LT(rel(d.nll(tmp.path + "/dense.gguf"), dense), 1e-6);
    g.type = GgmlType::Q8_0;
    convert_to_gguf(d.ck, nullptr, tmp.path + "/dense-q8.gguf", ConvertOptions{}, g);
    EXPECT_LT(rel(d.nll(tmp.path + "/dense-q8.gguf"), dense), 5e-3);  // q8_0 rounding
    // The tokenizer comes back from the file: the same ids as from the directory.
    auto t1 = Tokenizer::from_dir(demo_model_dir());
    auto t2 = Tokenizer::from_dir(tmp.path + "/dense.gguf");
    const std::string text = "Once upon a time, in a land far away: 42 dragons!";
    EXPECT_EQ(t1->encode(text, true), t2->encode(text, true));
    GgufFile gf = open_gguf(tmp.path + "/dense.gguf");
    EXPECT_EQ(gf.get_str("tokenizer.ggml.model"), "llama");
    EXPECT_EQ(gf.get("tokenizer.ggml.tokens").strs.size(), size_t(d.ck.config.vocab_size));
    EXPECT_EQ(gf.get_int("general.file_type"), 32);
    EXPECT_EQ(gf.get_int("llama.feed_forward_length"), d.ck.config.intermediate_size);
    // Every tensor starts on a cache line (the file is mapped from a page boundary).
    EXPECT_EQ(gf.get_int("general.alignment"), 64);
    for (const GgufTensorInfo& t : gf.tensors()) EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data) % 64, 0u) << t.name;
}

TEST(GgufDemo, RoutedPlansEqualMixtralInF32) {
    Demo& d = demo();
    TempDir tmp;
    ClusterSplitOptions co;
    co.experts = 8;
    co.restarts = 1;
    const ExpertPlan random8 = random_split(d.ck, 8, 0);
    const ExpertPlan cluster8 = cluster_split(d.ck, co);
    GraphSplitOptions go;
    go.experts = 8;
    const ExpertPlan graph8 = graph_split(d.ck, d.windows, go);  // co-activation on the 300 eval tokens
    struct Case {
        const ExpertPlan* plan;
        int k;
    } cases[] = {{&random8, 1}, {&random8, 2}, {&cluster8, 4}, {&graph8, 2}};
    int n = 0;
    for (const Case& c : cases) {
        const std::string mx = tmp.path + fmt::format("/mx{}", n), gg = tmp.path + fmt::format("/m{}.gguf", n);
        ++n;
        convert_checkpoint(d.ck, *c.plan, mx, f32_opts(MoEFormat::Mixtral, c.k));
        GgufOptions g;
        g.type = GgmlType::F32;
        GgufReport r = convert_to_gguf(d.ck, c.plan, gg, f32_opts(MoEFormat::LlamaMoE, c.k), g);
        EXPECT_EQ(r.arch, "llama");
        EXPECT_EQ(r.padded_neurons, 0u);
        const double a = d.nll(mx), b = d.nll(gg);
        EXPECT_LT(rel(b, a), 1e-3) << c.plan->method << " top-" << c.k << ": mixtral " << a << " gguf " << b;
        GgufFile f = open_gguf(gg);
        EXPECT_EQ(f.get_int("llama.expert_count"), 8);
        EXPECT_EQ(f.get_int("llama.expert_used_count"), c.k);
        EXPECT_EQ(f.tensor("blk.0.ffn_down_exps.weight").ne, (std::vector<int64_t>{96, 192, 8}));
        EXPECT_EQ(f.tensor("blk.0.ffn_gate_exps.weight").ne, (std::vector<int64_t>{192, 96, 8}));
        EXPECT_EQ(f.tensor("blk.0.ffn_gate_inp.weight").ne, (std::vector<int64_t>{192, 8}));
    }
}

TEST(GgufDemo, SevenExpertsArePaddedExactly) {
    // 768 / 7: widths 110 and 109; the GGUF stores 110 with zero neurons, and
    // evaluates as llama-moe with a linear router (softmax over the k selected
    // logits, which is Mixtral's renormalised top-k).
    Demo& d = demo();
    TempDir tmp;
    const ExpertPlan plan = random_split(d.ck, 7, 1);
    convert_checkpoint(d.ck, plan, tmp.path + "/lm", f32_opts(MoEFormat::LlamaMoE, 2));
    GgufOptions g;
    g.type = GgmlType::F32;
    GgufReport r = convert_to_gguf(d.ck, &plan, tmp.path + "/m7.gguf", f32_opts(MoEFormat::LlamaMoE, 2), g);
    EXPECT_EQ(r.expert_width, 110);
    EXPECT_EQ(r.padded_neurons, size_t(6 * 2));  // 768 = 110 + 6 x 109 + ... : 2 per layer
    const double a = d.nll(tmp.path + "/lm"), b = d.nll(tmp.path + "/m7.gguf");
    EXPECT_LT(rel(b, a), 1e-3) << a << " " << b;
    // q8_0 refuses: 110 is not a multiple of 32.
    g.type = GgmlType::Q8_0;
    try {
        convert_to_gguf(d.ck, &plan, tmp.path + "/m7q.gguf", f32_opts(MoEFormat::LlamaMoE, 2), g);
        FAIL() << "q8_0 with rows of 110";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("not a multiple of 32"), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(tmp.path + "/m7q.gguf"));
}

TEST(GgufDemo, ResidualPlanIsDeepseekAndEqualsTheDeepseekLayout) {
    Demo& d = demo();
    TempDir tmp;
    const ExpertPlan plan = residual_plan(d.ck, 192, 6);  // 2 x 96 shared (as one), 6 x 96 routed
    convert_checkpoint(d.ck, plan, tmp.path + "/ds", f32_opts(MoEFormat::Deepseek, 2));
    GgufOptions g;
    g.type = GgmlType::F32;
    GgufReport r = convert_to_gguf(d.ck, &plan, tmp.path + "/ds.gguf", f32_opts(MoEFormat::LlamaMoE, 2), g);
    EXPECT_EQ(r.arch, "deepseek");
    EXPECT_EQ(r.shared_count, 2);
    const double a = d.nll(tmp.path + "/ds"), b = d.nll(tmp.path + "/ds.gguf");
    EXPECT_LT(rel(b, a), 1e-3) << a << " " << b;
    GgufFile f = open_gguf(tmp.path + "/ds.gguf");
    EXPECT_EQ(f.get_str("general.architecture"), "deepseek");
    EXPECT_EQ(f.get_int("deepseek.expert_shared_count"), 2);
    EXPECT_EQ(f.get_int("deepseek.leading_dense_block_count"), 0);
    EXPECT_EQ(f.get_int("deepseek.expert_feed_forward_length"), 96);
    EXPECT_EQ(f.get_float("deepseek.expert_weights_scale"), 1.0);
    EXPECT_EQ(f.tensor("blk.1.ffn_down_shexp.weight").ne, (std::vector<int64_t>{192, 192}));
}

// Refitted down projections (route/refit.h) reach the GGUF file as they reach
// the safetensors layouts: routed and shared experts gather their columns from
// ConvertOptions::down_proj. A perturbed copy of the dense down projection
// stands in for a refit, so the test sees whether the values were taken at all.
TEST(GgufDemo, RefittedDownProjectionsEqualTheSafetensorsLayouts) {
    Demo& d = demo();
    TempDir tmp;
    const int L = d.ck.config.num_layers, H = d.ck.config.hidden_size, I = d.ck.config.intermediate_size;
    std::vector<std::vector<float>> down(static_cast<size_t>(L));
    for (int l = 0; l < L; ++l) {
        down[size_t(l)] = d.ck.tensors->read_f32(names::dense_ffn(l, "down"));
        ASSERT_EQ(down[size_t(l)].size(), size_t(H) * size_t(I));
        Rng rng(5, uint64_t(l));
        for (float& v : down[size_t(l)]) v *= 1.0f + 0.5f * float(rng.uniform() - 0.5);
    }
    const ExpertPlan routed = random_split(d.ck, 8, 0);
    const ExpertPlan residual = residual_plan(d.ck, 192, 6);
    struct Case {
        const ExpertPlan* plan;
        MoEFormat format;
    } cases[] = {{&routed, MoEFormat::Mixtral}, {&residual, MoEFormat::Deepseek}};
    int n = 0;
    for (const Case& c : cases) {
        ConvertOptions o = f32_opts(c.format, 2);
        o.down_proj = down;
        const std::string st = tmp.path + fmt::format("/st{}", n), gg = tmp.path + fmt::format("/g{}.gguf", n);
        ++n;
        convert_checkpoint(d.ck, *c.plan, st, o);
        ConvertOptions og = f32_opts(MoEFormat::LlamaMoE, 2);
        og.down_proj = down;
        GgufOptions g;
        g.type = GgmlType::F32;
        convert_to_gguf(d.ck, c.plan, gg, og, g);
        ConvertOptions plain = f32_opts(MoEFormat::LlamaMoE, 2);
        const std::string pl = tmp.path + fmt::format("/plain{}.gguf", n);
        convert_to_gguf(d.ck, c.plan, pl, plain, g);
        const double a = d.nll(st), b = d.nll(gg), unrefit = d.nll(pl);
        EXPECT_LT(rel(b, a), 1e-3) << moe_format_name(c.format) << ": safetensors " << a << " gguf " << b;
        EXPECT_GT(rel(b, unrefit), 1e-3) << "the perturbed down projections changed nothing";
    }
}

TEST(GgufDemo, Bf16AndQ8WithinTheirRounding) {
    Demo& d = demo();
    TempDir tmp;
    const ExpertPlan plan = random_split(d.ck, 8, 0);
    // Routers rounded to bf16 first, so both files route with the same values
    // (mixtral stores them in bf16, GGUF in f32).
    ConvertOptions o = f32_opts(MoEFormat::Mixtral, 2);
    o.dtype.reset();
    for (int l = 0; l < d.ck.config.num_layers; ++l) {
        RouterWeights rw = make_random_router(8, d.ck.config.hidden_size, false, 0, l);
        for (float& v : rw.w1) v = bf16_to_f32(f32_to_bf16(v));
        o.routers.push_back(rw);
    }
    convert_checkpoint(d.ck, plan, tmp.path + "/mx", o);
    GgufOptions g;
    convert_to_gguf(d.ck, &plan, tmp.path + "/bf.gguf", o, g);
    const double a = d.nll(tmp.path + "/mx"), b = d.nll(tmp.path + "/bf.gguf");
    EXPECT_LT(rel(b, a), 1e-5) << a << " " << b;  // same bf16 weights; sums in another order
    g.type = GgmlType::Q8_0;
    convert_to_gguf(d.ck, &plan, tmp.path + "/q8.gguf", o, g);
    const double q = d.nll(tmp.path + "/q8.gguf");
    EXPECT_LT(rel(q, a), 1e-2) << a << " " << q;  // 8-bit weights (steps of 1/127 of each block's max)
}

// ------------------------------------------------------------ tokenizers

namespace {

// A GGUF holding only `kv` (tokenizer keys).
std::string write_kv_only(const std::string& path, std::vector<GgufKV> kv) {
    write_gguf(path, kv, {}, [](size_t, ByteSink&) {});
    return path;
}

std::vector<std::string> golden_texts() {
    std::vector<std::string> t;
    const auto j = nlohmann::json::parse(read_file(shared_path("fixtures/tokenizers/golden.json")));
    for (const auto& c : j["cases"]) t.push_back(c["text"].get<std::string>());
    return t;
}

}  // namespace

TEST(SharedGgufTokenizer, Llama3TokenizerJsonIsGpt2WithLlamaBpeAndRoundTrips) {
    if (!shared_exists("fixtures/tokenizers/llama3-tokenizer.json")) GTEST_SKIP() << "fixtures/tokenizers not present";
    TempDir tmp;
    fs::copy_file(shared_path("fixtures/tokenizers/llama3-tokenizer.json"), tmp.path + "/tokenizer.json");
    fs::copy_file(shared_path("fixtures/tokenizers/llama3-tokenizer_config.json"), tmp.path + "/tokenizer_config.json");
    std::vector<GgufKV> kv;
    const GgufVocabInfo info = append_gguf_tokenizer(tmp.path, 128256, kv);
    EXPECT_EQ(info.model, "gpt2");
    EXPECT_EQ(info.pre, "llama-bpe");
    EXPECT_GT(info.merges, 280000u);
    const std::string path = write_kv_only(tmp.path + "/t.gguf", kv);
    GgufFile g = open_gguf(path);
    EXPECT_EQ(g.get_str("tokenizer.ggml.pre"), "llama-bpe");
    const auto& toks = g.get("tokenizer.ggml.tokens").strs;
    const auto& types = g.get("tokenizer.ggml.token_type").ints;
    ASSERT_EQ(toks.size(), 128256u);
    EXPECT_EQ(toks[128000], "<|begin_of_text|>");
    EXPECT_EQ(types[128000], 3);  // control
    EXPECT_EQ(types[1000], 1);
    EXPECT_EQ(g.get("tokenizer.ggml.merges").strs[0], "Ġ Ġ");
    EXPECT_EQ(g.get_int("tokenizer.ggml.bos_token_id"), 128000);
    auto a = Tokenizer::from_dir(tmp.path);
    auto b = Tokenizer::from_dir(path);
    for (const std::string& t : golden_texts()) EXPECT_EQ(a->encode(t, true), b->encode(t, true)) << t;
}

TEST(SharedGgufTokenizer, SentencePieceIsRebuiltFromTheLlamaKeysAlone) {
    // A GGUF from elsewhere has no embedded tokenizer.model: moefy rebuilds a
    // SentencePiece model from tokens, scores and types (identity normalizer,
    // BPE by score, as llama.cpp runs it) and must tokenize as the original.
    if (!shared_exists("fixtures/tokenizers/llama2-tokenizer.model")) GTEST_SKIP() << "fixtures/tokenizers not present";
    TempDir tmp;
    fs::copy_file(shared_path("fixtures/tokenizers/llama2-tokenizer.model"), tmp.path + "/tokenizer.model");
    std::vector<GgufKV> kv;
    const GgufVocabInfo info = append_gguf_tokenizer(tmp.path, 32000, kv);
    EXPECT_EQ(info.model, "llama");
    std::vector<GgufKV> foreign;
    for (GgufKV& e : kv)
        if (e.key.rfind("moefy.", 0) != 0) foreign.push_back(e);
    ASSERT_LT(foreign.size(), kv.size());
    auto a = Tokenizer::from_dir(tmp.path);
    auto b = Tokenizer::from_dir(write_kv_only(tmp.path + "/t.gguf", foreign));
    EXPECT_EQ(b->vocab_size(), 32000);
    for (const std::string& t : golden_texts()) {
        EXPECT_EQ(a->encode(t, true), b->encode(t, true)) << t;
        EXPECT_EQ(a->decode(a->encode(t, false)), b->decode(b->encode(t, false))) << t;
    }
}

TEST(GgufCli, ConvertInspectEvalGenerateAndBuild) {
    TempDir tmp;
    const std::string m = demo_model_dir(), t = tmp.path;
    ASSERT_EQ(run_cli(fmt::format("split random --model {} --experts 7 --out {}/p7.json", m, t)).status, 0);
    CliResult c = run_cli(fmt::format("convert --model {} --plan {}/p7.json --format gguf --out {}/m7.gguf", m, t, t));
    ASSERT_EQ(c.status, 0) << c.out;
    EXPECT_NE(c.out.find("GGUF llama, 6 layers x 7 experts of width 110"), std::string::npos) << c.out;
    EXPECT_NE(c.out.find("12 zero neurons"), std::string::npos) << c.out;
    c = run_cli(fmt::format("inspect {}/m7.gguf", t));
    ASSERT_EQ(c.status, 0) << c.out;
    EXPECT_NE(c.out.find("llama.cpp architecture 'llama'"), std::string::npos) << c.out;
    EXPECT_NE(c.out.find("12 zero neurons"), std::string::npos) << c.out;
    EXPECT_NE(c.out.find("12 x 109, 30 x 110"), std::string::npos) << c.out;  // the plan's own widths
    c = run_cli(fmt::format("convert --model {} --format gguf --out {}/dense.gguf", m, t));
    ASSERT_EQ(c.status, 0) << c.out;
    // eval of a GGUF MoE against a GGUF dense reference, and the same against the directory.
    c = run_cli(fmt::format("eval --model {0}/m7.gguf --reference {0}/dense.gguf --data {1}/data/eval.jsonl --max-tokens 200 --json",
                            t, MOEFY_SOURCE_DIR));
    ASSERT_EQ(c.status, 0) << c.out;
    CliResult d = run_cli(fmt::format("eval --model {0}/m7.gguf --reference {2} --data {1}/data/eval.jsonl --max-tokens 200 --json",
                                      t, MOEFY_SOURCE_DIR, m));
    ASSERT_EQ(d.status, 0) << d.out;
    const auto j1 = nlohmann::json::parse(c.out.substr(c.out.find('{'))), j2 = nlohmann::json::parse(d.out.substr(d.out.find('{')));
    // The GGUF dense reference is the same model as the directory (bf16, exact norms).
    EXPECT_NEAR(j1["dense"]["mean_nll"].get<double>(), j2["dense"]["mean_nll"].get<double>(), 1e-5);
    EXPECT_NEAR(j1["moe"]["ffn_rel_error"].get<double>(), j2["moe"]["ffn_rel_error"].get<double>(), 1e-4);
    c = run_cli(fmt::format("generate --model {}/dense.gguf --prompt \"Once upon a time\" -n 8", t));
    CliResult g = run_cli(fmt::format("generate --model {} --prompt \"Once upon a time\" -n 8", m));
    ASSERT_EQ(c.status, 0) << c.out;
    EXPECT_EQ(c.out, g.out);
    // Refusals: q8_0 outside gguf; q8_0 with rows of 110; an existing output.
    c = run_cli(fmt::format("convert --model {} --plan {}/p7.json --format mixtral --dtype q8_0 --out {}/x", m, t, t));
    EXPECT_EQ(c.status, 1);
    EXPECT_NE(c.out.find("only --format gguf"), std::string::npos) << c.out;
    c = run_cli(fmt::format("convert --model {} --plan {}/p7.json --format gguf --dtype q8_0 --out {}/q.gguf", m, t, t));
    EXPECT_EQ(c.status, 1);
    EXPECT_NE(c.out.find("not a multiple of 32"), std::string::npos) << c.out;
    EXPECT_FALSE(fs::exists(t + "/q.gguf"));
    c = run_cli(fmt::format("convert --model {} --format gguf --out {}/dense.gguf", m, t));
    EXPECT_EQ(c.status, 1);
    EXPECT_NE(c.out.find("already exists"), std::string::npos) << c.out;
    // build straight to GGUF (random split and router: no calibration text).
    c = run_cli(fmt::format("build --model {} --method random --router random --weighting softmax --scale auto --format gguf "
                            "--eval-data {}/data/eval.jsonl --eval-tokens 200 --out {}/b.gguf",
                            m, MOEFY_SOURCE_DIR, t));
    ASSERT_EQ(c.status, 0) << c.out;
    EXPECT_TRUE(is_gguf_file(t + "/b.gguf"));
}

namespace {

// The demo model as a dense GGUF file, and a copy of it with other metadata (same tensors).
struct DemoGguf {
    TempDir tmp;
    std::string path = tmp.path + "/dense.gguf";
    DemoGguf() {
        ConvertOptions o;
        o.format = MoEFormat::Gguf;
        convert_to_gguf(Checkpoint::open(demo_model_dir()), nullptr, path, o, GgufOptions{});
    }
    std::string with_kv(const std::string& name, const std::function<void(std::vector<GgufKV>&)>& edit) const {
        const GgufFile f = open_gguf(path);
        std::vector<GgufKV> kv = f.kv();
        edit(kv);
        std::vector<GgufTensorSpec> specs;
        for (const GgufTensorInfo& t : f.tensors()) specs.push_back({t.name, t.type, t.ne});
        const std::string out = tmp.path + "/" + name;
        write_gguf(out, kv, specs, [&](size_t i, ByteSink& s) { s.write(f.tensors()[i].data, f.tensors()[i].nbytes); },
                   false, f.alignment());
        return out;
    }
};

}  // namespace

// moefy.plan and moefy.rope_scaling are JSON strings inside a GGUF anyone may
// have written: parsed with the depth cap, checked field by field, and every
// problem is one error naming the file (was: an escaped JSON exception, and a
// deep plan recursed without bound).
TEST(GgufReader, HostileMoefyPlanIsAnErrorNamingTheFile) {
    const DemoGguf demo;
    auto with_plan = [&](const std::string& name, const std::string& plan) {
        return demo.with_kv(name, [&](std::vector<GgufKV>& kv) { kv.push_back({"moefy.plan", GgufValue::str(plan)}); });
    };
    const std::string ok = with_plan("ok.gguf", R"({"method": "random", "padded_neurons": 0})");
    EXPECT_EQ(run_cli("inspect " + ok).status, 0);
    struct Case { const char* name; std::string plan, message; };
    for (const Case& c : {Case{"type.gguf", R"({"method": "random", "padded_neurons": "many"})",
                               ": moefy.plan: field 'padded_neurons' must be an integer"},
                          Case{"method.gguf", R"({"method": 3})", ": moefy.plan: field 'method' must be a string, got number"},
                          Case{"deep.gguf", std::string(100000, '[') + std::string(100000, ']'),
                               ": moefy.plan: JSON nested deeper than 64 levels"},
                          Case{"array.gguf", "[1, 2]", ": moefy.plan is not a JSON object"},
                          Case{"syntax.gguf", "{\"method\": ", ": moefy.plan: not well-formed JSON"}}) {
        const std::string path = with_plan(c.name, c.plan);
        const CliResult r = run_cli("inspect " + path);
        EXPECT_EQ(r.status, 1) << c.name << ": " << r.out;
        EXPECT_NE(r.out.find("moefy: error: " + path + c.message), std::string::npos) << c.name << ": " << r.out;
        EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << c.name << ": one line: " << r.out;
    }
}

// fuzz_gguf finding (a timeout): block_count from the metadata sized the list of
// expected tensors before any was looked up, so a 16 KB file with block_count
// 2^31-1 spent minutes building names. The walk now stops at the first tensor
// the file lacks: the work is bounded by the file.
TEST(GgufReader, HugeCountsInTheMetadataFailFast) {
    const DemoGguf demo;
    const std::string path = demo.with_kv("deep.gguf", [](std::vector<GgufKV>& kv) {
        for (GgufKV& e : kv)
            if (e.key == "llama.block_count") e.value = GgufValue::u32(0x7fffffffu);
    });
    const auto t0 = std::chrono::steady_clock::now();
    try {
        (void)Checkpoint::open(path);
        FAIL() << "opened";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("tensor 'blk.6.attn_norm.weight' not found"), std::string::npos) << e.what();
    }
    EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 5.0);
}
