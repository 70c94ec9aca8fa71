#pragma once
// Internal to src/convert: the recipe of every output tensor and the three
// output layouts. A layout decides names, shapes and config.json; the driver
// (convert.cpp) streams the recipes; stream.cpp moves the bytes.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "convert/convert.h"
#include "io/safetensors.h"
#include "model/checkpoint.h"
#include "split/expert_plan.h"

namespace moefy::convert {

enum class Op {
    Copy,      // the whole source tensor (cast when dtypes differ)
    Rows,      // out[i, :] = src[ids[i], :]                 gate/up: [s, H] from [I, H]
    Cols,      // out[:, j] = src[:, ids[j]] * scale         down:    [H, s] from [H, I]
    ColsF32,   // the same from opt.down_proj[layer] (refitted f32 values) instead of src
    RouterW1,  // router of `layer`, first matrix  [E, H]
    RouterW2,  // router of `layer`, second matrix [E, E] (mlp gate)
    Zeros,
};

struct OutTensor {
    TensorSpec spec;
    Op op = Op::Copy;
    const TensorView* src = nullptr;  // Copy, Rows, Cols
    std::vector<int32_t> ids;         // Rows, Cols: neuron ids in plan order
    float scale = 1.0f;               // Cols: output scale folded into the weights
    int layer = -1;                   // RouterW1, RouterW2, ColsF32
};

// Everything a layout needs, resolved and validated once.
struct Context {
    Context(const Checkpoint& d, const ExpertPlan& p, const ConvertOptions& o) : dense(d), plan(p), opt(o) {}
    const Checkpoint& dense;
    const ExpertPlan& plan;
    const ConvertOptions& opt;
    int L = 0, H = 0, E = 0, R = 0, k = 0;
    bool mlp_gate = true;
    std::vector<double> scales;  // [layer]
    DType dtype = DType::BF16;   // routers, zeros and config torch_dtype

    DType out_dtype(const TensorView& src) const { return opt.dtype.value_or(src.dtype); }
    const TensorView& ffn(int l, const char* proj) const;  // dense gate/up/down of layer l

    OutTensor rows(std::string name, const TensorView& src, std::vector<int32_t> ids) const;
    OutTensor cols(std::string name, const TensorView& src, std::vector<int32_t> ids, double scale = 1.0) const;
    OutTensor router(std::string name, int layer, bool second) const;
    OutTensor zeros(std::string name, std::vector<int64_t> shape) const;

    // [layer][expert] widths of routed / shared experts.
    std::vector<std::vector<int>> routed_widths() const;
    std::vector<std::vector<int>> shared_widths() const;
};

// Resolves and validates the options against the plan (top-k, gate, scales,
// routers, dtype) exactly as convert_checkpoint does; for the GGUF layout.
Context make_convert_context(const Checkpoint& dense, const ExpertPlan& plan, const ConvertOptions& opt);

// A layout: `check` throws (naming the layout to use instead) when the plan or
// the options do not fit; `layer` appends the tensors that replace layer l's
// dense FFN; `config` returns config.json.
struct Layout {
    std::string name;
    void (*check)(const Context&);
    void (*layer)(const Context&, int l, std::vector<OutTensor>& out);
    nlohmann::json (*config)(const Context&);
};

Layout llama_moe_layout(bool residual);
Layout mixtral_layout();
Layout deepseek_layout();

class ChunkPipe;

// Streams recipes into a sink, with scratch buffers reused across tensors.
// Gathered output goes out in chunks of ~256 KiB through a writer thread, so the
// gather of one chunk overlaps the kernel's copy of the previous one; the sink
// (FileSink) writes them in 64 KiB pieces, which the kernel copies fastest.
class TensorStreamer {
public:
    explicit TensorStreamer(size_t chunk_bytes = size_t(256) << 10);
    ~TensorStreamer();
    void copy(const TensorView& src, DType out, ByteSink& sink);
    void rows(const TensorView& src, const std::vector<int32_t>& ids, DType out, ByteSink& sink);
    // Column gathers of several outputs from one source in a single pass over it:
    // member 0 goes to `sink`, members 1.. into `staged[m]` (written later by the
    // caller). One pass instead of one per expert: the down projection is read
    // once, not E times.
    struct ColsMember {
        const std::vector<int32_t>* ids;
        float scale;
    };
    void cols(const TensorView& src, const std::vector<ColsMember>& members, DType out, ByteSink& sink,
              std::vector<std::vector<uint8_t>>& staged);
    void matrix(const float* v, size_t n, DType out, ByteSink& sink);
    void zeros(size_t nbytes, ByteSink& sink);

private:
    // dst[j] = cast_out(row[ids[j]] * scale)
    void gather_row(const uint8_t* row, DType in, const std::vector<int32_t>& ids, float scale, DType out, uint8_t* dst);
    size_t chunk_;
    std::unique_ptr<ChunkPipe> pipe_;
    std::vector<uint8_t> buf_;  // matrix, zeros: written directly
    std::vector<float> f32_;
    std::vector<uint8_t> raw_;
};

}  // namespace moefy::convert
