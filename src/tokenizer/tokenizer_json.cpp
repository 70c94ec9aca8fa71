#include "tokenizer/tokenizer_json.h"

#include "common/error.h"
#include "io/json.h"
#include "io/output_dir.h"

namespace moefy {

namespace {

using json = nlohmann::json;

// Builds a DOM like nlohmann's own parser, except inside model.vocab and
// model.merges, whose entries are appended to the flat vectors instead.
class Sax : public nlohmann::json_sax<json> {
public:
    Sax(TokenizerJson& out, const std::string& path) : out_(out), path_(path) {}

    bool null() override { return value(json()); }
    bool boolean(bool v) override { return value(v); }
    bool number_integer(number_integer_t v) override { return value(v); }
    bool number_unsigned(number_unsigned_t v) override { return value(v); }
    bool number_float(number_float_t v, const string_t&) override { return value(v); }
    bool binary(binary_t&) override { return value(json()); }

    bool string(string_t& s) override {
        switch (mode()) {
            case Mode::MergeList: {
                // "a b": exactly one space separates the two tokens.
                const size_t sp = s.find(' ');
                if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
                    fail("{}: model.merges[{}] = {:?} is not two tokens separated by one space", path_,
                         out_.merges.size(), s);
                out_.merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
                return true;
            }
            case Mode::MergePair:
                pair_.push_back(std::move(s));
                return true;
            case Mode::Vocab: fail("{}: model.vocab[{:?}] is not an integer", path_, key_);
            default: return value(std::move(s));
        }
    }

    bool key(string_t& k) override {
        key_ = std::move(k);
        return true;
    }

    bool start_object(std::size_t) override {
        if (mode() != Mode::Dom) fail("{}: unexpected object inside model.{}", path_, flat_name());
        if (is_model_key("vocab")) {
            out_.has_vocab = true;
            out_.vocab.reserve(1 << 15);
            return push(Mode::Vocab, nullptr);
        }
        return push(Mode::Dom, add(json::object()));
    }
    bool end_object() override { return pop(); }

    bool start_array(std::size_t) override {
        if (mode() == Mode::MergeList) {
            pair_.clear();
            return push(Mode::MergePair, nullptr);
        }
        if (mode() != Mode::Dom) fail("{}: unexpected array inside model.{}", path_, flat_name());
        if (is_model_key("merges")) {
            out_.has_merges = true;
            out_.merges.reserve(1 << 16);
            return push(Mode::MergeList, nullptr);
        }
        return push(Mode::Dom, add(json::array()));
    }
    bool end_array() override {
        if (mode() == Mode::MergePair) {
            if (pair_.size() != 2)
                fail("{}: model.merges[{}] is not a pair of strings", path_, out_.merges.size());
            out_.merges.emplace_back(std::move(pair_[0]), std::move(pair_[1]));
        }
        return pop();
    }

    bool parse_error(std::size_t pos, const std::string&, const nlohmann::detail::exception& e) override {
        fail("{}: invalid JSON near byte {}: {}", path_, pos, e.what());
    }

private:
    enum class Mode { Dom, Vocab, MergeList, MergePair };
    struct Frame {
        Mode mode;
        json* node;        // Dom frames only
        std::string name;  // key under which the container sits ("" in arrays)
    };

    Mode mode() const { return stack_.empty() ? Mode::Dom : stack_.back().mode; }
    const char* flat_name() const { return mode() == Mode::Vocab ? "vocab" : "merges"; }

    // True when the value about to start is model.<name> of the top-level object.
    bool is_model_key(const char* name) const {
        return stack_.size() == 2 && key_ == name && stack_[1].name == "model" &&
               stack_[1].mode == Mode::Dom && stack_[1].node->is_object();
    }

    bool push(Mode m, json* node) {
        const bool keyed = !stack_.empty() && stack_.back().mode == Mode::Dom && stack_.back().node->is_object();
        stack_.push_back({m, node, keyed ? key_ : std::string()});
        return true;
    }
    bool pop() {
        stack_.pop_back();
        return true;
    }

    // Places v in the current container (or as the root) and returns it.
    json* add(json&& v) {
        if (stack_.empty()) {
            out_.rest = std::move(v);
            return &out_.rest;
        }
        json* parent = stack_.back().node;
        if (parent->is_object()) return &((*parent)[key_] = std::move(v));
        parent->push_back(std::move(v));
        return &parent->back();
    }

    template <typename T>
    bool value(T&& v) {
        switch (mode()) {
            case Mode::Dom: add(json(std::forward<T>(v))); return true;
            case Mode::Vocab:
                if constexpr (std::is_integral_v<std::decay_t<T>> && !std::is_same_v<std::decay_t<T>, bool>) {
                    out_.vocab.emplace_back(std::move(key_), static_cast<int64_t>(v));
                    return true;
                }
                fail("{}: model.vocab[{:?}] is not an integer", path_, key_);
            default: fail("{}: model.merges[{}] is not a string or a pair of strings", path_, out_.merges.size());
        }
    }

    TokenizerJson& out_;
    const std::string& path_;
    std::vector<Frame> stack_;
    std::string key_;
    std::vector<std::string> pair_;
};

}  // namespace

TokenizerJson read_tokenizer_json(const std::string& path) { return parse_tokenizer_json(read_text_file(path), path); }

TokenizerJson parse_tokenizer_json(const std::string& text, const std::string& path) {
    check_json_depth(text, path);
    TokenizerJson out;
    Sax sax(out, path);
    json::sax_parse(text, &sax);
    if (!out.rest.is_object()) fail("{}: top level is not a JSON object", path);
    return out;
}

}  // namespace moefy
