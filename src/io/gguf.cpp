#include "io/gguf.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "common/error.h"
#include "io/dtype.h"
#include "io/file_sink.h"

namespace moefy {

namespace fs = std::filesystem;

// ---------------------------------------------------------------- types

const char* gguf_type_name(GgufType t) {
    switch (t) {
        case GgufType::U8: return "u8";
        case GgufType::I8: return "i8";
        case GgufType::U16: return "u16";
        case GgufType::I16: return "i16";
        case GgufType::U32: return "u32";
        case GgufType::I32: return "i32";
        case GgufType::F32: return "f32";
        case GgufType::Bool: return "bool";
        case GgufType::String: return "string";
        case GgufType::Array: return "array";
        case GgufType::U64: return "u64";
        case GgufType::I64: return "i64";
        case GgufType::F64: return "f64";
    }
    return "?";
}

const char* ggml_type_name(GgmlType t) {
    switch (t) {
        case GgmlType::F32: return "f32";
        case GgmlType::F16: return "f16";
        case GgmlType::Q8_0: return "q8_0";
        case GgmlType::BF16: return "bf16";
    }
    return "?";
}

int64_t ggml_block_elems(GgmlType t) { return t == GgmlType::Q8_0 ? kQ8Block : 1; }

size_t ggml_block_bytes(GgmlType t) {
    switch (t) {
        case GgmlType::F32: return 4;
        case GgmlType::F16: return 2;
        case GgmlType::BF16: return 2;
        case GgmlType::Q8_0: return 2 + size_t(kQ8Block);
    }
    return 0;
}

size_t ggml_nbytes(GgmlType t, const std::vector<int64_t>& ne) {
    size_t n = 1;
    for (int64_t d : ne) n *= size_t(d);
    return n / size_t(ggml_block_elems(t)) * ggml_block_bytes(t);
}

namespace {

// Names of the ggml types moefy does not read, so a refusal can say what the file holds.
const char* other_ggml_type_name(uint32_t t) {
    static const char* const names[] = {"f32",  "f16",  "q4_0", "q4_1", "q4_2", "q4_3", "q5_0",  "q5_1",    "q8_0",
                                        "q8_1", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "q8_K",  "iq2_xxs", "iq2_xs",
                                        "iq3_xxs", "iq1_s", "iq4_nl", "iq3_s", "iq2_s", "iq4_xs", "i8", "i16", "i32",
                                        "i64", "f64", "iq1_m", "bf16"};
    return t < std::size(names) ? names[t] : nullptr;
}

bool known_ggml_type(uint32_t t) { return t == 0 || t == 1 || t == 8 || t == 30; }

size_t gguf_scalar_size(GgufType t) {
    switch (t) {
        case GgufType::U8: case GgufType::I8: case GgufType::Bool: return 1;
        case GgufType::U16: case GgufType::I16: return 2;
        case GgufType::U32: case GgufType::I32: case GgufType::F32: return 4;
        case GgufType::U64: case GgufType::I64: case GgufType::F64: return 8;
        default: return 0;
    }
}

bool valid_gguf_type(uint32_t t) { return t <= 12; }

}  // namespace

// ---------------------------------------------------------------- values

GgufValue GgufValue::u32(uint32_t v) { GgufValue x; x.type = GgufType::U32; x.i = v; return x; }
GgufValue GgufValue::i32(int32_t v) { GgufValue x; x.type = GgufType::I32; x.i = v; return x; }
GgufValue GgufValue::u64(uint64_t v) { GgufValue x; x.type = GgufType::U64; x.i = int64_t(v); return x; }
GgufValue GgufValue::f32(float v) { GgufValue x; x.type = GgufType::F32; x.f = v; return x; }
GgufValue GgufValue::boolean(bool v) { GgufValue x; x.type = GgufType::Bool; x.i = v; return x; }
GgufValue GgufValue::str(std::string v) { GgufValue x; x.type = GgufType::String; x.s = std::move(v); return x; }
GgufValue GgufValue::str_array(std::vector<std::string> v) {
    GgufValue x; x.type = GgufType::Array; x.elem = GgufType::String; x.strs = std::move(v); return x;
}
GgufValue GgufValue::f32_array(std::vector<double> v) {
    GgufValue x; x.type = GgufType::Array; x.elem = GgufType::F32; x.reals = std::move(v); return x;
}
GgufValue GgufValue::i32_array(std::vector<int64_t> v) {
    GgufValue x; x.type = GgufType::Array; x.elem = GgufType::I32; x.ints = std::move(v); return x;
}

bool GgufValue::is_integer() const {
    switch (type) {
        case GgufType::U8: case GgufType::I8: case GgufType::U16: case GgufType::I16: case GgufType::U32:
        case GgufType::I32: case GgufType::U64: case GgufType::I64: return true;
        default: return false;
    }
}

std::string GgufValue::to_string(size_t max_items) const {
    switch (type) {
        case GgufType::String: return s.size() > 80 ? fmt::format("\"{}...\" ({} bytes)", s.substr(0, 60), s.size()) : "\"" + s + "\"";
        case GgufType::Bool: return i ? "true" : "false";
        case GgufType::F32: case GgufType::F64: return fmt::format("{}", f);
        case GgufType::U64: return fmt::format("{}", uint64_t(i));
        case GgufType::Array: {
            const size_t n = array_size();
            std::string out = fmt::format("[{} x {}:", n, gguf_type_name(elem));
            for (size_t k = 0; k < std::min(n, max_items); ++k) {
                if (elem == GgufType::String) out += " \"" + strs[k].substr(0, 24) + "\"";
                else if (elem == GgufType::F32 || elem == GgufType::F64) out += fmt::format(" {}", reals[k]);
                else out += fmt::format(" {}", ints[k]);
            }
            return out + (n > max_items ? " ...]" : "]");
        }
        default: return fmt::format("{}", i);
    }
}

int64_t GgufTensorInfo::numel() const {
    int64_t n = 1;
    for (int64_t d : ne) n *= d;
    return n;
}

std::vector<int64_t> GgufTensorInfo::torch_shape() const { return {ne.rbegin(), ne.rend()}; }

// ---------------------------------------------------------------- reading

namespace {

// A bounds-checked cursor over the header; every read names what it was reading.
struct Cursor {
    const uint8_t* p;
    size_t size;
    size_t pos = 0;
    const std::string& name;

    size_t left() const { return size - pos; }
    void need(size_t n, const std::string& what) const {
        if (n > left()) fail("{}: truncated: {} needs {} bytes at offset {} but the file has {} left", name, what, n, pos, left());
    }
    template <typename T>
    T get(const std::string& what) {
        need(sizeof(T), what);
        T v;
        std::memcpy(&v, p + pos, sizeof(T));  // little-endian hosts only (x86-64, aarch64)
        pos += sizeof(T);
        return v;
    }
    std::string str(const std::string& what) {
        const uint64_t n = get<uint64_t>(what + " length");
        if (n > left())
            fail("{}: {} has length {} at offset {}, past the end of the file ({} bytes left)", name, what, n, pos - 8, left());
        std::string s(reinterpret_cast<const char*>(p + pos), size_t(n));
        pos += size_t(n);
        return s;
    }
};

void read_scalar(Cursor& c, GgufType t, GgufValue& v, const std::string& what) {
    v.type = t;
    switch (t) {
        case GgufType::U8: v.i = c.get<uint8_t>(what); break;
        case GgufType::I8: v.i = c.get<int8_t>(what); break;
        case GgufType::U16: v.i = c.get<uint16_t>(what); break;
        case GgufType::I16: v.i = c.get<int16_t>(what); break;
        case GgufType::U32: v.i = c.get<uint32_t>(what); break;
        case GgufType::I32: v.i = c.get<int32_t>(what); break;
        case GgufType::U64: v.i = int64_t(c.get<uint64_t>(what)); break;
        case GgufType::I64: v.i = c.get<int64_t>(what); break;
        case GgufType::F32: v.f = c.get<float>(what); break;
        case GgufType::F64: v.f = c.get<double>(what); break;
        case GgufType::Bool: {
            const uint8_t b = c.get<uint8_t>(what);
            if (b > 1) fail("{}: {} is a bool with value {} (must be 0 or 1)", c.name, what, b);
            v.i = b;
            break;
        }
        case GgufType::String: v.s = c.str(what); break;
        case GgufType::Array: fail("{}: {}: nested arrays are not supported", c.name, what);
    }
}

void read_value(Cursor& c, GgufType t, GgufValue& v, const std::string& what) {
    if (t != GgufType::Array) return read_scalar(c, t, v, what);
    v.type = GgufType::Array;
    const uint32_t et = c.get<uint32_t>(what + " element type");
    if (!valid_gguf_type(et)) fail("{}: {} has unknown element type {}", c.name, what, et);
    if (GgufType(et) == GgufType::Array) fail("{}: {}: nested arrays are not supported", c.name, what);
    v.elem = GgufType(et);
    const uint64_t n = c.get<uint64_t>(what + " element count");
    // Every element takes at least one byte (a string at least its 8-byte length):
    // a count the rest of the file cannot hold is refused before anything is allocated.
    const size_t min_elem = v.elem == GgufType::String ? 8 : gguf_scalar_size(v.elem);
    if (n > c.left() / min_elem)
        fail("{}: {} claims {} elements of {}, more than the {} bytes left in the file hold", c.name, what, n,
             gguf_type_name(v.elem), c.left());
    GgufValue e;
    if (v.elem == GgufType::String) v.strs.reserve(size_t(n));
    else if (v.elem == GgufType::F32 || v.elem == GgufType::F64) v.reals.reserve(size_t(n));
    else v.ints.reserve(size_t(n));
    for (uint64_t k = 0; k < n; ++k) {
        read_scalar(c, v.elem, e, what);
        if (v.elem == GgufType::String) v.strs.push_back(std::move(e.s));
        else if (v.elem == GgufType::F32 || v.elem == GgufType::F64) v.reals.push_back(e.f);
        else v.ints.push_back(e.i);
    }
}

}  // namespace

GgufFile parse_gguf(const uint8_t* data, size_t size, const std::string& name) {
    GgufFile g;
    g.name_ = name;
    Cursor c{data, size, 0, g.name_};
    if (size < 4 || std::memcmp(data, "GGUF", 4) != 0) {
        if (size < 4) fail("{}: not a GGUF file (only {} bytes)", name, size);
        fail("{}: not a GGUF file (bad magic {:02x} {:02x} {:02x} {:02x}, expected \"GGUF\")", name, data[0], data[1], data[2], data[3]);
    }
    c.pos = 4;
    g.version_ = c.get<uint32_t>("version");
    if (g.version_ == 1) fail("{}: GGUF version 1 is obsolete (32-bit counts); moefy reads versions 2 and 3", name);
    if (g.version_ != 2 && g.version_ != 3) {
        if ((g.version_ & 0xffff) == 0 && g.version_ != 0)
            fail("{}: GGUF version {} looks byte-swapped (a big-endian file?); moefy reads little-endian versions 2 and 3", name, g.version_);
        fail("{}: unsupported GGUF version {} (moefy reads versions 2 and 3)", name, g.version_);
    }
    const uint64_t n_tensors = c.get<uint64_t>("tensor count");
    const uint64_t n_kv = c.get<uint64_t>("metadata count");
    // A key-value pair takes at least 8 (key length) + 4 (type) + 1 bytes, a tensor
    // info at least 8 + 4 + 8 + 4 + 8.
    if (n_kv > c.left() / 13) fail("{}: metadata count {} is more than the {} bytes of the file can hold", name, n_kv, c.left());
    if (n_tensors > c.left() / 32) fail("{}: tensor count {} is more than the {} bytes of the file can hold", name, n_tensors, c.left());

    for (uint64_t k = 0; k < n_kv; ++k) {
        const std::string what = fmt::format("metadata key #{}", k);
        GgufKV kv;
        kv.key = c.str(what);
        if (kv.key.empty()) fail("{}: {} is empty", name, what);
        const std::string vwhat = fmt::format("value of '{}'", kv.key);
        const uint32_t t = c.get<uint32_t>(vwhat + " type");
        if (!valid_gguf_type(t)) fail("{}: {} has unknown type {}", name, vwhat, t);
        read_value(c, GgufType(t), kv.value, vwhat);
        if (g.kv_index_.count(kv.key)) fail("{}: metadata key '{}' appears twice", name, kv.key);
        g.kv_index_[kv.key] = g.kv_.size();
        g.kv_.push_back(std::move(kv));
    }
    if (const GgufValue* a = g.find("general.alignment")) {
        if (a->type != GgufType::U32) fail("{}: general.alignment has type {}, expected u32", name, gguf_type_name(a->type));
        if (a->i == 0 || (a->i & (a->i - 1)) != 0) fail("{}: general.alignment {} is not a power of two", name, a->i);
        g.alignment_ = uint32_t(a->i);
    }

    for (uint64_t k = 0; k < n_tensors; ++k) {
        GgufTensorInfo t;
        t.name = c.str(fmt::format("tensor name #{}", k));
        const std::string where = fmt::format("{}: tensor '{}'", name, t.name);
        if (t.name.empty()) fail("{}: tensor #{} has an empty name", name, k);
        const uint32_t nd = c.get<uint32_t>(fmt::format("dimension count of tensor '{}'", t.name));
        if (nd < 1 || nd > 4) fail("{}: {} dimensions (GGUF tensors have 1 to 4)", where, nd);
        uint64_t elems = 1;
        for (uint32_t d = 0; d < nd; ++d) {
            const uint64_t v = c.get<uint64_t>(fmt::format("ne[{}] of tensor '{}'", d, t.name));
            if (v == 0 || v > (uint64_t(1) << 40)) fail("{}: ne[{}] = {} is out of range", where, d, v);
            if (elems > (uint64_t(1) << 50) / v) fail("{}: {} elements overflow", where, "the shape's");
            elems *= v;
            t.ne.push_back(int64_t(v));
        }
        const uint32_t ty = c.get<uint32_t>(fmt::format("type of tensor '{}'", t.name));
        if (!known_ggml_type(ty)) {
            if (const char* n = other_ggml_type_name(ty))
                fail("{}: tensor type {} ({}) is not supported (moefy reads f32, f16, bf16 and q8_0)", where, n, ty);
            fail("{}: unknown tensor type {}", where, ty);
        }
        t.type = GgmlType(ty);
        if (t.ne[0] % ggml_block_elems(t.type) != 0)
            fail("{}: row length ne[0] = {} is not a multiple of the {} block of {}", where, t.ne[0], ggml_type_name(t.type),
                 ggml_block_elems(t.type));
        t.offset = c.get<uint64_t>(fmt::format("offset of tensor '{}'", t.name));
        if (t.offset % g.alignment_ != 0) fail("{}: offset {} is not a multiple of the alignment {}", where, t.offset, g.alignment_);
        t.nbytes = ggml_nbytes(t.type, t.ne);
        if (g.tensor_index_.count(t.name)) fail("{}: tensor name '{}' appears twice", name, t.name);
        g.tensor_index_[t.name] = g.tensors_.size();
        g.tensors_.push_back(std::move(t));
    }
    const size_t header_end = c.pos;
    g.data_offset_ = (header_end + g.alignment_ - 1) / g.alignment_ * g.alignment_;
    if (g.data_offset_ > size && !g.tensors_.empty())
        fail("{}: truncated: the data section would start at {}, past the end of the file ({} bytes)", name, g.data_offset_, size);
    const size_t data_size = size > g.data_offset_ ? size - g.data_offset_ : 0;
    for (GgufTensorInfo& t : g.tensors_) {
        if (t.offset > data_size || t.nbytes > data_size - t.offset)
            fail("{}: tensor '{}': bytes [{}, {}) of the data section run past its end ({} bytes): file truncated?", name, t.name,
                 t.offset, t.offset + t.nbytes, data_size);
        t.data = data + g.data_offset_ + t.offset;
    }
    std::vector<const GgufTensorInfo*> order;
    for (const GgufTensorInfo& t : g.tensors_) order.push_back(&t);
    std::sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
    for (size_t k = 1; k < order.size(); ++k)
        if (order[k - 1]->offset + order[k - 1]->nbytes > order[k]->offset)
            fail("{}: tensors '{}' and '{}' overlap in the data section", name, order[k - 1]->name, order[k]->name);
    return g;
}

GgufFile open_gguf(const std::string& path) {
    auto map = std::make_shared<MappedFile>(path);
    GgufFile g = parse_gguf(map->data(), map->size(), path);
    g.map_ = std::move(map);
    return g;
}

bool is_gguf_file(const std::string& path) {
    std::error_code ec;
    if (!fs::is_regular_file(path, ec)) return false;
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    char m[4] = {};
    const bool ok = ::read(fd, m, 4) == 4 && std::memcmp(m, "GGUF", 4) == 0;
    ::close(fd);
    return ok;
}

const GgufValue* GgufFile::find(const std::string& key) const {
    auto it = kv_index_.find(key);
    return it == kv_index_.end() ? nullptr : &kv_[it->second].value;
}

const GgufTensorInfo* GgufFile::find_tensor(const std::string& n) const {
    auto it = tensor_index_.find(n);
    return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const GgufValue& GgufFile::get(const std::string& key) const {
    const GgufValue* v = find(key);
    if (!v) fail("{}: metadata key '{}' is missing", name_, key);
    return *v;
}

int64_t GgufFile::get_int(const std::string& key) const {
    const GgufValue& v = get(key);
    if (!v.is_integer()) fail("{}: metadata key '{}' has type {}, expected an integer", name_, key, gguf_type_name(v.type));
    return v.i;
}

int64_t GgufFile::get_int(const std::string& key, int64_t def) const { return find(key) ? get_int(key) : def; }

double GgufFile::get_float(const std::string& key) const {
    const GgufValue& v = get(key);
    if (v.type != GgufType::F32 && v.type != GgufType::F64)
        fail("{}: metadata key '{}' has type {}, expected f32", name_, key, gguf_type_name(v.type));
    return v.f;
}

double GgufFile::get_float(const std::string& key, double def) const { return find(key) ? get_float(key) : def; }

bool GgufFile::get_bool(const std::string& key, bool def) const {
    const GgufValue* v = find(key);
    if (!v) return def;
    if (v->type != GgufType::Bool) fail("{}: metadata key '{}' has type {}, expected bool", name_, key, gguf_type_name(v->type));
    return v->i != 0;
}

std::string GgufFile::get_str(const std::string& key) const {
    const GgufValue& v = get(key);
    if (v.type != GgufType::String) fail("{}: metadata key '{}' has type {}, expected string", name_, key, gguf_type_name(v.type));
    return v.s;
}

std::string GgufFile::get_str(const std::string& key, const std::string& def) const { return find(key) ? get_str(key) : def; }

const GgufTensorInfo& GgufFile::tensor(const std::string& n) const {
    const GgufTensorInfo* t = find_tensor(n);
    if (!t) fail("{}: tensor '{}' not found", name_, n);
    return *t;
}

// ---------------------------------------------------------------- q8_0

void quantize_q8_0(const float* src, uint8_t* dst, size_t n) {
    for (size_t b = 0; b < n / size_t(kQ8Block); ++b) {
        const float* x = src + b * size_t(kQ8Block);
        float amax = 0;
        for (int j = 0; j < kQ8Block; ++j) amax = std::max(amax, std::fabs(x[j]));
        const float d = amax / 127.0f;
        const float id = d != 0 ? 1.0f / d : 0.0f;
        uint8_t* out = dst + b * ggml_block_bytes(GgmlType::Q8_0);
        const uint16_t dh = f32_to_f16(d);
        std::memcpy(out, &dh, 2);
        for (int j = 0; j < kQ8Block; ++j) out[2 + j] = uint8_t(int8_t(std::lround(x[j] * id)));
    }
}

void dequantize_q8_0(const uint8_t* src, float* dst, size_t n) {
    for (size_t b = 0; b < n / size_t(kQ8Block); ++b) {
        const uint8_t* in = src + b * ggml_block_bytes(GgmlType::Q8_0);
        uint16_t dh;
        std::memcpy(&dh, in, 2);
        const float d = f16_to_f32(dh);
        for (int j = 0; j < kQ8Block; ++j) dst[b * size_t(kQ8Block) + size_t(j)] = d * float(int8_t(in[2 + j]));
    }
}

void gguf_read_rows_f32(const GgufTensorInfo& t, int64_t row0, int64_t n, float* dst) {
    const int64_t cols = t.ne[0], rows = t.numel() / cols;
    if (row0 < 0 || n < 0 || row0 + n > rows) fail("tensor '{}': rows [{}, {}) out of range ({} rows)", t.name, row0, row0 + n, rows);
    const size_t row_bytes = ggml_nbytes(t.type, {cols});
    const uint8_t* p = t.data + size_t(row0) * row_bytes;
    const size_t count = size_t(n * cols);
    switch (t.type) {
        case GgmlType::F32: to_f32(DType::F32, p, dst, count); break;
        case GgmlType::F16: to_f32(DType::F16, p, dst, count); break;
        case GgmlType::BF16: to_f32(DType::BF16, p, dst, count); break;
        case GgmlType::Q8_0: dequantize_q8_0(p, dst, count); break;
    }
}

void Q8Sink::write(const void* data, size_t n) {
    const uint8_t* p = static_cast<const uint8_t*>(data);
    constexpr size_t block_in = size_t(kQ8Block) * 4;
    const size_t block_out = ggml_block_bytes(GgmlType::Q8_0);
    if (!pending_.empty()) {
        const size_t take = std::min(n, block_in - pending_.size());
        pending_.insert(pending_.end(), p, p + take);
        p += take, n -= take;
        if (pending_.size() < block_in) return;
        float x[kQ8Block];
        std::memcpy(x, pending_.data(), block_in);
        blocks_.resize(block_out);
        quantize_q8_0(x, blocks_.data(), size_t(kQ8Block));
        out_.write(blocks_.data(), block_out);
        pending_.clear();
    }
    const size_t whole = n / block_in;
    if (whole) {
        blocks_.resize(whole * block_out);
        // Aligned copies: the producer's bytes need not be float-aligned.
        std::vector<float> x(whole * size_t(kQ8Block));
        std::memcpy(x.data(), p, whole * block_in);
        quantize_q8_0(x.data(), blocks_.data(), x.size());
        out_.write(blocks_.data(), blocks_.size());
        p += whole * block_in, n -= whole * block_in;
    }
    pending_.insert(pending_.end(), p, p + n);
}

void Q8Sink::finish() {
    if (!pending_.empty())
        fail("tensor '{}': {} bytes left over after the last q8_0 block (not a multiple of 32 floats)", name_, pending_.size());
}

// ---------------------------------------------------------------- writing

namespace {


struct HeaderWriter {
    std::string out;
    template <typename T>
    void put(T v) {
        out.append(reinterpret_cast<const char*>(&v), sizeof(T));
    }
    void str(const std::string& s) {
        put<uint64_t>(s.size());
        out += s;
    }
    void scalar(GgufType t, const GgufValue& v, const std::string& key) {
        switch (t) {
            case GgufType::U8: put<uint8_t>(uint8_t(v.i)); break;
            case GgufType::I8: put<int8_t>(int8_t(v.i)); break;
            case GgufType::U16: put<uint16_t>(uint16_t(v.i)); break;
            case GgufType::I16: put<int16_t>(int16_t(v.i)); break;
            case GgufType::U32: put<uint32_t>(uint32_t(v.i)); break;
            case GgufType::I32: put<int32_t>(int32_t(v.i)); break;
            case GgufType::U64: put<uint64_t>(uint64_t(v.i)); break;
            case GgufType::I64: put<int64_t>(v.i); break;
            case GgufType::F32: put<float>(float(v.f)); break;
            case GgufType::F64: put<double>(v.f); break;
            case GgufType::Bool: put<uint8_t>(v.i ? 1 : 0); break;
            case GgufType::String: str(v.s); break;
            case GgufType::Array: fail("metadata '{}': nested arrays cannot be written", key);
        }
    }
    void value(const GgufKV& kv) {
        str(kv.key);
        put<uint32_t>(uint32_t(kv.value.type));
        if (kv.value.type != GgufType::Array) return scalar(kv.value.type, kv.value, kv.key);
        const GgufValue& a = kv.value;
        put<uint32_t>(uint32_t(a.elem));
        put<uint64_t>(a.array_size());
        GgufValue e;
        for (size_t k = 0; k < a.array_size(); ++k) {
            if (a.elem == GgufType::String) e.s = a.strs[k];
            else if (a.elem == GgufType::F32 || a.elem == GgufType::F64) e.f = a.reals[k];
            else e.i = a.ints[k];
            scalar(a.elem, e, kv.key);
        }
    }
};

size_t align_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

}  // namespace

void write_gguf(const std::string& path, const std::vector<GgufKV>& kv, const std::vector<GgufTensorSpec>& specs,
                const GgufProducer& produce, bool force, uint32_t alignment) {
    if (path.empty()) fail("--out: output path is empty");
    if (alignment == 0 || (alignment & (alignment - 1)) != 0) fail("{}: alignment {} is not a power of two", path, alignment);
    if (fs::exists(path) && !force) fail("{}: output already exists (use --force to replace it)", path);
    if (fs::is_directory(path)) fail("{}: is a directory; a GGUF output is one file", path);
    const fs::path parent = fs::path(path).parent_path();
    if (!parent.empty() && !fs::is_directory(parent)) fail("{}: parent directory {} does not exist", path, parent.string());

    HeaderWriter h;
    h.out.append("GGUF", 4);
    h.put<uint32_t>(kGgufVersion);
    h.put<uint64_t>(specs.size());
    h.put<uint64_t>(kv.size());
    std::map<std::string, int> seen;
    for (const GgufKV& e : kv) {
        if (seen[e.key]++) fail("{}: metadata key '{}' given twice", path, e.key);
        if (e.key == "general.alignment" && (e.value.type != GgufType::U32 || e.value.i != alignment))
            fail("{}: general.alignment must be the u32 {} the file is written with", path, alignment);
        h.value(e);
    }
    size_t off = 0;
    std::map<std::string, int> names;
    for (const GgufTensorSpec& s : specs) {
        if (names[s.name]++) fail("{}: tensor '{}' declared twice", path, s.name);
        if (s.ne.empty() || s.ne.size() > 4) fail("{}: tensor '{}' has {} dimensions (1 to 4)", path, s.name, s.ne.size());
        if (s.ne[0] % ggml_block_elems(s.type) != 0)
            fail("{}: tensor '{}': row length {} is not a multiple of {} as {} needs", path, s.name, s.ne[0],
                 ggml_block_elems(s.type), ggml_type_name(s.type));
        h.str(s.name);
        h.put<uint32_t>(uint32_t(s.ne.size()));
        for (int64_t d : s.ne) h.put<uint64_t>(uint64_t(d));
        h.put<uint32_t>(uint32_t(s.type));
        h.put<uint64_t>(off);
        off = align_up(off + s.nbytes(), alignment);
    }
    h.out.resize(align_up(h.out.size(), alignment), '\0');

    const std::string tmp = path + ".tmp-" + std::to_string(getpid());
    struct Cleanup {
        const std::string& p;
        bool armed = true;
        ~Cleanup() {
            if (armed) {
                std::error_code ec;
                fs::remove(p, ec);
            }
        }
    } cleanup{tmp};
    {
        FileSink sink(tmp);
        sink.write(h.out.data(), h.out.size());
        static const uint8_t zeros[256] = {};
        size_t pos = 0;  // within the data section
        for (size_t i = 0; i < specs.size(); ++i) {
            const size_t before = sink.written();
            produce(i, sink);
            const size_t got = sink.written() - before;
            if (got != specs[i].nbytes())
                fail("{}: tensor '{}' produced {} bytes, expected {}", path, specs[i].name, got, specs[i].nbytes());
            pos += got;
            const size_t pad = align_up(pos, alignment) - pos;
            for (size_t left = pad; left > 0;) {
                const size_t n = std::min(left, sizeof zeros);
                sink.write(zeros, n);
                left -= n;
            }
            pos += pad;
        }
        sink.close();
    }
    std::error_code ec;
    fs::rename(tmp, path, ec);
    if (ec) fail("{}: cannot rename {} into place: {}", path, tmp, ec.message());
    cleanup.armed = false;
}

}  // namespace moefy
