// moefy inspect MODEL_DIR [--json]
#include <cstdio>
#include <map>

#include "cli/cli_common.h"
#include "io/json.h"
#include "model/checkpoint.h"

namespace moefy::cli {

nlohmann::json inspect_json(const Checkpoint& ck) {
    const ModelConfig& c = ck.config;
    nlohmann::json j;
    j["path"] = ck.dir;
    j["architecture"] = c.architecture.empty() ? c.model_type : c.architecture;
    j["kind"] = model_kind_name(c.kind);
    j["layers"] = c.num_layers;
    j["hidden_size"] = c.hidden_size;
    j["intermediate_size"] = c.intermediate_size;
    j["heads"] = c.num_heads;
    j["kv_heads"] = c.num_kv_heads;
    j["head_dim"] = c.head_dim;
    j["vocab_size"] = c.vocab_size;
    j["max_position_embeddings"] = c.max_position_embeddings;
    j["tie_word_embeddings"] = c.tie_word_embeddings;
    j["dtype"] = dtype_name(ck.main_dtype());
    j["tensors"] = ck.tensors->tensor_count();
    j["total_bytes"] = ck.tensors->total_bytes();
    j["shards"] = c.raw.contains("gguf") ? 1 : ck.tensors->files().size();
    if (c.raw.contains("gguf")) j["gguf"] = c.raw["gguf"];
    if (c.is_moe()) {
        const MoEConfig& m = c.moe;
        nlohmann::json moe;
        moe["experts"] = m.num_experts;
        moe["top_k"] = m.top_k;
        moe["expert_widths"] = m.expert_widths;
        bool equal = true;
        for (auto& l : m.expert_widths)
            for (int w : l) equal = equal && w == m.expert_widths[0][0];
        moe["equal_widths"] = equal;
        moe["router"] = c.kind == ModelKind::LlamaMoE || c.kind == ModelKind::LlamaMoEResidual
                            ? (m.gate_network == "mlp" ? "mlp (Linear-tanh-Linear)" : "linear")
                            : "linear";
        moe["weighting"] = m.softmax_over_all ? (m.renormalize_topk ? "softmax, top-k renormalised" : "softmax over all experts")
                           : !m.multiply_gate_scores ? "uniform (multiply_gate_scores false)"
                           : m.gate_softmax ? "softmax over top-k"
                                            : "raw top-k logits";
        moe["score_scale"] = m.score_scale;
        moe["shared_experts"] = m.num_shared;
        if (m.num_shared) moe["shared_widths"] = m.shared_widths;
        j["moe"] = moe;
    }
    return j;
}

static std::string human_bytes(double b) {
    const char* u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int i = 0;
    while (b >= 1024 && i < 4) b /= 1024, ++i;
    return fmt::format("{:.2f} {}", b, u[i]);
}

static std::string widths_summary(const std::vector<std::vector<int>>& w) {
    std::map<int, int> count;
    for (auto& l : w)
        for (int x : l) ++count[x];
    std::string s;
    for (auto [width, n] : count) s += fmt::format("{}{} x {}", s.empty() ? "" : ", ", n, width);
    return s + (count.size() > 1 ? " (widths differ)" : "");
}

static void print_inspect(const nlohmann::json& j) {
    fmt::print("model             {}\n", j["path"].get<std::string>());
    fmt::print("architecture      {} ({})\n", j["architecture"].get<std::string>(), j["kind"].get<std::string>());
    fmt::print("layers            {}\n", j["layers"].get<int>());
    fmt::print("hidden size       {}\n", j["hidden_size"].get<int>());
    fmt::print("intermediate size {}\n", j["intermediate_size"].get<int>());
    fmt::print("heads / kv heads  {} / {} (head dim {})\n", j["heads"].get<int>(), j["kv_heads"].get<int>(), j["head_dim"].get<int>());
    fmt::print("vocabulary        {}\n", j["vocab_size"].get<int>());
    fmt::print("dtype             {}\n", j["dtype"].get<std::string>());
    fmt::print("tensors           {} in {} file(s), {}\n", j["tensors"].get<size_t>(), j["shards"].get<size_t>(),
               human_bytes(double(j["total_bytes"].get<size_t>())));
    if (j.contains("gguf")) {
        const auto& g = j["gguf"];
        static const std::map<int, const char*> ftypes = {{0, "f32"}, {1, "f16"}, {7, "q8_0"}, {32, "bf16"}};
        const int ft = int(g.at("file_type").get<int64_t>());  // moefy's own summary of the header (gguf_checkpoint)
        fmt::print("format            GGUF v{}, llama.cpp architecture '{}', file type {}{}\n", g.at("version").get<int64_t>(),
                   g.at("architecture").get<std::string>(), ft, ftypes.count(ft) ? fmt::format(" ({})", ftypes.at(ft)) : "");
        if (ft == 7) fmt::print("                  q8_0 tensors are dequantised to f32 when moefy loads them\n");
        if (g.contains("plan")) {
            // moefy.plan comes from the file as written, by moefy or by anyone (its fields were checked at open).
            const auto& p = g["plan"];
            const std::string where = j["path"].get<std::string>() + ": moefy.plan";
            fmt::print("split             {}\n", json_get_or(p, "method", "?", where));
            const int64_t pad = json_get_or(p, "padded_neurons", int64_t(0), where);
            const int64_t ew = json_get_or(p, "stored_expert_width", int64_t(0), where);
            const int64_t sw = json_get_or(p, "stored_shared_width", int64_t(0), where);
            fmt::print("stored widths     expert {}{}\n", ew, sw ? fmt::format(", shared {}", sw) : "");
            if (p.contains("expert_widths"))  // checked when the file was opened (model/gguf_checkpoint.cpp)
                fmt::print("plan widths       {}\n", widths_summary(p["expert_widths"].get<std::vector<std::vector<int>>>()));
            if (pad)
                fmt::print("padding           {} zero neurons in all (narrower experts padded to the stored width; exact)\n", pad);
        }
    }
    if (j.contains("moe")) {
        const auto& m = j["moe"];
        fmt::print("experts per layer {} (top-k {})\n", m["experts"].get<int>(), m["top_k"].get<int>());
        fmt::print("expert widths     {}\n", widths_summary(m["expert_widths"].get<std::vector<std::vector<int>>>()));
        fmt::print("router            {}\n", m["router"].get<std::string>());
        fmt::print("weighting         {}\n", m["weighting"].get<std::string>());
        auto sc = m["score_scale"].get<std::vector<float>>();
        bool same = true;
        for (float s : sc) same = same && s == sc[0];
        fmt::print("score scale       {}\n", same ? fmt::format("{}", sc.empty() ? 1.0f : sc[0]) : m["score_scale"].dump());
        if (m["shared_experts"].get<int>() > 0)
            fmt::print("shared experts    {} ({})\n", m["shared_experts"].get<int>(),
                       widths_summary(m["shared_widths"].get<std::vector<std::vector<int>>>()));
    }
}

MOEFY_COMMAND(10, [](CLI::App& app) {
    auto* cmd = app.add_subcommand("inspect", "Describe a dense or MoE checkpoint");
    auto model = std::make_shared<std::string>();
    auto as_json = std::make_shared<bool>(false);
    cmd->add_option("model", *model, "Model directory (config.json + safetensors) or GGUF file")->required();
    cmd->add_flag("--json", *as_json, "Print JSON");
    cmd->callback([=] {
        Checkpoint ck = Checkpoint::open(*model);
        nlohmann::json j = inspect_json(ck);
        if (*as_json)
            fmt::print("{}\n", j.dump(2));
        else
            print_inspect(j);
    });
});

}  // namespace moefy::cli
