// moefy import llama-moe: torch.save'd LLaMA-MoE split and importance files
// (tests/data/llama_moe, made by scripts/make-llama-moe-fixtures.py with
// Debian's python3-torch) against the plans moefy builds itself, and the
// restricted unpickler / ZIP reader against hostile input.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "common/error.h"
#include "common/rng.h"
#include "io/pickle.h"
#include "io/torch_save.h"
#include "io/zip_reader.h"
#include "model/checkpoint.h"
#include "split/cluster_split.h"
#include "split/llama_moe_import.h"
#include "split/random_split.h"
#include "test_util.h"
#include "tiny_model.h"

using namespace moefy;
namespace fs = std::filesystem;

namespace {

std::string fixtures() { return std::string(MOEFY_SOURCE_DIR) + "/tests/data/llama_moe"; }
std::string gradient_dir() { return fixtures() + "/tinyllama-demo-Split-Gradient-max-l1_norm-sample-feature_change"; }
std::string importance_dir() { return fixtures() + "/Gradients12/tinyllama-demo-Gradients-l1_norm-sample-feature_change"; }

const Checkpoint& demo() {
    static const Checkpoint ck = Checkpoint::open(demo_model_dir());
    return ck;
}

// Same model, same experts (routed and shared, neuron order included).
void expect_same_split(const ExpertPlan& a, const ExpertPlan& b, const std::string& what) {
    ASSERT_EQ(a.num_layers, b.num_layers) << what;
    EXPECT_EQ(a.hidden_size, b.hidden_size) << what;
    EXPECT_EQ(a.intermediate_size, b.intermediate_size) << what;
    EXPECT_EQ(a.ffn_fingerprint, b.ffn_fingerprint) << what;
    for (int l = 0; l < a.num_layers; ++l) {
        EXPECT_EQ(a.layers[size_t(l)].experts, b.layers[size_t(l)].experts) << what << ": layer " << l;
        EXPECT_EQ(a.layers[size_t(l)].shared, b.layers[size_t(l)].shared) << what << ": layer " << l;
    }
}

std::string bytes(std::initializer_list<int> b) {
    std::string s;
    for (int c : b) s.push_back(char(c));
    return s;
}

std::string pickle_error(const std::string& p) {
    return error_of([&] { parse_pickle(reinterpret_cast<const uint8_t*>(p.data()), p.size(), "mem.pkl"); });
}

bool python_has_torch() {
    // find_spec, not import: importing torch alone takes seconds.
    return std::system("/usr/bin/python3 -c 'import importlib.util as u, sys; "
                       "sys.exit(u.find_spec(\"torch\") is None or u.find_spec(\"numpy\") is None)' >/dev/null 2>&1") == 0;
}

}  // namespace

TEST(ImportLlamaMoe, LabelFoldersEqualTheSplitsMoefyBuilds) {
    // Random: moefy's own seeded split, written as the reference's list of ints.
    const ExpertPlan random = import_llama_moe_split(fixtures() + "/tinyllama-demo-8Expert-Split-Random", demo());
    expect_same_split(random, random_split(demo(), 8, 5), "random");
    EXPECT_EQ(random.method, "random");
    EXPECT_EQ(random.params["content"], "list of int");
    EXPECT_EQ(random.params["imported_from"], "llama-moe");
    EXPECT_EQ(random.ffn_fingerprint, ffn_fingerprint(*demo().tensors, demo().config));

    // Clustering: numpy int32 scalars.
    ClusterSplitOptions co;
    co.experts = 4;
    const ExpertPlan cluster = import_llama_moe_split(fixtures() + "/tinyllama-demo-4Expert-Split-Clustering-l2", demo());
    expect_same_split(cluster, cluster_split(demo(), co), "cluster");
    EXPECT_EQ(cluster.method, "cluster");
    EXPECT_EQ(cluster.params["content"], "list of numpy.int32");
    EXPECT_EQ(cluster.params["metric"], "l2");

    // Graph: protocol-2 lists in gp_split/, beside METIS text files of the same names; moefy's graph plan.
    const ExpertPlan graph = import_llama_moe_split(fixtures() + "/tinyllama-demo-16Expert-Split-Graph-l1_norm", demo());
    expect_same_split(graph, ExpertPlan::load(fixtures() + "/source_plans/graph.json"), "graph");
    EXPECT_EQ(graph.method, "graph");
    EXPECT_TRUE(graph.is_partition());
    EXPECT_NE(graph.params["split_dir"].get<std::string>().find("gp_split"), std::string::npos);
}

TEST(ImportLlamaMoe, GradientFoldersEqualMoefysSplitOfTheImportedScores) {
    // The reference's algorithms (in the fixture script) and moefy's gradient split, on the same .change files.
    TempDir tmp;
    const std::string imp = tmp.path + "/importance.safetensors";
    write_importance_scores(imp, import_llama_moe_importance(importance_dir(), demo()));
    const ImportanceFile f = read_importance(imp);
    EXPECT_EQ(f.clusters, 12);
    EXPECT_EQ(f.metadata.at("cluster_names"), R"(["0","1","10","11","2","3","4","5","6","7","8","9"])");
    check_importance_for(f, demo().config, ffn_fingerprint(*demo().tensors, demo().config));

    struct Case {
        const char* folder;
        int experts, residual, size;
        bool share;
    } cases[] = {{"12Experts-64Neurons", 12, 0, 0, false},
                 {"12Experts-96Neurons-Share", 12, 0, 96, true},
                 {"11Experts-1Residuals-64Neurons", 12, 1, 64, false},
                 {"11Experts-1Residuals-64Neurons-Share", 12, 1, 64, true}};
    for (const Case& c : cases) {
        GradientSplitOptions o;
        o.experts = c.experts;
        o.residual = c.residual;
        o.expert_size = c.size;
        o.share = c.share;
        o.compare = false;
        const ExpertPlan ours = gradient_split_from_importance(f, ImportanceTarget::Up, o);
        EXPECT_EQ(ours.params["cluster_order"], "lexicographic");
        const ExpertPlan imported = import_llama_moe_split(gradient_dir() + "/" + c.folder, demo());
        expect_same_split(imported, ours, c.folder);
        EXPECT_EQ(imported.method, "gradient") << c.folder;
        EXPECT_EQ(imported.num_shared(), c.residual) << c.folder;
        EXPECT_EQ(imported.params["share"], c.share) << c.folder;
    }
    const ExpertPlan labels = import_llama_moe_split(gradient_dir() + "/12Experts-64Neurons", demo());
    EXPECT_EQ(labels.params["content"], "numpy.ndarray float64 [768]");
    EXPECT_TRUE(labels.is_partition());
}

TEST(ImportLlamaMoe, NumericClusterOrderPermutesTheClusters) {
    const ImportanceFile lex = import_llama_moe_importance(importance_dir(), demo());
    LlamaMoeImportanceOptions o;
    o.cluster_order = "numeric";
    const ImportanceFile num = import_llama_moe_importance(importance_dir(), demo(), o);
    // Lexicographic position of numeric cluster k: 0 1 10 11 2 3 ... 9.
    const int lex_pos[12] = {0, 1, 4, 5, 6, 7, 8, 9, 10, 11, 2, 3};
    for (int l = 0; l < 6; ++l)
        for (int k = 0; k < 12; ++k) {
            EXPECT_EQ(num.up[size_t(l)][size_t(k)], lex.up[size_t(l)][size_t(lex_pos[k])]);
            EXPECT_EQ(num.gate[size_t(l)][size_t(k)], lex.gate[size_t(l)][size_t(lex_pos[k])]);
        }
    EXPECT_NE(num.up[0][2], lex.up[0][2]);
    EXPECT_EQ(num.settings.kind, ImportanceKind::FeatureChange);
    EXPECT_EQ(num.settings.kernel, ImportanceKernel::L1);  // from the folder name "-Gradients-l1_norm-sample-..."
}

TEST(ImportLlamaMoe, CliImportsAndRefusesWithOneLine) {
    TempDir tmp;
    const std::string M = demo_model_dir();
    CliResult r = run_cli("import llama-moe --split-dir " + fixtures() + "/tinyllama-demo-8Expert-Split-Random --model " + M +
                          " --out " + tmp.path + "/plan.json");
    ASSERT_EQ(r.status, 0) << r.out;
    expect_same_split(ExpertPlan::load(tmp.path + "/plan.json"), random_split(demo(), 8, 5), "cli random");
    r = run_cli("import llama-moe --importance-dir " + importance_dir() + " --model " + M + " --out " + tmp.path + "/imp.safetensors");
    ASSERT_EQ(r.status, 0) << r.out;
    EXPECT_EQ(read_importance(tmp.path + "/imp.safetensors").clusters, 12);

    r = run_cli("import llama-moe --model " + M + " --out " + tmp.path + "/x.json");
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.out.find("give --split-dir or --importance-dir"), std::string::npos) << r.out;
    r = run_cli("import llama-moe --split-dir " + fixtures() + "/evil/os_system --model " + M + " --out " + tmp.path + "/evil.json");
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.out.find("refuses global 'posix.system'"), std::string::npos) << r.out;
    EXPECT_FALSE(fs::exists(tmp.path + "/evil.json"));

    // Files for another model: a 24-wide FFN, and a 2-layer model.
    TinyModelSpec narrow;
    narrow.layers = 6;
    narrow.intermediate = 24;
    const std::string narrow_dir = write_tiny_model(tmp.path + "/narrow", narrow);
    r = run_cli("import llama-moe --split-dir " + fixtures() + "/tinyllama-demo-8Expert-Split-Random --model " + narrow_dir +
                " --out " + tmp.path + "/n.json");
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.out.find("holds 768 labels, but the FFN"), std::string::npos) << r.out;
    TinyModelSpec shallow;
    shallow.layers = 2;
    shallow.intermediate = 768;
    const std::string shallow_dir = write_tiny_model(tmp.path + "/shallow", shallow);
    EXPECT_NE(error_of([&] { import_llama_moe_split(fixtures() + "/tinyllama-demo-8Expert-Split-Random", Checkpoint::open(shallow_dir)); })
                  .find("has a split file for layer 2"),
              std::string::npos);
    EXPECT_NE(error_of([&] { import_llama_moe_importance(importance_dir(), Checkpoint::open(narrow_dir)); }).find("holds 768 scores"),
              std::string::npos);
}

TEST(ImportLlamaMoe, PickleWithOsSystemIsRefusedAndNeverRun) {
    fs::remove("/tmp/moefy-pickle-was-executed");
    const std::string f = fixtures() + "/evil/os_system/layers.0.mlp.up_proj.weight";
    const std::string e = error_of([&] { read_torch_save(f); });
    EXPECT_NE(e.find(f), std::string::npos) << e;
    EXPECT_NE(e.find("refuses global 'posix.system'"), std::string::npos) << e;  // os.system pickles as posix.system
    EXPECT_NE(e.find("pickle byte "), std::string::npos) << e;
    EXPECT_FALSE(fs::exists("/tmp/moefy-pickle-was-executed"));
    // The same globals spelled directly, with the byte offset of the GLOBAL opcode.
    for (const char* g : {"os\nsystem\n", "builtins\neval\n", "subprocess\nPopen\n", "torch\nload\n", "numpy\nload\n"}) {
        const std::string p = bytes({0x80, 0x02}) + "c" + g + "(X\x02\0\0\0idtR.";
        std::string name = g;
        name[name.find('\n')] = '.';
        name.pop_back();
        const std::string err = pickle_error(p);
        EXPECT_NE(err.find("mem.pkl: pickle byte 2: refuses global '" + name + "'"), std::string::npos) << err;
    }
}

TEST(ImportLlamaMoe, PickleWithUnknownOpcodeIsRefused) {
    EXPECT_NE(pickle_error(bytes({0x80, 0x02, 0xff, '.'})).find("mem.pkl: pickle byte 2: unknown opcode 0xff"), std::string::npos);
    // Known opcodes torch.save never writes are refused by name: INST, OBJ, NEWOBJ, EXT1, out-of-band buffers.
    EXPECT_NE(pickle_error(bytes({0x80, 0x02, ']', 'i'}) + "os\nsystem\n.").find("refuses opcode INST"), std::string::npos);
    EXPECT_NE(pickle_error(bytes({0x80, 0x04, '(', 'o', '.'})).find("refuses opcode OBJ"), std::string::npos);
    EXPECT_NE(pickle_error(bytes({0x80, 0x02, 0x82, 0x01, '.'})).find("refuses opcode EXT1"), std::string::npos);
    EXPECT_NE(pickle_error(bytes({0x80, 0x05, 0x97, '.'})).find("refuses opcode NEXT_BUFFER"), std::string::npos);
    EXPECT_NE(pickle_error(bytes({0x80, 0x01, ']', '.'})).find("pickle protocol 1"), std::string::npos);
}

TEST(ImportLlamaMoe, TruncatedPickleStreamIsRefusedAtEveryLength) {
    const ZipArchive z = ZipArchive::open(gradient_dir() + "/12Experts-64Neurons/layers.0.mlp.up_proj.weight");
    const ZipEntry* pkl = nullptr;
    for (const ZipEntry& e : z.entries())
        if (e.name.ends_with("/data.pkl")) pkl = &e;
    ASSERT_NE(pkl, nullptr);
    const auto b = z.bytes(*pkl);
    const PickleTree whole = parse_pickle(b.data(), b.size(), "whole");
    ASSERT_EQ(whole.top().kind, PyKind::Array);
    EXPECT_EQ(whole.top().elem, ElemType::F64);
    EXPECT_EQ(whole.top().shape, std::vector<int64_t>{768});
    for (size_t n = 0; n < b.size(); ++n) {
        const std::string e = error_of([&] { parse_pickle(b.data(), n, "cut.pkl"); });
        EXPECT_EQ(e.rfind("cut.pkl: pickle byte ", 0), 0u) << n << ": " << e;
    }
    const std::string e = error_of([&] { parse_pickle(b.data(), b.size() - 1, "cut.pkl"); });
    EXPECT_NE(e.find("cut.pkl: pickle byte 2: truncated: FRAME of"), std::string::npos) << e;  // the frame promised more
    const std::string unframed = bytes({0x80, 0x02, ']', 'K', 7, 'a'});
    EXPECT_NE(pickle_error(unframed).find("pickle byte 6: truncated: the stream ends without STOP"), std::string::npos);
    const std::string mid = error_of([&] { parse_pickle(b.data(), 60, "cut.pkl"); });
    EXPECT_NE(mid.find("truncated"), std::string::npos) << mid;
}

TEST(ImportLlamaMoe, ZipWithAnEntryPastTheEndIsRefused) {
    const std::string path = fixtures() + "/Gradients12/tinyllama-demo-Gradients-l1_norm-sample-feature_change/0/layers.0.mlp.up_proj.weight.change";
    const std::string good = read_file(path);
    const TorchSaveFile t = read_torch_save_memory(reinterpret_cast<const uint8_t*>(good.data()), good.size(), "good.change");
    ASSERT_EQ(t.tree.top().kind, PyKind::Array);
    EXPECT_EQ(t.tree.top().origin, "torch.FloatStorage");
    EXPECT_EQ(t.tree.top().shape, std::vector<int64_t>{768});

    // The storage entry's size in the central directory grown past the end of the entries.
    std::string bad = good;
    size_t cd = std::string::npos;
    for (size_t at = bad.find("PK\x01\x02"); at != std::string::npos; at = bad.find("PK\x01\x02", at + 4)) {
        const size_t nlen = uint8_t(bad[at + 28]) | size_t(uint8_t(bad[at + 29])) << 8;
        if (bad.substr(at + 46, nlen).ends_with("/data/0")) cd = at;
    }
    ASSERT_NE(cd, std::string::npos);
    for (int k : {20, 24}) bad[cd + size_t(k) + 2] = char(0x10);  // size += 1 MiB
    const std::string e = error_of([&] { ZipArchive::from_memory(reinterpret_cast<const uint8_t*>(bad.data()), bad.size(), "bad.zip"); });
    EXPECT_NE(e.find("runs past the end of the entries"), std::string::npos) << e;

    // A local header offset past the central directory, a flipped data byte, and every truncation.
    bad = good;
    bad[cd + 42 + 3] = char(0x7f);
    EXPECT_NE(error_of([&] { ZipArchive::from_memory(reinterpret_cast<const uint8_t*>(bad.data()), bad.size(), "bad.zip"); })
                  .find("local header offset"),
              std::string::npos);
    bad = good;
    bad[t.zip.entries()[0].data_offset + 5] ^= 1;
    EXPECT_NE(error_of([&] { ZipArchive::from_memory(reinterpret_cast<const uint8_t*>(bad.data()), bad.size(), "bad.zip"); }).find("CRC-32"),
              std::string::npos);
    for (size_t n = 0; n < good.size(); n += 7)
        EXPECT_NE(error_of([&] { read_torch_save_memory(reinterpret_cast<const uint8_t*>(good.data()), n, "cut.zip"); }), "(no error)") << n;
}

TEST(ImportLlamaMoe, PickleLimitsBoundMemoryAndNestingDoesNotRecurse) {
    // A tiny stream cannot ask for big allocations: lengths are checked against the bytes left.
    EXPECT_NE(pickle_error(bytes({0x80, 0x04, 0x8d, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, '.'})).find("truncated: BINUNICODE8 needs"),
              std::string::npos);
    EXPECT_NE(pickle_error(bytes({0x80, 0x05, 0x96, 0, 0, 0, 0, 0, 0, 0, 0x40, '.'})).find("truncated: BYTEARRAY8"), std::string::npos);
    EXPECT_NE(pickle_error(bytes({0x80, 0x02, 'j', 0xff, 0xff, 0xff, 0xff, '.'})).find("memo entry 4294967295 was never stored"),
              std::string::npos);
    EXPECT_NE(pickle_error(bytes({0x80, 0x02, 0x8b, 0x00, 0x00, 0x00, 0x40})).find("integer of 1073741824 bytes"), std::string::npos);
    std::string many(2000, ']');
    PickleLimits lim;
    lim.max_stack = 1000;
    EXPECT_NE(error_of([&] { parse_pickle(reinterpret_cast<const uint8_t*>(many.data()), many.size(), "many", {}, lim); })
                  .find("stack deeper than 1000"),
              std::string::npos);
    // 200000 nested tuples: parsed by a loop into a flat arena, no recursion to overflow.
    std::string deep = bytes({0x80, 0x02, ')'}) + std::string(200000, char(0x85)) + ".";
    const PickleTree t = parse_pickle(reinterpret_cast<const uint8_t*>(deep.data()), deep.size(), "deep");
    EXPECT_EQ(t.values.size(), 200001u);
    EXPECT_EQ(t.top().kind, PyKind::Tuple);
    // A list appended into itself is just an index; the importer refuses it as not a list of ints.
    const std::string self = bytes({0x80, 0x02, ']', 'q', 0, 'h', 0, 'a', '.'});
    const PickleTree s = parse_pickle(reinterpret_cast<const uint8_t*>(self.data()), self.size(), "self");
    EXPECT_EQ(s.top().items, std::vector<uint32_t>{s.root});
    EXPECT_NE(error_of([&] { reference_split_from_tree(s, "self"); }).find("self (list 0): entry 0 is a list"), std::string::npos);
}

TEST(ImportLlamaMoe, RegeneratedFixturesImportTheSame) {
    // The label folders only (about 1.5 s on an idle machine, most of it importing torch); the gradient part is the same script's
    // other half and is checked by GradientFoldersEqualMoefysSplitOfTheImportedScores on the committed files.
    if (!python_has_torch()) GTEST_SKIP() << "/usr/bin/python3 without torch/numpy (apt-get install python3-torch)";
    TempDir tmp;
    const std::string cmd = "/usr/bin/python3 " + std::string(MOEFY_SOURCE_DIR) + "/scripts/make-llama-moe-fixtures.py --out " +
                            tmp.path + " --plans " + fixtures() + "/source_plans --parts labels >/dev/null 2>&1";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    for (const std::string d : {"/tinyllama-demo-8Expert-Split-Random", "/tinyllama-demo-4Expert-Split-Clustering-l2",
                                "/tinyllama-demo-16Expert-Split-Graph-l1_norm", "/compat/numpy-protocol2", "/compat/torch-int64"})
        expect_same_split(import_llama_moe_split(tmp.path + d, demo()), import_llama_moe_split(fixtures() + d, demo()), d);
    EXPECT_NE(error_of([&] { import_llama_moe_split(tmp.path + "/evil/os_system", demo()); }).find("refuses global 'posix.system'"),
              std::string::npos);
}

TEST(ImportLlamaMoe, OtherEncodingsOfTheSameLabels) {
    // numpy float64 labels under torch.save's default protocol 2 (numpy _reconstruct, bytes through
    // _codecs.encode), and an int64 torch tensor: the same random split.
    LlamaMoeSplitOptions o;
    o.method = "random";
    const ExpertPlan p2 = import_llama_moe_split(fixtures() + "/compat/numpy-protocol2", demo(), o);
    expect_same_split(p2, random_split(demo(), 8, 5), "numpy protocol 2");
    EXPECT_EQ(p2.method, "random");
    EXPECT_EQ(p2.params["content"], "numpy.ndarray float64 [768]");
    const ExpertPlan t = import_llama_moe_split(fixtures() + "/compat/torch-int64", demo());
    expect_same_split(t, random_split(demo(), 8, 5), "torch int64");
    EXPECT_EQ(t.params["content"], "torch.LongStorage int64 [768]");
    EXPECT_EQ(t.method, "llama-moe");  // nothing in the folder name says which method made it
    o.method = "magic";
    EXPECT_NE(error_of([&] { import_llama_moe_split(fixtures() + "/compat/torch-int64", demo(), o); }).find("--method 'magic'"),
              std::string::npos);
}

namespace {

std::string le(uint64_t v, int n) {
    std::string s;
    for (int k = 0; k < n; ++k) s.push_back(char((v >> (8 * k)) & 0xff));
    return s;
}

// A stored archive whose every size and offset lives in ZIP64 fields (the 32-bit ones saturated).
std::string zip64_archive(const std::vector<std::pair<std::string, std::string>>& entries) {
    std::string out, cd;
    for (const auto& [name, data] : entries) {
        const uint32_t crc = crc32_ieee(reinterpret_cast<const uint8_t*>(data.data()), data.size());
        const uint64_t at = out.size();
        out += le(0x04034b50, 4) + le(45, 2) + le(0, 2) + le(0, 2) + le(0, 4) + le(crc, 4) + le(0xffffffff, 4) +
               le(0xffffffff, 4) + le(name.size(), 2) + le(20, 2) + name + le(1, 2) + le(16, 2) + le(data.size(), 8) +
               le(data.size(), 8) + data;
        cd += le(0x02014b50, 4) + le(45, 2) + le(45, 2) + le(0, 2) + le(0, 2) + le(0, 4) + le(crc, 4) + le(0xffffffff, 4) +
              le(0xffffffff, 4) + le(name.size(), 2) + le(28, 2) + le(0, 2) + le(0, 2) + le(0, 2) + le(0, 4) +
              le(0xffffffff, 4) + name + le(1, 2) + le(24, 2) + le(data.size(), 8) + le(data.size(), 8) + le(at, 8);
    }
    const uint64_t cd_at = out.size();
    out += cd;
    const uint64_t z = out.size();
    out += le(0x06064b50, 4) + le(44, 8) + le(45, 2) + le(45, 2) + le(0, 4) + le(0, 4) + le(entries.size(), 8) +
           le(entries.size(), 8) + le(cd.size(), 8) + le(cd_at, 8);
    out += le(0x07064b50, 4) + le(0, 4) + le(z, 8) + le(1, 4);
    out += le(0x06054b50, 4) + le(0, 2) + le(0, 2) + le(0xffff, 2) + le(0xffff, 2) + le(0xffffffff, 4) + le(0xffffffff, 4) +
           le(0, 2);
    return out;
}

}  // namespace

TEST(ImportLlamaMoe, Zip64FieldsAreRead) {
    const std::string pkl = bytes({0x80, 0x02, ']', 'q', 0, '(', 'K', 7, 'K', 3, 'e', '.'});
    const std::string zip = zip64_archive({{"archive/data.pkl", pkl}, {"archive/version", "3\n"}});
    const TorchSaveFile t = read_torch_save_memory(reinterpret_cast<const uint8_t*>(zip.data()), zip.size(), "z64.pt");
    EXPECT_EQ(t.prefix, "archive");
    ASSERT_EQ(t.zip.entries().size(), 2u);
    EXPECT_EQ(t.zip.entries()[0].size, pkl.size());
    ASSERT_EQ(t.tree.top().kind, PyKind::List);
    ASSERT_EQ(t.tree.top().items.size(), 2u);
    EXPECT_EQ(t.tree.at(t.tree.top().items[0]).i, 7);
    EXPECT_EQ(t.tree.at(t.tree.top().items[1]).i, 3);
    // A ZIP64 central directory offset past its record, and an entry name that climbs out of the archive.
    std::string bad = zip;
    const size_t rec = bad.find(le(0x06064b50, 4));
    bad.replace(rec + 48, 8, le(1u << 20, 8));
    EXPECT_NE(error_of([&] { ZipArchive::from_memory(reinterpret_cast<const uint8_t*>(bad.data()), bad.size(), "z64.pt"); })
                  .find("central directory"),
              std::string::npos);
    const std::string climb = zip64_archive({{"../data.pkl", pkl}});
    EXPECT_NE(error_of([&] { ZipArchive::from_memory(reinterpret_cast<const uint8_t*>(climb.data()), climb.size(), "z.pt"); })
                  .find("bad name"),
              std::string::npos);
}

TEST(ImportLlamaMoe, MutatedFilesFailCleanly) {
    // Random byte changes to real files, through the ZIP reader and straight into the unpickler: every
    // outcome is a parsed tree or a moefy::Error, never a crash or another exception.
    Rng rng(7, 0);
    for (const std::string rel : {"/tinyllama-demo-4Expert-Split-Clustering-l2/layers.0.mlp.up_proj.weight",
                                  "/compat/numpy-protocol2/layers.0.mlp.up_proj.weight",
                                  "/Gradients12/tinyllama-demo-Gradients-l1_norm-sample-feature_change/3/layers.1.mlp.gate_proj.weight.change"}) {
        const std::string good = read_file(fixtures() + rel);
        const ZipArchive z = ZipArchive::from_memory(reinterpret_cast<const uint8_t*>(good.data()), good.size(), rel);
        std::string pkl;
        for (const ZipEntry& e : z.entries())
            if (e.name.ends_with("/data.pkl")) pkl.assign(reinterpret_cast<const char*>(z.bytes(e).data()), e.size);
        ASSERT_FALSE(pkl.empty()) << rel;
        const std::vector<uint8_t> storage(768 * 4);
        const StorageLoader loader = [&](const std::string&, ElemType t, int64_t n) {
            if (uint64_t(n) * elem_size(t) > storage.size()) fail("storage too large");
            return std::span<const uint8_t>(storage.data(), size_t(n) * elem_size(t));
        };
        int parsed = 0;
        for (int trial = 0; trial < 1500; ++trial) {
            std::string p = pkl, f = good;
            for (int k = 0, n = 1 + int(rng.next() % 3); k < n; ++k) {
                p[rng.next() % p.size()] = char(rng.next());
                f[rng.next() % f.size()] = char(rng.next());
            }
            try {
                parse_pickle(reinterpret_cast<const uint8_t*>(p.data()), p.size(), "mutated.pkl", loader);
                ++parsed;
            } catch (const Error&) {
            }
            try {
                read_torch_save_memory(reinterpret_cast<const uint8_t*>(f.data()), f.size(), "mutated.zip");
            } catch (const Error&) {
            }
        }
        EXPECT_GT(parsed, 0) << rel;  // some changes (inside numbers) leave a valid stream
    }
}
