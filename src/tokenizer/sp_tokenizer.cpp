#include "tokenizer/sp_tokenizer.h"

#include <exception>

#include <sentencepiece_processor.h>

#include "common/error.h"
#include "tokenizer/utf8.h"

namespace moefy {

namespace {

class SentencePieceTokenizer final : public Tokenizer {
public:
    // proto: the model's bytes, or nullptr to load the file `path`.
    SentencePieceTokenizer(const std::string& path, const TokenizerSettings& settings, const std::string* proto = nullptr)
        : path_(path) {
        // libsentencepiece reports most defects by status but throws for some (a piece with a NUL
        // byte reaches its trie builder, which throws Darts' exception: fuzz_sentencepiece finding).
        sentencepiece::util::Status status;
        try {
            status = proto ? sp_.LoadFromSerializedProto(*proto) : sp_.Load(path);
        } catch (const std::exception& e) {
            fail("{}: cannot load SentencePiece model: {}", path, e.what());
        }
        if (!status.ok()) fail("{}: cannot load SentencePiece model: {}", path, status.ToString());
        vocab_ = sp_.GetPieceSize();
        bos_ = resolve(settings.bos_token, settings.bos_id, sp_.bos_id());
        eos_ = resolve(settings.eos_token, settings.eos_id, sp_.eos_id());
        add_bos_ = settings.add_bos.value_or(true);
        add_eos_ = settings.add_eos.value_or(false);
    }

    std::vector<int32_t> encode(std::string_view text, bool add_special) const override {
        check_utf8(text, path_);
        std::vector<int> pieces;
        const auto status = sp_.Encode(text, &pieces);
        if (!status.ok()) fail("{}: SentencePiece encode failed: {}", path_, status.ToString());
        std::vector<int32_t> ids;
        ids.reserve(pieces.size() + 2);
        if (add_special && add_bos_ && bos_ >= 0) ids.push_back(bos_);
        ids.insert(ids.end(), pieces.begin(), pieces.end());
        if (add_special && add_eos_ && eos_ >= 0) ids.push_back(eos_);
        return ids;
    }

    std::string decode(const std::vector<int32_t>& ids) const override {
        std::vector<int> v;
        v.reserve(ids.size());
        for (int32_t id : ids) {
            check_id(id);
            // Control pieces (bos/eos/pad) decode to nothing in SentencePiece;
            // ids named as bos/eos by the config are skipped the same way.
            if (id == bos_ || id == eos_) continue;
            v.push_back(id);
        }
        std::string out;
        const auto status = sp_.Decode(v, &out);
        if (!status.ok()) fail("{}: SentencePiece decode failed: {}", path_, status.ToString());
        return out;
    }

    std::string decode_token(int32_t id) const override {
        check_id(id);
        if (sp_.IsControl(id) || id == bos_ || id == eos_) return {};
        if (sp_.IsUnknown(id)) return " \xE2\x81\x87 ";  // SentencePiece's unk surface " ⁇ "
        const std::string& piece = sp_.IdToPiece(id);
        if (sp_.IsByte(id)) return std::string(1, static_cast<char>(std::stoi(piece.substr(3, 2), nullptr, 16)));
        std::string out;
        out.reserve(piece.size());
        for (size_t i = 0; i < piece.size();) {
            if (piece.compare(i, 3, "\xE2\x96\x81") == 0) {  // U+2581 stands for a space
                out += ' ';
                i += 3;
            } else {
                out += piece[i++];
            }
        }
        return out;
    }

    int vocab_size() const override { return vocab_; }
    int bos_id() const override { return bos_; }
    int eos_id() const override { return eos_; }

private:
    void check_id(int32_t id) const {
        if (id < 0 || id >= vocab_) fail("{}: token id {} outside vocabulary [0, {})", path_, id, vocab_);
    }

    // A token string that is not a piece of this model falls through to the
    // next source rather than failing: configs copied between models happen.
    int resolve(const std::optional<std::string>& token, std::optional<int32_t> id, int model_id) const {
        if (token) {
            const int t = sp_.PieceToId(*token);
            if (t >= 0 && t < vocab_ && sp_.IdToPiece(t) == *token) return t;
        }
        if (id && *id >= 0 && *id < vocab_) return *id;
        return model_id;
    }

    std::string path_;
    sentencepiece::SentencePieceProcessor sp_;
    int vocab_ = 0;
    int bos_ = -1, eos_ = -1;
    bool add_bos_ = true, add_eos_ = false;
};

}  // namespace

std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& path, const TokenizerSettings& settings) {
    return std::make_unique<SentencePieceTokenizer>(path, settings);
}

std::unique_ptr<Tokenizer> load_sentencepiece_proto(const std::string& proto, const std::string& name,
                                                    const TokenizerSettings& settings) {
    return std::make_unique<SentencePieceTokenizer>(name, settings, &proto);
}

}  // namespace moefy
