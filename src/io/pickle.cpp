#include "io/pickle.h"

#include <cstring>
#include <unordered_map>

#include "common/error.h"
#include "io/dtype.h"

namespace moefy {

const char* py_kind_name(PyKind k) {
    switch (k) {
        case PyKind::None: return "None";
        case PyKind::Bool: return "bool";
        case PyKind::Int: return "int";
        case PyKind::Float: return "float";
        case PyKind::Str: return "str";
        case PyKind::Bytes: return "bytes";
        case PyKind::List: return "list";
        case PyKind::Tuple: return "tuple";
        case PyKind::Dict: return "dict";
        case PyKind::Array: return "array";
        case PyKind::Global: return "global";
        case PyKind::Storage: return "storage";
        case PyKind::DType: return "numpy.dtype";
        case PyKind::PendingArray: return "numpy.ndarray (unfinished)";
    }
    return "?";
}

size_t elem_size(ElemType t) {
    switch (t) {
        case ElemType::Bool: case ElemType::U8: case ElemType::I8: return 1;
        case ElemType::I16: case ElemType::F16: case ElemType::BF16: return 2;
        case ElemType::I32: case ElemType::F32: return 4;
        case ElemType::I64: case ElemType::F64: return 8;
    }
    return 1;
}

const char* elem_type_name(ElemType t) {
    switch (t) {
        case ElemType::Bool: return "bool";
        case ElemType::U8: return "uint8";
        case ElemType::I8: return "int8";
        case ElemType::I16: return "int16";
        case ElemType::I32: return "int32";
        case ElemType::I64: return "int64";
        case ElemType::F16: return "float16";
        case ElemType::BF16: return "bfloat16";
        case ElemType::F32: return "float32";
        case ElemType::F64: return "float64";
    }
    return "?";
}

bool elem_is_integer(ElemType t) { return !elem_is_float(t); }
bool elem_is_float(ElemType t) {
    return t == ElemType::F16 || t == ElemType::BF16 || t == ElemType::F32 || t == ElemType::F64;
}

namespace {

// What an allowed global rebuilds. Anything not in kAllowed is refused at the
// GLOBAL / STACK_GLOBAL opcode itself.
enum class Rebuild : int64_t { TensorV2, StorageType, OrderedDict, NumpyScalar, NumpyDType, FromBuffer, Reconstruct,
                               NdArray, CodecsEncode };

struct Allowed {
    const char* module;
    const char* name;
    Rebuild what;
    ElemType elem = ElemType::U8;  // StorageType only
};

const Allowed kAllowed[] = {
    {"torch._utils", "_rebuild_tensor_v2", Rebuild::TensorV2},
    {"torch", "FloatStorage", Rebuild::StorageType, ElemType::F32},
    {"torch", "DoubleStorage", Rebuild::StorageType, ElemType::F64},
    {"torch", "HalfStorage", Rebuild::StorageType, ElemType::F16},
    {"torch", "BFloat16Storage", Rebuild::StorageType, ElemType::BF16},
    {"torch", "LongStorage", Rebuild::StorageType, ElemType::I64},
    {"torch", "IntStorage", Rebuild::StorageType, ElemType::I32},
    {"torch", "ShortStorage", Rebuild::StorageType, ElemType::I16},
    {"torch", "CharStorage", Rebuild::StorageType, ElemType::I8},
    {"torch", "ByteStorage", Rebuild::StorageType, ElemType::U8},
    {"torch", "BoolStorage", Rebuild::StorageType, ElemType::Bool},
    {"collections", "OrderedDict", Rebuild::OrderedDict},
    {"numpy.core.multiarray", "scalar", Rebuild::NumpyScalar},
    {"numpy._core.multiarray", "scalar", Rebuild::NumpyScalar},
    {"numpy", "dtype", Rebuild::NumpyDType},
    {"numpy.core.numeric", "_frombuffer", Rebuild::FromBuffer},
    {"numpy._core.numeric", "_frombuffer", Rebuild::FromBuffer},
    {"numpy.core.multiarray", "_reconstruct", Rebuild::Reconstruct},
    {"numpy._core.multiarray", "_reconstruct", Rebuild::Reconstruct},
    {"numpy", "ndarray", Rebuild::NdArray},
    {"_codecs", "encode", Rebuild::CodecsEncode},
};

// Names of the opcodes that are refused, so the message says what was found.
const char* opcode_name(uint8_t op) {
    switch (op) {
        case 'I': return "INT"; case 'L': return "LONG"; case 'F': return "FLOAT"; case 'S': return "STRING";
        case 'T': return "BINSTRING"; case 'U': return "SHORT_BINSTRING"; case 'V': return "UNICODE";
        case 'P': return "PERSID"; case 'i': return "INST"; case 'o': return "OBJ"; case 0x81: return "NEWOBJ";
        case 0x92: return "NEWOBJ_EX"; case 0x82: return "EXT1"; case 0x83: return "EXT2"; case 0x84: return "EXT4";
        case 'l': return "LIST"; case 'd': return "DICT"; case 'g': return "GET"; case 'p': return "PUT";
        case '0': return "POP"; case '1': return "POP_MARK"; case '2': return "DUP"; case 0x8f: return "EMPTY_SET";
        case 0x90: return "ADDITEMS"; case 0x91: return "FROZENSET"; case 0x97: return "NEXT_BUFFER";
        case 0x98: return "READONLY_BUFFER";
    }
    return nullptr;
}

// Converts a numpy dtype descr ("i4", "<f8", "|b1") to an element type; false if not one moefy reads.
bool parse_descr(const std::string& d, ElemType& t, char& order) {
    std::string s = d;
    order = '=';
    if (!s.empty() && (s[0] == '<' || s[0] == '>' || s[0] == '|' || s[0] == '=')) order = s[0], s = s.substr(1);
    static const std::pair<const char*, ElemType> kTypes[] = {
        {"b1", ElemType::Bool}, {"u1", ElemType::U8},  {"i1", ElemType::I8},  {"i2", ElemType::I16}, {"i4", ElemType::I32},
        {"i8", ElemType::I64},  {"f2", ElemType::F16}, {"f4", ElemType::F32}, {"f8", ElemType::F64}};
    for (auto& [n, e] : kTypes)
        if (s == n) {
            t = e;
            return true;
        }
    return false;
}

class Unpickler {
public:
    Unpickler(const uint8_t* data, size_t size, const std::string& name, const StorageLoader& loader,
              const PickleLimits& lim)
        : p_(data), n_(size), loader_(loader), lim_(lim) {
        t_.name = name;
    }

    PickleTree run() {
        while (true) {
            if (pos_ >= n_) bad_at(n_, "truncated: the stream ends without STOP");
            op_ = pos_;
            const uint8_t op = p_[pos_++];
            if (step(op)) break;
        }
        if (stack_.size() != 1 || !marks_.empty()) bad("STOP with {} values and {} marks left (expected one value)", stack_.size(), marks_.size());
        if (pos_ != n_) bad_at(pos_, "{} bytes after STOP", n_ - pos_);
        t_.root = stack_.back();
        return std::move(t_);
    }

private:
    const uint8_t* p_;
    size_t n_, pos_ = 0, op_ = 0, payload_ = 0;
    const StorageLoader& loader_;
    PickleLimits lim_;
    PickleTree t_;
    std::vector<uint32_t> stack_;
    std::vector<size_t> marks_;
    std::unordered_map<uint32_t, uint32_t> memo_;

    template <typename... Args>
    [[noreturn]] void bad_at(size_t at, fmt::format_string<Args...> f, Args&&... args) {
        fail("{}: pickle byte {}: {}", t_.name, at, fmt::format(f, std::forward<Args>(args)...));
    }
    template <typename... Args>
    [[noreturn]] void bad(fmt::format_string<Args...> f, Args&&... args) {
        bad_at(op_, f, std::forward<Args>(args)...);
    }

    // ---- reading the stream
    const uint8_t* take(uint64_t k, const char* what) {
        if (k > n_ - pos_) bad("truncated: {} needs {} bytes, {} left", what, k, n_ - pos_);
        const uint8_t* at = p_ + pos_;
        pos_ += size_t(k);
        return at;
    }
    uint64_t le(size_t k, const char* what) {
        const uint8_t* b = take(k, what);
        uint64_t v = 0;
        for (size_t i = 0; i < k; ++i) v |= uint64_t(b[i]) << (8 * i);
        return v;
    }
    std::string line(const char* what) {
        size_t end = pos_;
        while (end < n_ && end - pos_ < 256 && p_[end] != '\n') ++end;
        if (end >= n_ || p_[end] != '\n') bad("truncated or overlong {} line in GLOBAL", what);
        std::string s(reinterpret_cast<const char*>(p_ + pos_), end - pos_);
        pos_ = end + 1;
        return s;
    }

    // ---- the value arena
    uint32_t add(PyValue&& v) {
        if (t_.values.size() >= lim_.max_values) bad("more than {} values (limit)", lim_.max_values);
        payload_ += v.s.size() + v.data.size();
        if (payload_ > lim_.max_payload) bad("more than {} bytes of strings and arrays (limit)", lim_.max_payload);
        t_.values.push_back(std::move(v));
        return uint32_t(t_.values.size() - 1);
    }
    uint32_t add_kind(PyKind k) {
        PyValue v;
        v.kind = k;
        return add(std::move(v));
    }
    uint32_t add_int(int64_t i) {
        PyValue v;
        v.kind = PyKind::Int;
        v.i = i;
        return add(std::move(v));
    }
    void push(uint32_t v) {
        if (stack_.size() >= lim_.max_stack) bad("stack deeper than {} (limit)", lim_.max_stack);
        stack_.push_back(v);
    }
    uint32_t pop(const char* opname) {
        if (stack_.empty() || (!marks_.empty() && stack_.size() <= marks_.back())) bad("{} on an empty stack", opname);
        const uint32_t v = stack_.back();
        stack_.pop_back();
        return v;
    }
    // The value on top of the stack, not below the current MARK.
    uint32_t top(const char* opname) {
        if (stack_.empty() || (!marks_.empty() && stack_.size() <= marks_.back())) bad("{} on an empty stack", opname);
        return stack_.back();
    }
    std::vector<uint32_t> pop_mark(const char* opname) {
        if (marks_.empty()) bad("{} without a MARK", opname);
        const size_t k = marks_.back();
        marks_.pop_back();
        std::vector<uint32_t> items(stack_.begin() + long(k), stack_.end());
        stack_.resize(k);
        return items;
    }
    PyValue& val(uint32_t i) { return t_.values[i]; }
    const PyValue& expect(uint32_t i, PyKind k, const char* what) {
        if (val(i).kind != k) bad("{} is a {}, expected a {}", what, py_kind_name(val(i).kind), py_kind_name(k));
        return val(i);
    }
    int64_t expect_int(uint32_t i, const char* what) { return expect(i, PyKind::Int, what).i; }
    void memo_put(uint32_t idx) {
        if (stack_.empty()) bad("memo store on an empty stack");
        if (memo_.size() >= lim_.max_memo && !memo_.count(idx)) bad("more than {} memo entries (limit)", lim_.max_memo);
        memo_[idx] = stack_.back();
    }
    void memo_get(uint32_t idx) {
        auto it = memo_.find(idx);
        if (it == memo_.end()) bad("memo entry {} was never stored", idx);
        push(it->second);
    }
    uint32_t add_bytes(PyKind k, uint64_t len, const char* what) {
        const uint8_t* b = take(len, what);
        PyValue v;
        v.kind = k;
        v.s.assign(reinterpret_cast<const char*>(b), size_t(len));
        return add(std::move(v));
    }

    // ---- globals
    void global(const std::string& module, const std::string& name) {
        for (const Allowed& a : kAllowed)
            if (module == a.module && name == a.name) {
                PyValue v;
                v.kind = PyKind::Global;
                v.s = module + "." + name;
                v.i = int64_t(a.what);
                v.elem = a.elem;
                push(add(std::move(v)));
                return;
            }
        bad("refuses global '{}.{}': only the tensors, numpy arrays and scalars torch.save writes are rebuilt, "
            "nothing is called", module, name);
    }

    // ---- numbers and arrays
    int64_t checked_numel(const std::vector<int64_t>& shape) {
        int64_t n = 1;
        for (int64_t d : shape) {
            if (d < 0) bad("negative dimension {}", d);
            if (__builtin_mul_overflow(n, d, &n) || n > (int64_t(1) << 48)) bad("array of more than 2^48 elements");
        }
        return n;
    }
    std::vector<int64_t> int_tuple(uint32_t i, const char* what) {
        const PyValue& v = val(i);
        if (v.kind != PyKind::Tuple) bad("{} is a {}, expected a tuple of ints", what, py_kind_name(v.kind));
        std::vector<int64_t> out;
        for (uint32_t x : v.items) out.push_back(expect_int(x, what));
        return out;
    }
    // Array from `src`: elements at offset + Σ idx_d * stride_d (element units), copied to C order.
    uint32_t make_array(ElemType t, std::vector<int64_t> shape, const uint8_t* src, size_t src_elems, int64_t offset,
                        const std::vector<int64_t>& stride, const std::string& origin) {
        const int64_t numel = checked_numel(shape);
        const size_t es = elem_size(t);
        if (uint64_t(numel) * es > lim_.max_payload) bad("array of {} bytes (limit {})", uint64_t(numel) * es, lim_.max_payload);
        if (uint64_t(numel) > src_elems)
            bad("array of {} elements from a storage of {} (expanded tensors are not supported)", numel, src_elems);
        if (numel > 0) {  // the farthest element must lie inside the source
            int64_t last = offset;
            for (size_t d = 0; d < shape.size(); ++d) {
                if (stride[d] < 0) bad("negative stride {}", stride[d]);
                int64_t step = 0;
                if (__builtin_mul_overflow(shape[d] - 1, stride[d], &step) || __builtin_add_overflow(last, step, &last))
                    bad("strides overflow");
            }
            if (offset < 0 || uint64_t(last) >= src_elems)
                bad("array of shape {} (offset {}) reaches element {} of a storage of {}", fmt::join(shape, "x"), offset,
                    last, src_elems);
        }
        PyValue v;
        v.kind = PyKind::Array;
        v.elem = t;
        v.origin = origin;
        v.data.resize(size_t(numel) * es);
        std::vector<int64_t> idx(shape.size(), 0);
        for (int64_t k = 0; k < numel; ++k) {
            int64_t at = offset;
            for (size_t d = 0; d < shape.size(); ++d) at += idx[d] * stride[d];
            std::memcpy(v.data.data() + size_t(k) * es, src + size_t(at) * es, es);
            for (size_t d = shape.size(); d-- > 0;) {
                if (++idx[d] < shape[d]) break;
                idx[d] = 0;
            }
        }
        v.shape = std::move(shape);
        return add(std::move(v));
    }
    static std::vector<int64_t> contiguous_strides(const std::vector<int64_t>& shape, bool fortran) {
        std::vector<int64_t> s(shape.size());
        int64_t acc = 1;
        if (fortran)
            for (size_t d = 0; d < shape.size(); ++d) s[d] = acc, acc *= std::max<int64_t>(shape[d], 1);
        else
            for (size_t d = shape.size(); d-- > 0;) s[d] = acc, acc *= std::max<int64_t>(shape[d], 1);
        return s;
    }
    // A numpy array of dtype `dt` from raw bytes.
    uint32_t numpy_array(uint32_t dt, const std::vector<int64_t>& shape, const std::string& raw, bool fortran) {
        const PyValue& d = expect(dt, PyKind::DType, "the array's dtype");
        if (d.s == ">") bad("big-endian numpy arrays are not supported");
        const ElemType t = d.elem;
        const int64_t numel = checked_numel(shape);
        if (uint64_t(numel) * elem_size(t) != raw.size())
            bad("numpy array of shape ({}) x {} needs {} bytes, holds {}", fmt::join(shape, ", "), elem_type_name(t),
                uint64_t(numel) * elem_size(t), raw.size());
        // raw may move when the arena grows: copy it out first.
        const std::string bytes = raw;
        return make_array(t, shape, reinterpret_cast<const uint8_t*>(bytes.data()), size_t(numel), 0,
                          contiguous_strides(shape, fortran), "numpy.ndarray");
    }
    uint32_t numpy_scalar(const std::vector<uint32_t>& a) {
        if (a.size() != 2) bad("numpy scalar takes (dtype, bytes), got {} arguments", a.size());
        const PyValue& d = expect(a[0], PyKind::DType, "numpy scalar dtype");
        const PyValue& b = expect(a[1], PyKind::Bytes, "numpy scalar data");
        if (d.s == ">") bad("big-endian numpy scalars are not supported");
        if (b.s.size() != elem_size(d.elem))
            bad("numpy {} scalar holds {} bytes, expected {}", elem_type_name(d.elem), b.s.size(), elem_size(d.elem));
        const uint8_t* q = reinterpret_cast<const uint8_t*>(b.s.data());
        PyValue v;
        v.origin = std::string("numpy.") + elem_type_name(d.elem);
        switch (d.elem) {
            case ElemType::Bool: v.kind = PyKind::Bool, v.i = q[0] != 0; break;
            case ElemType::U8: v.kind = PyKind::Int, v.i = q[0]; break;
            case ElemType::I8: v.kind = PyKind::Int, v.i = int8_t(q[0]); break;
            case ElemType::I16: { int16_t x; std::memcpy(&x, q, 2); v.kind = PyKind::Int, v.i = x; break; }
            case ElemType::I32: { int32_t x; std::memcpy(&x, q, 4); v.kind = PyKind::Int, v.i = x; break; }
            case ElemType::I64: { int64_t x; std::memcpy(&x, q, 8); v.kind = PyKind::Int, v.i = x; break; }
            case ElemType::F16: { uint16_t x; std::memcpy(&x, q, 2); v.kind = PyKind::Float, v.f = f16_to_f32(x); break; }
            case ElemType::BF16: { uint16_t x; std::memcpy(&x, q, 2); v.kind = PyKind::Float, v.f = bf16_to_f32(x); break; }
            case ElemType::F32: { float x; std::memcpy(&x, q, 4); v.kind = PyKind::Float, v.f = x; break; }
            case ElemType::F64: { double x; std::memcpy(&x, q, 8); v.kind = PyKind::Float, v.f = x; break; }
        }
        return add(std::move(v));
    }
    uint32_t numpy_dtype(const std::vector<uint32_t>& a) {
        if (a.empty() || a.size() > 3) bad("numpy.dtype takes (descr, align, copy), got {} arguments", a.size());
        const std::string descr = expect(a[0], PyKind::Str, "numpy dtype descr").s;
        PyValue v;
        v.kind = PyKind::DType;
        char order = '=';
        if (!parse_descr(descr, v.elem, order)) bad("numpy dtype '{}' is not one moefy reads (bool, ints, floats)", descr);
        v.s = std::string(1, order);
        return add(std::move(v));
    }
    // BUILD on a dtype: (version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata]).
    void build_dtype(uint32_t target, uint32_t state) {
        const PyValue& st = expect(state, PyKind::Tuple, "numpy dtype state");
        if (st.items.size() < 8 || st.items.size() > 9) bad("numpy dtype state of {} fields, expected 8 or 9", st.items.size());
        const int64_t version = expect_int(st.items[0], "numpy dtype state version");
        if (version != 3 && version != 4) bad("numpy dtype state version {} (expected 3 or 4)", version);
        const std::string order = expect(st.items[1], PyKind::Str, "numpy dtype byte order").s;
        if (order != "<" && order != "|" && order != "=" && order != ">") bad("numpy dtype byte order '{}'", order);
        for (int k = 2; k <= 4; ++k)
            if (val(st.items[size_t(k)]).kind != PyKind::None) bad("structured or sub-array numpy dtypes are not supported");
        val(target).s = order;
    }
    uint32_t reconstruct(const std::vector<uint32_t>& a) {
        if (a.empty() || val(a[0]).kind != PyKind::Global || Rebuild(val(a[0]).i) != Rebuild::NdArray)
            bad("numpy _reconstruct of something other than numpy.ndarray");
        return add_kind(PyKind::PendingArray);
    }
    // BUILD on _reconstruct's array: (version, shape, dtype, is_fortran, raw bytes).
    uint32_t build_array(uint32_t state) {
        const PyValue& st = expect(state, PyKind::Tuple, "numpy array state");
        if (st.items.size() != 5) bad("numpy array state of {} fields, expected 5", st.items.size());
        const std::vector<int64_t> shape = int_tuple(st.items[1], "numpy array shape");
        const uint32_t dt = st.items[2];
        const PyValue& fortran = val(st.items[3]);
        if (fortran.kind != PyKind::Bool) bad("numpy array is_fortran is a {}", py_kind_name(fortran.kind));
        const PyValue& raw = val(st.items[4]);
        if (raw.kind != PyKind::Bytes) bad("numpy array data is a {} (object arrays are not supported)", py_kind_name(raw.kind));
        return numpy_array(dt, shape, raw.s, fortran.i != 0);
    }
    uint32_t frombuffer(const std::vector<uint32_t>& a) {
        if (a.size() != 4) bad("numpy _frombuffer takes (buffer, dtype, shape, order), got {} arguments", a.size());
        const PyValue& buf = expect(a[0], PyKind::Bytes, "numpy buffer");
        const std::vector<int64_t> shape = int_tuple(a[2], "numpy array shape");
        const std::string order = expect(a[3], PyKind::Str, "numpy array order").s;
        if (order != "C" && order != "F") bad("numpy array order '{}'", order);
        return numpy_array(a[1], shape, buf.s, order == "F");
    }
    uint32_t codecs_encode(const std::vector<uint32_t>& a) {
        if (a.size() != 2) bad("_codecs.encode takes (str, encoding), got {} arguments", a.size());
        const std::string& text = expect(a[0], PyKind::Str, "_codecs.encode text").s;
        const std::string& enc = expect(a[1], PyKind::Str, "_codecs.encode encoding").s;
        if (enc != "latin1" && enc != "latin-1") bad("_codecs.encode to '{}' (only latin1, as pickle writes bytes)", enc);
        PyValue v;
        v.kind = PyKind::Bytes;
        for (size_t k = 0; k < text.size(); ++k) {  // UTF-8 code points below 256
            const uint8_t c = uint8_t(text[k]);
            if (c < 0x80) v.s.push_back(char(c));
            else if ((c == 0xc2 || c == 0xc3) && k + 1 < text.size() && (uint8_t(text[k + 1]) & 0xc0) == 0x80)
                v.s.push_back(char(((c & 0x03) << 6) | (uint8_t(text[++k]) & 0x3f)));
            else bad("_codecs.encode text has a character that latin1 cannot hold");
        }
        return add(std::move(v));
    }
    uint32_t persistent(uint32_t pid) {
        const PyValue& t = val(pid);
        if (t.kind != PyKind::Tuple || t.items.size() != 5) bad("persistent id is not a 5-tuple ('storage', type, key, location, numel)");
        if (val(t.items[0]).kind != PyKind::Str || val(t.items[0]).s != "storage") bad("persistent id is not a storage");
        const PyValue& type = val(t.items[1]);
        if (type.kind != PyKind::Global || Rebuild(type.i) != Rebuild::StorageType) bad("persistent id's storage type is not a torch storage class");
        const ElemType elem = type.elem;
        const std::string origin = type.s;
        const std::string key = expect(t.items[2], PyKind::Str, "storage key").s;
        expect(t.items[3], PyKind::Str, "storage location");
        const int64_t numel = expect_int(t.items[4], "storage size");
        if (numel < 0) bad("storage '{}' of {} elements", key, numel);
        if (!loader_) bad("persistent id (a torch storage) outside a torch.save archive");
        const std::span<const uint8_t> bytes = loader_(key, elem, numel);
        if (bytes.size() != uint64_t(numel) * elem_size(elem))
            bad("storage '{}' holds {} bytes, {} x {} needs {}", key, bytes.size(), numel, elem_type_name(elem),
                uint64_t(numel) * elem_size(elem));
        PyValue v;
        v.kind = PyKind::Storage;
        v.elem = elem;
        v.i = numel;
        v.s = key;
        v.origin = origin;
        v.storage = bytes.data();
        return add(std::move(v));
    }
    // _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, backward_hooks[, metadata])
    uint32_t rebuild_tensor(const std::vector<uint32_t>& a) {
        if (a.size() != 6 && a.size() != 7) bad("_rebuild_tensor_v2 takes 6 or 7 arguments, got {}", a.size());
        const PyValue& st = expect(a[0], PyKind::Storage, "tensor storage");
        const int64_t offset = expect_int(a[1], "tensor storage offset");
        const std::vector<int64_t> size = int_tuple(a[2], "tensor size");
        const std::vector<int64_t> stride = int_tuple(a[3], "tensor stride");
        if (size.size() != stride.size()) bad("tensor size has {} dimensions, stride {}", size.size(), stride.size());
        if (val(a[4]).kind != PyKind::Bool) bad("tensor requires_grad is a {}", py_kind_name(val(a[4]).kind));
        expect(a[5], PyKind::Dict, "tensor backward hooks");
        if (!val(a[5]).items.empty()) bad("tensor with backward hooks");
        if (a.size() == 7) expect(a[6], PyKind::Dict, "tensor metadata");
        return make_array(st.elem, size, st.storage, size_t(st.i), offset, stride, st.origin);
    }
    uint32_t reduce(uint32_t callable, uint32_t args) {
        const PyValue& c = val(callable);
        if (c.kind != PyKind::Global) bad("REDUCE of a {} (only allowed globals are rebuilt)", py_kind_name(c.kind));
        const std::vector<uint32_t> a = expect(args, PyKind::Tuple, "REDUCE arguments").items;
        switch (Rebuild(c.i)) {
            case Rebuild::OrderedDict:
                if (!a.empty()) bad("collections.OrderedDict with arguments");
                return add_kind(PyKind::Dict);
            case Rebuild::NumpyScalar: return numpy_scalar(a);
            case Rebuild::NumpyDType: return numpy_dtype(a);
            case Rebuild::FromBuffer: return frombuffer(a);
            case Rebuild::Reconstruct: return reconstruct(a);
            case Rebuild::CodecsEncode: return codecs_encode(a);
            case Rebuild::TensorV2: return rebuild_tensor(a);
            case Rebuild::StorageType:
            case Rebuild::NdArray: break;
        }
        bad("global '{}' cannot be called here", c.s);
    }

    // One opcode; true at STOP.
    bool step(uint8_t op) {
        switch (op) {
            case 0x80: {  // PROTO
                const uint64_t v = le(1, "PROTO");
                if (v < 2 || v > 5) bad("pickle protocol {} (torch.save writes 2 to 5)", v);
                return false;
            }
            case 0x95: {  // FRAME: a length hint; the frame must lie inside the stream
                const uint64_t len = le(8, "FRAME");
                if (len > n_ - pos_) bad("truncated: FRAME of {} bytes, {} left", len, n_ - pos_);
                return false;
            }
            case '.': return true;  // STOP
            case '(':               // MARK
                if (marks_.size() >= lim_.max_stack) bad("more than {} marks (limit)", lim_.max_stack);
                marks_.push_back(stack_.size());
                return false;
            case ']': push(add_kind(PyKind::List)); return false;
            case ')': push(add_kind(PyKind::Tuple)); return false;
            case '}': push(add_kind(PyKind::Dict)); return false;
            case 'N': push(add_kind(PyKind::None)); return false;
            case 0x88: case 0x89: {  // NEWTRUE, NEWFALSE
                PyValue v;
                v.kind = PyKind::Bool;
                v.i = op == 0x88;
                push(add(std::move(v)));
                return false;
            }
            case 'J': push(add_int(int32_t(uint32_t(le(4, "BININT"))))); return false;
            case 'K': push(add_int(int64_t(le(1, "BININT1")))); return false;
            case 'M': push(add_int(int64_t(le(2, "BININT2")))); return false;
            case 0x8a: case 0x8b: {  // LONG1, LONG4: little-endian two's complement
                const uint64_t len = op == 0x8a ? le(1, "LONG1") : le(4, "LONG4");
                if (len > 8) bad("integer of {} bytes (moefy reads integers up to 64 bits)", len);
                const uint8_t* b = take(len, "LONG");
                uint64_t v = 0;
                for (uint64_t k = 0; k < len; ++k) v |= uint64_t(b[k]) << (8 * k);
                if (len > 0 && len < 8 && (b[len - 1] & 0x80)) v |= ~uint64_t(0) << (8 * len);
                push(add_int(int64_t(v)));
                return false;
            }
            case 'G': {  // BINFLOAT, big-endian
                const uint8_t* b = take(8, "BINFLOAT");
                uint64_t bits = 0;
                for (int k = 0; k < 8; ++k) bits = bits << 8 | b[k];
                PyValue v;
                v.kind = PyKind::Float;
                std::memcpy(&v.f, &bits, 8);
                push(add(std::move(v)));
                return false;
            }
            case 0x8c: push(add_bytes(PyKind::Str, le(1, "SHORT_BINUNICODE"), "SHORT_BINUNICODE")); return false;
            case 'X': push(add_bytes(PyKind::Str, le(4, "BINUNICODE"), "BINUNICODE")); return false;
            case 0x8d: push(add_bytes(PyKind::Str, le(8, "BINUNICODE8"), "BINUNICODE8")); return false;
            case 'C': push(add_bytes(PyKind::Bytes, le(1, "SHORT_BINBYTES"), "SHORT_BINBYTES")); return false;
            case 'B': push(add_bytes(PyKind::Bytes, le(4, "BINBYTES"), "BINBYTES")); return false;
            case 0x8e: push(add_bytes(PyKind::Bytes, le(8, "BINBYTES8"), "BINBYTES8")); return false;
            case 0x96: push(add_bytes(PyKind::Bytes, le(8, "BYTEARRAY8"), "BYTEARRAY8")); return false;
            case 'q': memo_put(uint32_t(le(1, "BINPUT"))); return false;
            case 'r': memo_put(uint32_t(le(4, "LONG_BINPUT"))); return false;
            case 0x94: memo_put(uint32_t(memo_.size())); return false;  // MEMOIZE
            case 'h': memo_get(uint32_t(le(1, "BINGET"))); return false;
            case 'j': memo_get(uint32_t(le(4, "LONG_BINGET"))); return false;
            case 'a': {  // APPEND
                const uint32_t x = pop("APPEND"), list = top("APPEND");
                if (val(list).kind != PyKind::List) bad("APPEND to a {}", py_kind_name(val(list).kind));
                val(list).items.push_back(x);
                return false;
            }
            case 'e': {  // APPENDS
                const std::vector<uint32_t> xs = pop_mark("APPENDS");
                const uint32_t list = top("APPENDS");
                if (val(list).kind != PyKind::List) bad("APPENDS to a {}", py_kind_name(val(list).kind));
                auto& items = val(list).items;
                items.insert(items.end(), xs.begin(), xs.end());
                return false;
            }
            case 's': case 'u': {  // SETITEM, SETITEMS
                std::vector<uint32_t> kv;
                if (op == 's') {
                    const uint32_t v = pop("SETITEM"), k = pop("SETITEM");
                    kv = {k, v};
                } else {
                    kv = pop_mark("SETITEMS");
                    if (kv.size() % 2) bad("SETITEMS with an odd number of values");
                }
                const uint32_t dict = top("SETITEM");
                if (val(dict).kind != PyKind::Dict) bad("SETITEM on a {}", py_kind_name(val(dict).kind));
                auto& items = val(dict).items;
                items.insert(items.end(), kv.begin(), kv.end());
                return false;
            }
            case 't': {  // TUPLE
                PyValue v;
                v.kind = PyKind::Tuple;
                v.items = pop_mark("TUPLE");
                push(add(std::move(v)));
                return false;
            }
            case 0x85: case 0x86: case 0x87: {  // TUPLE1..3
                PyValue v;
                v.kind = PyKind::Tuple;
                v.items.resize(size_t(op - 0x84));
                for (size_t k = v.items.size(); k-- > 0;) v.items[k] = pop("TUPLE1/2/3");
                push(add(std::move(v)));
                return false;
            }
            case 'c': {  // GLOBAL
                const std::string module = line("module");
                const std::string name = line("name");
                global(module, name);
                return false;
            }
            case 0x93: {  // STACK_GLOBAL
                const uint32_t name = pop("STACK_GLOBAL"), module = pop("STACK_GLOBAL");
                const std::string n = expect(name, PyKind::Str, "STACK_GLOBAL name").s;
                const std::string m = expect(module, PyKind::Str, "STACK_GLOBAL module").s;
                global(m, n);
                return false;
            }
            case 'R': {  // REDUCE
                const uint32_t args = pop("REDUCE"), callable = pop("REDUCE");
                push(reduce(callable, args));
                return false;
            }
            case 'b': {  // BUILD
                const uint32_t state = pop("BUILD"), target = top("BUILD");
                if (val(target).kind == PyKind::DType) {
                    build_dtype(target, state);
                } else if (val(target).kind == PyKind::PendingArray) {
                    // The finished array takes the pending one's place, so memo references to it see it.
                    const uint32_t built = build_array(state);
                    val(target) = std::move(val(built));
                    t_.values.pop_back();
                } else {
                    bad("BUILD on a {} (only numpy dtypes and arrays are rebuilt)", py_kind_name(val(target).kind));
                }
                return false;
            }
            case 'Q': {  // BINPERSID
                push(persistent(pop("BINPERSID")));
                return false;
            }
        }
        const char* name = opcode_name(op);
        if (name) bad("refuses opcode {} (0x{:02x}): torch.save's pickles do not use it", name, op);
        bad("unknown opcode 0x{:02x}", op);
    }
};

}  // namespace

PickleTree parse_pickle(const uint8_t* data, size_t size, const std::string& name, const StorageLoader& storages,
                        const PickleLimits& limits) {
    return Unpickler(data, size, name, storages, limits).run();
}

}  // namespace moefy
