#pragma once
// Documents embedded by the model itself (`cluster-text --embed model`): the
// mean of the final hidden states (after the final RMSNorm) over a document's
// first `ctx` tokens, BOS first, L2-normalised. The reference embeds with a
// separate sentence-transformers model; this needs nothing but the model
// being split.
#include <functional>
#include <string>
#include <vector>

namespace moefy {

class Model;
class Tokenizer;

// Embeddings [documents, H], row d for texts[d]. An empty document (BOS only)
// embeds BOS. progress(done, total) in documents.
std::vector<float> embed_documents(Model& model, const Tokenizer& tok, const std::vector<std::string>& texts, int ctx,
                                   const std::function<void(size_t, size_t)>& progress = {});

}  // namespace moefy
