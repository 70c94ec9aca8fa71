#pragma once
// A checkpoint directory: config.json plus memory-mapped safetensors.
#include <memory>
#include <string>

#include "io/safetensors.h"
#include "model/config.h"

namespace moefy {

struct Checkpoint {
    std::string dir;
    ModelConfig config;
    std::unique_ptr<TensorStore> tensors;

    // Opens config.json and the weights; checks that every tensor the
    // architecture needs is present with the right shape. A GGUF file instead
    // of a directory opens through model/gguf_checkpoint.h.
    static Checkpoint open(const std::string& dir);
    // The dtype most of the weight bytes are stored in.
    DType main_dtype() const;
};

}  // namespace moefy
