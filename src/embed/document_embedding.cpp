#include "embed/document_embedding.h"

#include <cmath>

#include "common/error.h"
#include "model/llama.h"
#include "tokenizer/tokenizer.h"

namespace moefy {

std::vector<float> embed_documents(Model& model, const Tokenizer& tok, const std::vector<std::string>& texts, int ctx,
                                   const std::function<void(size_t, size_t)>& progress) {
    if (ctx < 1) fail("--ctx {}: must be at least 1", ctx);
    const size_t H = size_t(model.config().hidden_size);
    std::vector<float> out(texts.size() * H), hidden;
    for (size_t d = 0; d < texts.size(); ++d) {
        std::vector<int32_t> ids;
        if (tok.bos_id() >= 0) ids.push_back(tok.bos_id());
        const std::vector<int32_t> body = tok.encode(texts[d], false);
        ids.insert(ids.end(), body.begin(), body.end());
        if (ids.empty()) fail("document {}: no tokens to embed (the tokenizer has no BOS)", d);
        if (ids.size() > size_t(ctx)) ids.resize(size_t(ctx));
        const int T = int(ids.size());
        hidden.resize(size_t(T) * H);
        model.final_hidden(ids.data(), T, hidden.data());
        // x: [T, H] -> mean over T, then unit length.
        std::vector<double> mean(H, 0.0);
        for (int t = 0; t < T; ++t)
            for (size_t i = 0; i < H; ++i) mean[i] += hidden[size_t(t) * H + i];
        double norm = 0;
        for (double v : mean) norm += v * v;
        norm = std::sqrt(norm);
        for (size_t i = 0; i < H; ++i) out[d * H + i] = norm > 0 ? float(mean[i] / norm) : 0.0f;
        if (progress) progress(d + 1, texts.size());
    }
    return out;
}

}  // namespace moefy
