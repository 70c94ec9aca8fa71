#include "tokenizer/bpe.h"

#include <algorithm>
#include <queue>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "tokenizer/utf8.h"

namespace moefy {

static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

// Splits `word` into the model's starting symbols: one per byte for byte-level
// vocabularies, else one per char, with byte-fallback and unk handling as HF
// BPE::merge_word does it.
void BpeModel::initial_symbols(std::string_view word, std::vector<int32_t>& syms) const {
    syms.clear();
    bool pending_unk = false;
    const auto flush_unk = [&] {
        if (pending_unk) syms.push_back(unk_id);
        pending_unk = false;
    };
    size_t i = 0;
    while (i < word.size()) {
        const size_t n = byte_level ? 1 : std::min<size_t>(utf8_len(static_cast<uint8_t>(word[i])),
                                                           word.size() - i);
        const std::string_view ch = word.substr(i, n);
        i += n;
        if (auto it = vocab.find(ch); it != vocab.end()) {
            flush_unk();
            syms.push_back(it->second);
            continue;
        }
        if (byte_fallback) {
            bool all = true;
            for (char c : ch) all = all && byte_ids[static_cast<uint8_t>(c)] >= 0;
            if (all) {
                for (char c : ch) syms.push_back(byte_ids[static_cast<uint8_t>(c)]);
                continue;
            }
        }
        if (unk_id < 0)
            fail("BPE: no token for {:?} and the model has no unk_token", std::string(ch));
        if (pending_unk && !fuse_unk) syms.push_back(unk_id);
        pending_unk = true;
    }
    flush_unk();
}

// syms: [n] token ids, merged in place. A doubly linked list over the symbol
// array plus a heap of candidate merges; stale heap entries (a side already
// merged away) are detected by re-checking the pair.
void BpeModel::merge_symbols(std::vector<int32_t>& syms) const {
    const int n = static_cast<int>(syms.size());
    if (n < 2) return;
    std::vector<int> prev(n), next(n);
    for (int i = 0; i < n; ++i) {
        prev[i] = i - 1;
        next[i] = i + 1 < n ? i + 1 : -1;
    }
    struct Cand {
        int32_t rank;
        int pos;
        int32_t result;
        bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Cand, std::vector<Cand>, std::greater<>> heap;
    const auto push = [&](int pos) {
        if (pos < 0 || next[pos] < 0) return;
        auto it = merges.find(pair_key(syms[pos], syms[next[pos]]));
        if (it != merges.end()) heap.push({it->second.rank, pos, it->second.result});
    };
    for (int i = 0; i + 1 < n; ++i) push(i);
    while (!heap.empty()) {
        const Cand c = heap.top();
        heap.pop();
        const int r = next[c.pos];
        if (syms[c.pos] < 0 || r < 0) continue;
        auto it = merges.find(pair_key(syms[c.pos], syms[r]));
        if (it == merges.end() || it->second.result != c.result || it->second.rank != c.rank) continue;
        // Merge r into c.pos and unlink r.
        syms[c.pos] = c.result;
        syms[r] = -1;
        next[c.pos] = next[r];
        if (next[r] >= 0) prev[next[r]] = c.pos;
        push(prev[c.pos]);
        push(c.pos);
    }
    int w = 0;
    for (int i = 0; i < n; ++i)
        if (syms[i] >= 0) syms[w++] = syms[i];
    syms.resize(w);
}

void BpeModel::encode_word(std::string_view word, std::vector<int32_t>& out) const {
    if (word.empty()) return;
    if (ignore_merges) {
        if (auto it = vocab.find(word); it != vocab.end()) {
            out.push_back(it->second);
            return;
        }
    }
    std::vector<int32_t> syms;
    syms.reserve(word.size());
    initial_symbols(word, syms);
    merge_symbols(syms);
    out.insert(out.end(), syms.begin(), syms.end());
}

void BpeModel::encode_word_cached(std::string_view word, std::vector<int32_t>& out) const {
    // Long words (SentencePiece-style text without pre-tokenizer is one word
    // per segment) rarely repeat; caching them would only cost memory.
    constexpr size_t kMaxCachedLen = 64;
    constexpr size_t kMaxEntries = 1 << 16;
    if (word.size() > kMaxCachedLen) {
        encode_word(word, out);
        return;
    }
    {
        std::shared_lock lock(cache_mu_);
        if (auto it = cache_.find(word); it != cache_.end()) {
            out.insert(out.end(), it->second.begin(), it->second.end());
            return;
        }
    }
    const size_t start = out.size();
    encode_word(word, out);
    std::unique_lock lock(cache_mu_);
    if (cache_.size() >= kMaxEntries) cache_.clear();
    cache_.emplace(std::string(word), std::vector<int32_t>(out.begin() + start, out.end()));
}

constexpr std::string_view kMetaspace = "\xE2\x96\x81";  // U+2581

void BpeModel::encode(std::string_view word, std::vector<int32_t>& out) const {
    if (!split_at_metaspace) {
        encode_word_cached(word, out);
        return;
    }
    size_t start = 0;
    for (size_t p = word.find(kMetaspace, 1); p != std::string_view::npos; p = word.find(kMetaspace, p + 3)) {
        if (word.substr(p - std::min<size_t>(p, 3), 3) == kMetaspace) continue;  // inside a run of ▁
        encode_word_cached(word.substr(start, p - start), out);
        start = p;
    }
    encode_word_cached(word.substr(start), out);
}

// True when some token has U+2581 right after a char that is not U+2581.
static bool has_inner_metaspace(const TokenMap& vocab) {
    for (const auto& [tok, id] : vocab) {
        const std::string_view t = tok;
        for (size_t p = t.find(kMetaspace, 1); p != std::string_view::npos; p = t.find(kMetaspace, p + 3))
            if (p < 3 || t.substr(p - 3, 3) != kMetaspace) return true;
    }
    return false;
}

// ---- loading ---------------------------------------------------------------

// Maps a byte-level token out of the GPT-2 alphabet in place; tokens with
// chars outside it (none in real byte-level vocabularies) stay as written.
static void to_model_token(std::string& tok, bool byte_level, std::string& scratch) {
    if (byte_level && byte_level_to_bytes(tok, scratch)) tok.swap(scratch);
}

static void load_merges(BpeModel& bpe, std::vector<std::pair<std::string, std::string>>& merges,
                        const std::string& path) {
    bpe.merges.reserve(merges.size() * 2);
    std::string scratch, joined;
    for (size_t r = 0; r < merges.size(); ++r) {
        auto& [left, right] = merges[r];
        to_model_token(left, bpe.byte_level, scratch);
        to_model_token(right, bpe.byte_level, scratch);
        joined.assign(left).append(right);
        const auto a = bpe.vocab.find(left), b = bpe.vocab.find(right), ab = bpe.vocab.find(joined);
        if (a == bpe.vocab.end() || b == bpe.vocab.end() || ab == bpe.vocab.end())
            fail("{}: model.merges[{}] uses a token missing from model.vocab", path, r);
        // A repeated pair keeps its first (lowest) rank.
        bpe.merges.try_emplace(pair_key(a->second, b->second), BpeMerge{static_cast<int32_t>(r), ab->second});
    }
    merges.clear();
    merges.shrink_to_fit();
}

void load_bpe(BpeModel& bpe, const nlohmann::json& model, std::vector<std::pair<std::string, int64_t>>& vocab,
              std::vector<std::pair<std::string, std::string>>& merges, bool byte_level, const std::string& path) {
    const auto type = model.value("type", std::string("BPE"));
    if (type != "BPE") fail("{}: model.type {:?} is not supported (only BPE)", path, type);
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
        if (model.contains(key) && !model[key].is_null() && model[key] != "")
            fail("{}: model.{} is not supported", path, key);
    }
    if (model.contains("dropout") && model["dropout"].is_number() && model["dropout"].get<double>() > 0)
        fail("{}: model.dropout (BPE-dropout) is not supported", path);
    bpe.byte_level = byte_level;
    bpe.byte_fallback = model.value("byte_fallback", false);
    bpe.ignore_merges = model.value("ignore_merges", false);
    bpe.fuse_unk = model.value("fuse_unk", false);

    int64_t max_id = -1;
    for (const auto& [tok, id] : vocab) {
        if (id < 0 || id > (1 << 30)) fail("{}: model.vocab[{:?}] = {} is out of range", path, tok, id);
        max_id = std::max(max_id, id);
    }
    // The id table is as long as the largest id: a 100-byte file naming id 2^30 must not
    // allocate 2^30 strings, so ids must be about as dense as the vocabulary listed.
    if (max_id >= int64_t(2 * vocab.size() + 1024))
        fail("{}: model.vocab ids reach {} but only {} tokens are listed (ids must be dense)", path, max_id, vocab.size());
    bpe.id_to_token.assign(static_cast<size_t>(max_id + 1), std::string());
    bpe.vocab.reserve(vocab.size() * 2);
    std::string scratch;
    for (auto& [tok, id] : vocab) {
        to_model_token(tok, byte_level, scratch);
        bpe.id_to_token[id] = tok;
        bpe.vocab.emplace(std::move(tok), static_cast<int32_t>(id));
    }
    vocab.clear();
    vocab.shrink_to_fit();
    bpe.byte_ids.fill(-1);
    for (int b = 0; b < 256; ++b) {
        if (auto it = bpe.vocab.find(fmt::format("<0x{:02X}>", b)); it != bpe.vocab.end())
            bpe.byte_ids[b] = it->second;
    }
    if (model.contains("unk_token") && model["unk_token"].is_string()) {
        const auto& unk = model["unk_token"].get_ref<const std::string&>();
        auto it = bpe.vocab.find(unk);
        if (it == bpe.vocab.end()) fail("{}: model.unk_token {:?} is not in model.vocab", path, unk);
        bpe.unk_id = it->second;
    }
    load_merges(bpe, merges, path);
    bpe.split_at_metaspace =
        !byte_level && !bpe.ignore_merges && bpe.vocab.count(std::string(kMetaspace)) && !has_inner_metaspace(bpe.vocab);
}

}  // namespace moefy
