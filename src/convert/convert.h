#pragma once
// Convert: a dense LLaMA checkpoint + an ExpertPlan -> an MoE checkpoint in one
// of the layouts runtimes load:
//
//   llama-moe   LlamaMoEForCausalLM (HF remote code of pjlab-sys4nlp/llama-moe);
//               llama-moe-residual when the plan has shared experts.
//               Any expert widths, overlap allowed; router mlp or linear.
//   mixtral     MixtralForCausalLM: equal widths, no shared experts, linear router;
//               the scale factor is folded into w2.
//   deepseek    DeepseekForCausalLM (v1): equal routed widths, shared experts
//               concatenated into one always-on MLP; the scale is folded into the
//               routed down projections.
//
// The dense weights are streamed one tensor at a time from the mmap (RSS stays
// flat); everything else is copied bit for bit (or cast with --dtype). Output
// goes through OutputDir: nothing appears at `out_dir` unless it is complete.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/enum_names.h"
#include "io/dtype.h"
#include "route/random_router.h"

namespace moefy {

struct Checkpoint;
struct ExpertPlan;

// Output layouts (--format). A new layout: a value here, its name in the table, a writer.
// Gguf: one llama.cpp file (convert/gguf.h), with mixtral's routing semantics for
// routed-only plans and deepseek's for plans with shared experts (routing_semantics).
enum class MoEFormat { LlamaMoE, Mixtral, Deepseek, Gguf };
inline constexpr EnumName<MoEFormat> moe_format_names[] = {{MoEFormat::LlamaMoE, "llama-moe"},
                                                           {MoEFormat::Mixtral, "mixtral"},
                                                           {MoEFormat::Deepseek, "deepseek"},
                                                           {MoEFormat::Gguf, "gguf"}};
inline MoEFormat parse_moe_format(const std::string& s) { return parse_enum(moe_format_names, s, "--format"); }
inline const char* moe_format_name(MoEFormat f) { return enum_name(moe_format_names, f); }

// The router network (--gate): Linear-tanh-Linear (llama-moe only) or one linear layer.
enum class GateKind { Mlp, Linear };
inline constexpr EnumName<GateKind> gate_kind_names[] = {{GateKind::Mlp, "mlp"}, {GateKind::Linear, "linear"}};
inline GateKind parse_gate_kind(const std::string& s) { return parse_enum(gate_kind_names, s, "--gate"); }
inline const char* gate_kind_name(GateKind g) { return enum_name(gate_kind_names, g); }
// The layout's own gate when none is asked for: llama-moe mlp, the others linear.
inline GateKind default_gate(MoEFormat f) { return f == MoEFormat::LlamaMoE ? GateKind::Mlp : GateKind::Linear; }

// "same" -> nullopt (every tensor keeps its dtype); "bf16" | "f16" | "f32".
std::optional<DType> parse_out_dtype(const std::string& s);
const char* out_dtype_name(std::optional<DType> t);  // "same" | "bf16" | "f16" | "f32"
// "5GB" (10^9), "500MB", "2GiB", "4096" (bytes). Throws naming `what`.
size_t parse_byte_size(const std::string& s, const std::string& what);
const char* torch_dtype_name(DType t);  // "bfloat16", "float16", "float32"

struct ConvertOptions {
    MoEFormat format = MoEFormat::LlamaMoE;
    int top_k = 2;
    // Output scale of the routed experts. nullopt: auto = E / top_k (as LLaMA-MoE's
    // released models: 16 experts, top-4, scale 4). `layer_scales` overrides it per layer.
    std::optional<double> scale;
    std::vector<double> layer_scales;  // [layer] or empty
    std::optional<GateKind> gate;  // nullopt: the layout's default (default_gate)
    std::optional<DType> dtype;  // nullopt: same as the source
    bool q8_0 = false;           // --dtype q8_0: weight matrices as q8_0 (--format gguf only)
    uint64_t seed = 0;           // random router init
    bool force = false;          // replace an existing output directory
    bool gate_softmax = true;          // llama-moe gate_use_softmax
    bool multiply_gate_scores = true;  // llama-moe multiply_gate_scores
    size_t max_shard_bytes = 5'000'000'000;
    // Memory for making all down projections of a layer in one pass over the
    // dense one (instead of one pass per expert). A LLaMA-7B down_proj is 90 MB
    // (one pass); a 70B one is 470 MB (two passes).
    size_t gather_stage_bytes = size_t(256) << 20;
    // Precomputed routers [layer] in f32 (e.g. training-free routers); empty: random
    // N(0, 0.02) from `seed`. Each must match the gate kind (w2 present iff mlp).
    std::vector<RouterWeights> routers;
    // Replacement values of every layer's dense down projection, [layer] of
    // [H, I] f32 (the expert refit, route/refit.h); empty: the dense ones. Every
    // expert's down projection (routed and shared) gathers its columns from it.
    std::vector<std::vector<float>> down_proj;
    // How the routers were made (kind, weighting, calibration file and tokens, ...):
    // written to config.json under "moefy", next to the split method and seed.
    nlohmann::json provenance = nlohmann::json::object();
    // How errors about the plan name it: its file when there is one.
    std::string plan_name = "expert plan";

    GateKind gate_kind() const { return gate.value_or(default_gate(format)); }
};

struct ConvertReport {
    std::string out_dir;
    std::string layout;  // "llama-moe", "llama-moe-residual", "mixtral", "deepseek"
    std::string gate;    // "mlp" | "linear"
    int num_layers = 0;
    int num_experts = 0;
    int num_shared = 0;  // shared experts of the plan (deepseek stores them as one MLP)
    int top_k = 0;
    DType dtype = DType::BF16;     // of routers and, unless tensors differed, of everything
    std::vector<double> scales;    // [layer] as written to config.json or folded into weights
    bool scale_folded = false;     // mixtral/deepseek: scale is inside the down projections
    std::vector<std::string> files;  // written into out_dir
    size_t tensors = 0;
    size_t tensor_bytes = 0;
    size_t source_bytes = 0;
    double seconds = 0;
};

// done/total in output tensor bytes.
using ConvertProgress = std::function<void(double done, double total)>;

// The routing semantics of layout `f` for `plan`: itself, except gguf, which
// weights as mixtral (routed-only plans) or deepseek (plans with shared experts).
MoEFormat routing_semantics(MoEFormat f, const ExpertPlan& plan);

// Validates everything first (plan vs model, options, layout constraints, output
// path), then writes. Throws moefy::Error; on failure nothing is left behind.
// --format gguf writes the file `out_dir` (convert/gguf.h).
ConvertReport convert_checkpoint(const Checkpoint& dense, const ExpertPlan& plan, const std::string& out_dir,
                                 const ConvertOptions& opt, const ConvertProgress& progress = {});

// Opens the model directory and the plan file, then convert_checkpoint.
ConvertReport convert_model_dir(const std::string& model_dir, const std::string& plan_path, const std::string& out_dir,
                                const ConvertOptions& opt, const ConvertProgress& progress = {});

}  // namespace moefy
