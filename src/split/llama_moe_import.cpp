#include "split/llama_moe_import.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>

#include "common/error.h"
#include "io/dtype.h"
#include "io/pickle.h"
#include "io/torch_save.h"
#include "model/checkpoint.h"

namespace moefy {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// ---- values out of the pickle tree

// Element k of an array as a double.
double array_elem(const PyValue& a, size_t k) {
    const uint8_t* p = a.data.data() + k * elem_size(a.elem);
    switch (a.elem) {
        case ElemType::Bool: return p[0] != 0;
        case ElemType::U8: return p[0];
        case ElemType::I8: return int8_t(p[0]);
        case ElemType::I16: { int16_t x; std::memcpy(&x, p, 2); return x; }
        case ElemType::I32: { int32_t x; std::memcpy(&x, p, 4); return x; }
        case ElemType::I64: { int64_t x; std::memcpy(&x, p, 8); return double(x); }
        case ElemType::F16: { uint16_t x; std::memcpy(&x, p, 2); return f16_to_f32(x); }
        case ElemType::BF16: { uint16_t x; std::memcpy(&x, p, 2); return bf16_to_f32(x); }
        case ElemType::F32: { float x; std::memcpy(&x, p, 4); return x; }
        case ElemType::F64: { double x; std::memcpy(&x, p, 8); return x; }
    }
    return 0;
}

int64_t array_int(const PyValue& a, size_t k) {
    if (a.elem == ElemType::I64) {
        int64_t x;
        std::memcpy(&x, a.data.data() + k * 8, 8);
        return x;
    }
    return int64_t(array_elem(a, k));
}

// A neuron id or expert label: an int, or a float that is integral (the reference's float64 labels).
int64_t integral(double v, const std::string& where, size_t at) {
    if (!std::isfinite(v) || v != std::floor(v) || std::fabs(v) > 9.0e15)
        fail("{}: entry {} is {}, not a whole number", where, at, v);
    return int64_t(v);
}

std::vector<int64_t> int_sequence(const PickleTree& t, const PyValue& v, const std::string& where, std::string& elem_desc) {
    std::vector<int64_t> out;
    if (v.kind == PyKind::Array) {
        if (v.shape.size() != 1)
            fail("{}: holds an array of shape ({}); expected one dimension", where, fmt::join(v.shape, ", "));
        if (v.elem == ElemType::Bool) fail("{}: holds a bool array; expected integers", where);
        elem_desc = fmt::format("{} {} [{}]", v.origin, elem_type_name(v.elem), v.shape[0]);
        out.reserve(size_t(v.shape[0]));
        for (size_t k = 0; k < size_t(v.shape[0]); ++k)
            out.push_back(elem_is_float(v.elem) ? integral(array_elem(v, k), where, k) : array_int(v, k));
        return out;
    }
    if (v.kind != PyKind::List && v.kind != PyKind::Tuple)
        fail("{}: holds a {}; expected a list or array of integers", where, py_kind_name(v.kind));
    out.reserve(v.items.size());
    for (size_t k = 0; k < v.items.size(); ++k) {
        const PyValue& x = t.at(v.items[k]);
        if (x.kind == PyKind::Int) out.push_back(x.i);
        else if (x.kind == PyKind::Float) out.push_back(integral(x.f, where, k));
        else fail("{}: entry {} is a {}; expected an integer", where, k, py_kind_name(x.kind));
        const std::string d = x.origin.empty() ? (x.kind == PyKind::Int ? "int" : "float") : x.origin;
        if (k == 0) elem_desc = d;
        else if (elem_desc != d && elem_desc != "mixed") elem_desc = "mixed";
    }
    elem_desc = fmt::format("{} of {}", py_kind_name(v.kind), elem_desc.empty() ? "nothing" : elem_desc);
    return out;
}

std::string layer_file(const std::string& tmpl, int layer) {
    const size_t at = tmpl.find("{}");
    return tmpl.substr(0, at) + std::to_string(layer) + tmpl.substr(at + 2);
}

bool is_zip(const fs::path& p) {
    std::ifstream f(p, std::ios::binary);
    char b[2] = {0, 0};
    f.read(b, 2);
    return f.gcount() == 2 && b[0] == 'P' && b[1] == 'K';
}

// The folder names that describe a reference output: the folder itself and two above.
std::vector<std::string> describing_names(const fs::path& dir) {
    std::vector<std::string> names;
    fs::path p = fs::absolute(dir).lexically_normal();
    if (p.filename().empty()) p = p.parent_path();
    for (int k = 0; k < 3 && !p.filename().empty(); ++k, p = p.parent_path()) names.push_back(p.filename().string());
    return names;
}

const char* kKnownMethods[] = {"random", "cluster", "graph", "gradient"};

}  // namespace

ReferenceSplitFile reference_split_from_tree(const PickleTree& t, const std::string& where) {
    const PyValue& top = t.top();
    ReferenceSplitFile r;
    if (top.kind == PyKind::Dict)
        fail("{}: holds a dict; LLaMA-MoE v1 split files hold a list (v2's neuron_indices.pt is not supported)", where);
    if (top.kind == PyKind::Array) {
        r.format = ReferenceSplitFile::Format::Labels;
        r.labels = int_sequence(t, top, where, r.content);
        return r;
    }
    if (top.kind != PyKind::List)
        fail("{}: holds a {}; expected a list or array of expert labels, or a list of neuron-id lists", where,
             py_kind_name(top.kind));
    if (top.items.empty()) fail("{}: holds an empty list", where);
    const PyKind first = t.at(top.items[0]).kind;
    const bool nested = first == PyKind::List || first == PyKind::Tuple || first == PyKind::Array;
    if (!nested) {
        r.format = ReferenceSplitFile::Format::Labels;
        r.labels = int_sequence(t, top, where, r.content);
        return r;
    }
    r.format = ReferenceSplitFile::Format::IndexLists;
    std::string inner;
    for (size_t e = 0; e < top.items.size(); ++e) {
        const PyValue& x = t.at(top.items[e]);
        if (x.kind != PyKind::List && x.kind != PyKind::Tuple && x.kind != PyKind::Array)
            fail("{}: entry {} is a {}, entry 0 a list: expected a list of neuron-id lists", where, e, py_kind_name(x.kind));
        std::string d;
        r.lists.push_back(int_sequence(t, x, fmt::format("{} (list {})", where, e), d));
        if (e == 0) inner = d;
    }
    r.content = fmt::format("list of {} lists ({})", r.lists.size(), inner);
    return r;
}

ReferenceSplitFile read_reference_split_file(const std::string& path) {
    const TorchSaveFile f = read_torch_save(path);
    return reference_split_from_tree(f.tree, path);
}

ExpertPlan import_llama_moe_split(const std::string& dir_in, const Checkpoint& model, const LlamaMoeSplitOptions& opt) {
    const ModelConfig& cfg = model.config;
    if (cfg.is_moe()) fail("{}: already an MoE model ({}); split files apply to dense models", model.dir, model_kind_name(cfg.kind));
    const int L = cfg.num_layers, I = cfg.intermediate_size;
    fs::path dir(dir_in);
    if (!fs::is_directory(dir)) fail("{}: not a directory (expected a LLaMA-MoE split folder)", dir_in);

    // Which files: the template, and gp_split/ for the graph method, whose folder above holds METIS text files.
    std::string tmpl = opt.template_name;
    auto exists_here = [&](const fs::path& d, const std::string& t) { return fs::is_regular_file(d / layer_file(t, 0)); };
    if (!tmpl.empty()) {
        const size_t at = tmpl.find("{}");
        if (at == std::string::npos || tmpl.find("{}", at + 2) != std::string::npos || tmpl.find('/') != std::string::npos)
            fail("--template '{}' must be a file name with one '{{}}' for the layer index", tmpl);
    } else {
        std::vector<std::string> found;
        for (const char* t : {"layers.{}.mlp.up_proj.weight", "layers.{}.mlp.gate_proj.weight"})
            if (exists_here(dir, t) || exists_here(dir / "gp_split", t)) found.push_back(t);
        if (found.empty())
            fail("{}: no layers.0.mlp.up_proj.weight or layers.0.mlp.gate_proj.weight (give --template for other names)", dir_in);
        if (found.size() > 1)
            fail("{}: holds both up_proj and gate_proj split files (independent draws in the reference's one4all "
                 "runs); choose one with --template 'layers.{{}}.mlp.up_proj.weight'", dir_in);
        tmpl = found[0];
    }
    bool used_gp_split = false;
    const fs::path gp = dir / "gp_split";
    if ((!exists_here(dir, tmpl) || !is_zip(dir / layer_file(tmpl, 0))) && exists_here(gp, tmpl)) {
        dir = gp;
        used_gp_split = true;
    }
    for (int l = 0; l < L; ++l)
        if (!fs::is_regular_file(dir / layer_file(tmpl, l)))
            fail("{}: no split file for layer {} ({}); {} has {} layers", dir.string(), l, layer_file(tmpl, l), model.dir, L);
    if (fs::exists(dir / layer_file(tmpl, L)))
        fail("{}: has a split file for layer {} ({}), but {} has only {} layers: made for another model", dir.string(), L,
             layer_file(tmpl, L), model.dir, L);

    // What the folder names say (reference §1-§6 naming).
    std::string reference_name, method_from_name;
    int named_experts = 0, named_residual = -1, named_size = 0;
    json name_params = json::object();
    const std::regex label_re(R"((\d+)Expert-Split-(Random|Clustering|Graph)(?:-(.+))?$)");
    const std::regex grad_re(R"(-Split-Gradient-(max|min)-([A-Za-z0-9_]+)-(sample|total)-(feature_change|feature_grad)$)");
    const std::regex size_re(R"(^(\d+)Experts-(?:(\d+)Residuals-)?(\d+)Neurons(-Share)?$)");
    for (const std::string& n : describing_names(dir)) {
        std::smatch m;
        if (method_from_name.empty() && std::regex_search(n, m, label_re)) {
            reference_name = reference_name.empty() ? n : reference_name;
            named_experts = named_experts ? named_experts : std::stoi(m[1].str());
            const std::string kind = m[2].str();
            method_from_name = kind == "Random" ? "random" : kind == "Clustering" ? "cluster" : "graph";
            if (m[3].matched) name_params["metric"] = m[3].str();
        } else if (method_from_name.empty() && std::regex_search(n, m, grad_re)) {
            reference_name = n;
            method_from_name = "gradient";
            name_params["criterion"] = m[1].str();
            name_params["kernel"] = m[2].str();
            name_params["level"] = m[3].str();
            name_params["kind"] = m[4].str();
        } else if (std::regex_match(n, m, size_re)) {
            reference_name = n;
            named_experts = std::stoi(m[1].str());
            if (m[2].matched) named_residual = std::stoi(m[2].str());
            named_size = std::stoi(m[3].str());
            name_params["expert_size"] = named_size;
            name_params["share"] = m[4].matched;
        }
    }
    if (used_gp_split && method_from_name.empty()) method_from_name = "graph";

    // Every layer's file.
    std::vector<ReferenceSplitFile> files(static_cast<size_t>(L));
    for (int l = 0; l < L; ++l) {
        files[size_t(l)] = read_reference_split_file((dir / layer_file(tmpl, l)).string());
        if (files[size_t(l)].format != files[0].format)
            fail("{}: holds {}, but layer 0's file holds {}", (dir / layer_file(tmpl, l)).string(), files[size_t(l)].content,
                 files[0].content);
    }
    const bool labels = files[0].format == ReferenceSplitFile::Format::Labels;

    std::string method = opt.method;
    if (!method.empty() && std::find_if(std::begin(kKnownMethods), std::end(kKnownMethods),
                                        [&](const char* k) { return method == k; }) == std::end(kKnownMethods))
        fail("--method '{}': expected random, cluster, graph or gradient", method);
    if (method.empty()) method = method_from_name;
    if (method.empty()) {
        const std::string& c = files[0].content;
        method = !labels || c.find("float") != std::string::npos ? "gradient"
                 : c.find("numpy.int32") != std::string::npos    ? "cluster"
                                                                  : "llama-moe";  // random or graph: the name would say
    }

    ExpertPlan p;
    p.num_layers = L;
    p.hidden_size = cfg.hidden_size;
    p.intermediate_size = I;
    p.ffn_fingerprint = ffn_fingerprint(*model.tensors, cfg);
    p.method = method;
    p.layers.resize(size_t(L));
    int E = 0, R = 0;
    std::string residual_from = "none";
    if (labels) {
        if (opt.residual > 0) fail("--residual {}: the files hold expert labels, which have no residual experts", opt.residual);
        int64_t max_label = -1;
        for (int l = 0; l < L; ++l) {
            const std::string f = (dir / layer_file(tmpl, l)).string();
            const auto& lab = files[size_t(l)].labels;
            if (lab.size() != size_t(I))
                fail("{}: holds {} labels, but the FFN of {} has {} neurons (the reference writes I // E * E labels "
                     "when E does not divide I)", f, lab.size(), model.dir, I);
            for (size_t n = 0; n < lab.size(); ++n) {
                if (lab[n] < 0) fail("{}: neuron {} has the negative expert label {}", f, n, lab[n]);
                max_label = std::max(max_label, lab[n]);
            }
        }
        E = opt.experts > 0 ? opt.experts : named_experts > 0 ? named_experts : int(std::min<int64_t>(max_label + 1, I + 1));
        for (int l = 0; l < L; ++l) {
            const std::string f = (dir / layer_file(tmpl, l)).string();
            auto& experts = p.layers[size_t(l)].experts;
            experts.assign(size_t(E), {});
            const auto& lab = files[size_t(l)].labels;
            for (size_t n = 0; n < lab.size(); ++n) {
                if (lab[n] >= E)
                    fail("{}: neuron {} has expert label {}, outside the {} experts{}", f, n, lab[n], E,
                         named_experts ? " the folder name says" : "");
                experts[size_t(lab[n])].push_back(int32_t(n));  // ascending, as the reference's boolean masks visit them
            }
            for (int e = 0; e < E; ++e)
                if (experts[size_t(e)].empty()) fail("{}: expert {} of {} has no neurons", f, e, E);
        }
    } else {
        if (opt.experts > 0) fail("--experts: the files hold neuron-id lists, one per expert; their count is the expert count");
        R = opt.residual >= 0 ? opt.residual : named_residual >= 0 ? named_residual : 0;
        residual_from = opt.residual >= 0 ? "--residual" : named_residual >= 0 ? "folder name" : "none (no 'Residuals' in the folder name)";
        for (int l = 0; l < L; ++l) {
            const std::string f = (dir / layer_file(tmpl, l)).string();
            const auto& lists = files[size_t(l)].lists;
            if (int(lists.size()) <= R)
                fail("{}: holds {} lists, which leaves no routed expert after {} residual ones", f, lists.size(), R);
            if (named_experts > 0 && int(lists.size()) != named_experts + R)
                fail("{}: holds {} lists; the folder name says {} experts{}", f, lists.size(), named_experts,
                     R ? fmt::format(" and {} residual", R) : std::string());
            if (l > 0 && lists.size() != files[0].lists.size())
                fail("{}: holds {} lists, layer 0's file {}", f, lists.size(), files[0].lists.size());
            std::vector<int> stamp(size_t(I), -1);
            LayerPlan& lp = p.layers[size_t(l)];
            for (size_t e = 0; e < lists.size(); ++e) {
                if (lists[e].empty()) fail("{}: list {} is empty", f, e);
                std::vector<int32_t> ids;
                ids.reserve(lists[e].size());
                for (int64_t n : lists[e]) {
                    if (n < 0 || n >= I) fail("{}: list {} has neuron id {} outside the FFN's [0, {})", f, e, n, I);
                    if (stamp[size_t(n)] == int(e)) fail("{}: list {} names neuron {} twice", f, e, n);
                    stamp[size_t(n)] = int(e);
                    ids.push_back(int32_t(n));  // the stored order, as the reference's converter gathers them
                }
                (int(e) < R ? lp.shared : lp.experts).push_back(std::move(ids));
            }
        }
        E = int(files[0].lists.size()) - R;
    }
    p.params = {{"imported_from", "llama-moe"},
                {"split_dir", fs::absolute(dir).lexically_normal().string()},
                {"template", tmpl},
                {"format", labels ? "labels" : "index lists"},
                {"content", files[0].content},
                {"reference_name", reference_name},
                {"experts", E},
                {"residual", R}};
    if (!labels) p.params["residual_from"] = residual_from;
    for (auto it = name_params.begin(); it != name_params.end(); ++it) p.params[it.key()] = *it;
    p.validate_for(cfg, p.ffn_fingerprint, dir.string());
    return p;
}

ImportanceFile import_llama_moe_importance(const std::string& dir_in, const Checkpoint& model,
                                           const LlamaMoeImportanceOptions& opt) {
    const ModelConfig& cfg = model.config;
    if (cfg.is_moe()) fail("{}: already an MoE model ({}); importance applies to dense models", model.dir, model_kind_name(cfg.kind));
    const int L = cfg.num_layers, I = cfg.intermediate_size;
    const fs::path dir(dir_in);
    if (!fs::is_directory(dir)) fail("{}: not a directory (expected a LLaMA-MoE gradients folder of cluster folders)", dir_in);
    if (opt.cluster_order != "lexicographic" && opt.cluster_order != "numeric")
        fail("--cluster-order '{}': expected lexicographic (the reference's) or numeric", opt.cluster_order);

    // Cluster folders, in the reference's sorted(os.listdir()) order or by number.
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir)) {
        if (!e.is_directory())
            fail("{}: '{}' is not a cluster folder (the reference loads every entry as one)", dir_in, e.path().filename().string());
        names.push_back(e.path().filename().string());
    }
    if (names.empty()) fail("{}: no cluster folders", dir_in);
    std::sort(names.begin(), names.end());
    if (opt.cluster_order == "numeric") {
        std::set<long> seen;
        for (const std::string& n : names) {
            if (n.empty() || n.size() > 9 || n.find_first_not_of("0123456789") != std::string::npos)
                fail("{}: cluster folder '{}' is not a number (--cluster-order numeric)", dir_in, n);
            if (!seen.insert(std::stol(n)).second) fail("{}: two cluster folders are number {}", dir_in, std::stol(n));
        }
        std::stable_sort(names.begin(), names.end(), [](const std::string& a, const std::string& b) { return std::stol(a) < std::stol(b); });
    }
    const int K = int(names.size());

    // .change (feature_change) or .grad (feature_grad), the same in every folder.
    const std::string up0 = "layers.0.mlp.up_proj.weight";
    std::string suffix;
    for (const char* s : {".change", ".grad"})
        if (fs::is_regular_file(dir / names[0] / (up0 + s))) suffix = s;
    if (suffix.empty()) fail("{}: no {}.change (or .grad) file", (dir / names[0]).string(), up0);

    ImportanceFile f;
    f.path = dir_in;
    f.settings.kind = suffix == ".change" ? ImportanceKind::FeatureChange : ImportanceKind::FeatureGrad;
    std::string kernel = opt.kernel, level = opt.level;
    const std::regex grad_re(R"(-Gradients-([A-Za-z0-9_]+)-(sample|total)-(feature_change|feature_grad)$)");
    for (const std::string& n : describing_names(dir)) {
        std::smatch m;
        if (std::regex_search(n, m, grad_re)) {
            if (kernel.empty()) kernel = m[1].str();
            if (level.empty()) level = m[2].str();
            break;
        }
    }
    f.settings.kernel = parse_importance_kernel(kernel.empty() ? "l1" : kernel);
    f.settings.level = parse_importance_level(level.empty() ? "sample" : level);
    f.clusters = K;
    f.num_layers = L;
    f.hidden_size = cfg.hidden_size;
    f.intermediate_size = I;
    f.ffn_fingerprint = ffn_fingerprint(*model.tensors, cfg);
    f.tokens.assign(size_t(K), 0);
    f.up.assign(size_t(L), std::vector<std::vector<double>>(size_t(K)));
    f.gate = f.up;
    for (int k = 0; k < K; ++k) {
        const fs::path cd = dir / names[size_t(k)];
        for (const char* proj : {"up_proj", "gate_proj"}) {
            const std::string beyond = fmt::format("layers.{}.mlp.{}.weight{}", L, proj, suffix);
            if (fs::exists(cd / beyond))
                fail("{}: has {}, but {} has only {} layers: computed for another model", cd.string(), beyond, model.dir, L);
            for (int l = 0; l < L; ++l) {
                const fs::path file = cd / fmt::format("layers.{}.mlp.{}.weight{}", l, proj, suffix);
                if (!fs::is_regular_file(file)) fail("{}: missing (every cluster folder holds both projections' files)", file.string());
                const TorchSaveFile t = read_torch_save(file.string());
                const PyValue& v = t.tree.top();
                if (v.kind != PyKind::Array || v.shape.size() != 1 || !elem_is_float(v.elem))
                    fail("{}: holds a {}; expected a 1-D float tensor of {} scores", file.string(),
                         v.kind == PyKind::Array ? fmt::format("{} array of shape ({})", elem_type_name(v.elem), fmt::join(v.shape, ", "))
                                                 : std::string(py_kind_name(v.kind)),
                         I);
                if (v.shape[0] != I)
                    fail("{}: holds {} scores, but the FFN of {} has {} neurons", file.string(), v.shape[0], model.dir, I);
                std::vector<double> s(static_cast<size_t>(I));
                for (size_t n = 0; n < size_t(I); ++n) {
                    s[n] = array_elem(v, n);
                    if (!std::isfinite(s[n])) fail("{}: score {} is not finite", file.string(), n);
                }
                auto& dst = std::string(proj) == "up_proj" ? f.up : f.gate;
                dst[size_t(l)][size_t(k)] = std::move(s);
            }
        }
    }
    f.metadata = {{"imported_from", "llama-moe"},
                  {"data", fs::absolute(dir).lexically_normal().string()},
                  {"model", model.dir},
                  {"cluster_order", opt.cluster_order},
                  {"cluster_names", json(names).dump()},
                  {"ctx", "0"},
                  {"max_tokens_per_cluster", "0"},
                  {"ranks", "1"},
                  {"windows", json(std::vector<int64_t>(size_t(K), 0)).dump()},
                  {"scores", "imported from LLaMA-MoE " + suffix + " files (token counts unknown: 0)"}};
    return f;
}

}  // namespace moefy
