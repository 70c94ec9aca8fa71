#pragma once
// The `gguf` output layout: one GGUF v3 file that llama.cpp runs as it is.
//
//   plan without shared experts -> architecture `llama` with MoE tensors, as
//       llama.cpp's converter writes Mixtral: blk.N.ffn_gate_inp [E, H] and the
//       stacked blk.N.ffn_{gate,up,down}_exps; llama.cpp weights the experts by
//       softmax over all E logits, top-k, renormalised (Mixtral's rule), so the
//       routers, weighting and scales are exactly those of --format mixtral.
//   plan with shared experts -> architecture `deepseek` (v1): softmax over all
//       routed logits, top-k, not renormalised, plus the shared experts as one
//       ungated MLP (ffn_*_shexp), exactly those of --format deepseek.
//   no plan -> the dense model as architecture `llama`.
//
// Experts narrower than the widest of their layer (and shared experts short of
// a whole number of routed widths) are padded with zero neurons: a zero row of
// gate/up and a zero column of down add exactly nothing. Fitted or fixed scales
// are folded into the routed down projections (in f32, then cast). Q and K rows
// are permuted into llama.cpp's interleaved RoPE order. Norms and routers are
// stored as f32 (as llama.cpp's converter keeps them); every other tensor in the
// chosen type (q8_0: blocks of 32 along each row; refused when a row length is
// not a multiple of 32). The tokenizer is embedded (tokenizer/gguf_vocab.h).
// Written to a temporary sibling and renamed when complete.
#include <optional>
#include <string>

#include "convert/convert.h"
#include "io/gguf.h"
#include "tokenizer/gguf_vocab.h"

namespace moefy {

struct GgufOptions {
    std::optional<GgmlType> type;  // nullopt: each weight keeps its stored dtype (f32, f16 or bf16)
    std::string name;              // general.name; empty: the model directory's name
};

struct GgufReport {
    ConvertReport convert;   // out_dir is the file; layout "gguf (llama)" / "gguf (deepseek)"
    std::string arch;        // "llama" | "deepseek"
    std::string type;        // "f32" | "f16" | "bf16" | "q8_0" | "mixed"
    int expert_width = 0;    // as stored (the widest expert of any layer)
    int shared_count = 0;    // deepseek expert_shared_count
    size_t padded_neurons = 0;  // zero neurons added in all layers
    GgufVocabInfo vocab;
    size_t metadata_keys = 0;
};

// Parses "f32" | "f16" | "bf16" | "q8_0" | "same" (nullopt).
std::optional<GgmlType> parse_gguf_type(const std::string& s);
// The stored type from ConvertOptions' dtype / q8_0.
GgufOptions gguf_options(const ConvertOptions& opt);

// plan == nullptr: the dense model. opt.format is ignored (the semantics are
// mixtral's or deepseek's, chosen by the plan as above: routing_semantics);
// opt.top_k, scales, routers, seed, gate (linear only) and force apply as for
// convert_checkpoint. opt.dtype / opt.q8_0 are ignored: `gopt` gives the type.
GgufReport convert_to_gguf(const Checkpoint& dense, const ExpertPlan* plan, const std::string& out_path,
                           const ConvertOptions& opt, const GgufOptions& gopt, const ConvertProgress& progress = {});

// The routing semantics a plan gets in GGUF: Mixtral (routed only) or Deepseek
// (shared experts), for set_convert_routing and the router options.
MoEFormat gguf_routing_format(const ExpertPlan& plan);

}  // namespace moefy
