#include "model/checkpoint.h"

#include <filesystem>
#include <map>
#include <set>

#include "common/error.h"
#include "common/warn.h"
#include "io/gguf.h"
#include "io/safetensors.h"
#include "model/expected_tensors.h"
#include "model/gguf_checkpoint.h"

namespace moefy {

namespace {

// "model.layers.<n>." prefix: the layer number, else -1.
long layer_of(const std::string& name) {
    static const std::string pre = "model.layers.";
    if (name.compare(0, pre.size(), pre) != 0) return -1;
    size_t i = pre.size(), j = i;
    while (j < name.size() && j - i < 9 && name[j] >= '0' && name[j] <= '9') ++j;
    return j > i && j < name.size() && name[j] == '.' ? std::stol(name.substr(i, j - i)) : -1;
}

// Every tensor the architecture needs, with its shape, so that a checkpoint
// that opens is one the engine and the converter can use.
void check_tensors(const ModelConfig& c, const TensorStore& store, const std::string& dir) {
    std::set<std::string> known;
    for_each_expected_tensor(c, [&](const ExpectedTensor& e) {  // store.get throws at the first missing tensor
        known.insert(e.name);
        if (e.optional && !store.find(e.name)) return;
        if (e.check_shape) store.get(e.name, e.shape);
    });
    // Tensors the architecture does not name: a layer beyond num_hidden_layers means the
    // config and the weights disagree (refused); anything else is copied through by
    // convert, which the user should know about.
    for (const std::string& n : store.names()) {
        if (known.count(n)) continue;
        const long l = layer_of(n);
        if (l >= c.num_layers)
            fail("{}: config.json says num_hidden_layers {} but the checkpoint holds tensor '{}' of layer {}", dir,
                 c.num_layers, n, l);
        warn("{}: tensor '{}' is not part of the {} architecture (convert copies it unchanged)", dir, n,
             model_kind_name(c.kind));
    }
}

}  // namespace

Checkpoint Checkpoint::open(const std::string& dir) {
    namespace fs = std::filesystem;
    if (is_gguf_file(dir)) {
        Checkpoint ck = open_gguf_checkpoint(dir);
        check_tensors(ck.config, *ck.tensors, dir);
        warn_non_finite(*ck.tensors);
        return ck;
    }
    if (!fs::is_directory(dir)) fail("{}: model directory does not exist", dir);
    const std::string cfg_path = (fs::path(dir) / "config.json").string();
    if (!fs::exists(cfg_path)) fail("{}: no config.json (expected a Hugging Face model directory)", dir);
    Checkpoint ck;
    ck.dir = dir;
    ck.config = ModelConfig::load(cfg_path);
    ck.tensors = TensorStore::open_dir(dir);
    check_tensors(ck.config, *ck.tensors, dir);
    warn_non_finite(*ck.tensors);
    return ck;
}

DType Checkpoint::main_dtype() const {
    std::map<DType, size_t> bytes;
    for (const std::string& name : tensors->names()) {
        const TensorView& t = tensors->get(name);
        bytes[t.dtype] += t.nbytes;
    }
    DType best = DType::F32;
    size_t most = 0;
    for (auto [d, n] : bytes)
        if (n > most) most = n, best = d;
    return best;
}

}  // namespace moefy
