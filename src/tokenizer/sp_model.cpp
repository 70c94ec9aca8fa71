#include "tokenizer/sp_model.h"

#include <cstring>

#include "common/error.h"
#include "io/output_dir.h"

namespace moefy {

namespace {

// Protobuf wire format: key = (field << 3) | wire type; 0 varint, 1 fixed64,
// 2 length-delimited, 5 fixed32.
struct Wire {
    const uint8_t* p;
    size_t n;
    size_t pos = 0;
    const std::string& name;

    bool done() const { return pos >= n; }
    uint64_t varint() {
        uint64_t v = 0;
        for (int shift = 0; shift < 64; shift += 7) {
            if (pos >= n) fail("{}: truncated SentencePiece model (varint)", name);
            const uint8_t b = p[pos++];
            v |= uint64_t(b & 0x7f) << shift;
            if (!(b & 0x80)) return v;
        }
        fail("{}: malformed varint in SentencePiece model", name);
    }
    Wire sub() {
        const uint64_t len = varint();
        if (len > n - pos) fail("{}: truncated SentencePiece model (field of {} bytes)", name, len);
        Wire w{p + pos, size_t(len), 0, name};
        pos += size_t(len);
        return w;
    }
    std::string bytes() {
        Wire w = sub();
        return std::string(reinterpret_cast<const char*>(w.p), w.n);
    }
    float fixed32f() {
        if (n - pos < 4) fail("{}: truncated SentencePiece model (float)", name);
        float f;
        std::memcpy(&f, p + pos, 4);
        pos += 4;
        return f;
    }
    void skip(uint32_t wt) {
        switch (wt) {
            case 0: varint(); break;
            case 1: if (n - pos < 8) fail("{}: truncated SentencePiece model", name); pos += 8; break;
            case 2: sub(); break;
            case 5: if (n - pos < 4) fail("{}: truncated SentencePiece model", name); pos += 4; break;
            default: fail("{}: unsupported protobuf wire type {} in SentencePiece model", name, wt);
        }
    }
};

struct Out {
    std::string s;
    void varint(uint64_t v) {
        while (v >= 0x80) {
            s.push_back(char(uint8_t(v) | 0x80));
            v >>= 7;
        }
        s.push_back(char(v));
    }
    void key(int field, int wt) { varint(uint64_t(field) << 3 | uint64_t(wt)); }
    void bytes(int field, const std::string& b) {
        key(field, 2);
        varint(b.size());
        s += b;
    }
    void int32(int field, int32_t v) {
        key(field, 0);
        varint(uint64_t(int64_t(v)));  // negative int32 as 10-byte two's complement, as protobuf does
    }
    void boolean(int field, bool v) { key(field, 0), varint(v ? 1 : 0); }
    void f32(int field, float f) {
        key(field, 5);
        char b[4];
        std::memcpy(b, &f, 4);
        s.append(b, 4);
    }
};

}  // namespace

SpVocab parse_sp_model(const std::string& bytes, const std::string& name) {
    SpVocab v;
    Wire w{reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), 0, name};
    while (!w.done()) {
        const uint64_t k = w.varint();
        const uint32_t field = uint32_t(k >> 3), wt = uint32_t(k & 7);
        if (field == 1 && wt == 2) {  // SentencePiece
            Wire pw = w.sub();
            std::string piece;
            float score = 0;
            int32_t type = 1;
            while (!pw.done()) {
                const uint64_t pk = pw.varint();
                const uint32_t f = uint32_t(pk >> 3), t = uint32_t(pk & 7);
                if (f == 1 && t == 2) piece = pw.bytes();
                else if (f == 2 && t == 5) score = pw.fixed32f();
                else if (f == 3 && t == 0) type = int32_t(pw.varint());
                else pw.skip(t);
            }
            if (type < 1 || type > 6) fail("{}: piece {} has unknown type {}", name, v.pieces.size(), type);
            v.pieces.push_back(std::move(piece));
            v.scores.push_back(score);
            v.types.push_back(type);
        } else if (field == 2 && wt == 2) {  // TrainerSpec
            Wire tw = w.sub();
            while (!tw.done()) {
                const uint64_t tk = tw.varint();
                const uint32_t f = uint32_t(tk >> 3), t = uint32_t(tk & 7);
                if (t != 0) {
                    tw.skip(t);
                    continue;
                }
                const int32_t val = int32_t(int64_t(tw.varint()));
                if (f == 3) v.model_type = val;
                else if (f == 35) v.byte_fallback = val != 0;
                else if (f == 40) v.unk_id = val;
                else if (f == 41) v.bos_id = val;
                else if (f == 42) v.eos_id = val;
                else if (f == 43) v.pad_id = val;
            }
        } else if (field == 3 && wt == 2) {  // NormalizerSpec
            Wire nw = w.sub();
            while (!nw.done()) {
                const uint64_t nk = nw.varint();
                const uint32_t f = uint32_t(nk >> 3), t = uint32_t(nk & 7);
                if (f == 1 && t == 2) v.normalizer_name = nw.bytes();
                else if (f == 2 && t == 2) v.precompiled_charsmap = nw.bytes();
                else if (f == 3 && t == 0) v.add_dummy_prefix = nw.varint() != 0;
                else if (f == 4 && t == 0) v.remove_extra_whitespaces = nw.varint() != 0;
                else if (f == 5 && t == 0) v.escape_whitespaces = nw.varint() != 0;
                else nw.skip(t);
            }
        } else {
            w.skip(wt);
        }
    }
    if (v.pieces.empty()) fail("{}: SentencePiece model has no pieces", name);
    return v;
}

SpVocab read_sp_model(const std::string& path) { return parse_sp_model(read_text_file(path), path); }

std::string serialize_sp_model(const SpVocab& v) {
    Out m;
    for (size_t i = 0; i < v.pieces.size(); ++i) {
        Out p;
        p.bytes(1, v.pieces[i]);
        p.f32(2, v.scores[i]);
        p.int32(3, v.types[i]);
        m.bytes(1, p.s);
    }
    Out t;
    t.int32(3, v.model_type);
    t.int32(4, int32_t(v.pieces.size()));
    t.boolean(35, v.byte_fallback);
    t.int32(40, v.unk_id);
    t.int32(41, v.bos_id);
    t.int32(42, v.eos_id);
    t.int32(43, v.pad_id);
    m.bytes(2, t.s);
    Out n;
    n.bytes(1, v.normalizer_name);
    if (!v.precompiled_charsmap.empty()) n.bytes(2, v.precompiled_charsmap);
    n.boolean(3, v.add_dummy_prefix);
    n.boolean(4, v.remove_extra_whitespaces);
    n.boolean(5, v.escape_whitespaces);
    m.bytes(3, n.s);
    return m.s;
}

}  // namespace moefy
