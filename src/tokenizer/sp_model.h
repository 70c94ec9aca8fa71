#pragma once
// The vocabulary inside a SentencePiece tokenizer.model (a serialized
// sentencepiece.ModelProto), read and written with a minimal protobuf wire
// codec: what GGUF stores of it (pieces, scores, piece types, special ids,
// the add-dummy-prefix flag) and back.
#include <cstdint>
#include <string>
#include <vector>

namespace moefy {

// Piece types as sentencepiece.ModelProto.SentencePiece.Type (GGUF's
// tokenizer.ggml.token_type uses the same numbers).
enum class SpPieceType : int32_t { Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 };

struct SpVocab {
    std::vector<std::string> pieces;
    std::vector<float> scores;
    std::vector<int32_t> types;  // SpPieceType values
    int32_t model_type = 2;      // TrainerSpec.model_type: 1 unigram, 2 BPE, 3 word, 4 char
    bool byte_fallback = false;
    int32_t unk_id = 0, bos_id = 1, eos_id = 2, pad_id = -1;
    bool add_dummy_prefix = true;
    bool remove_extra_whitespaces = true;
    bool escape_whitespaces = true;
    std::string normalizer_name = "nmt_nfkc";
    std::string precompiled_charsmap;
};

// Parses the bytes of a tokenizer.model; `name` is used in errors.
SpVocab parse_sp_model(const std::string& bytes, const std::string& name);
SpVocab read_sp_model(const std::string& path);
// A ModelProto holding exactly `v` (libsentencepiece loads it with LoadFromSerializedProto).
std::string serialize_sp_model(const SpVocab& v);

}  // namespace moefy
