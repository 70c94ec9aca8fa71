#pragma once
// GGUF files (the format of llama.cpp / ggml, version 3): a validating reader
// over a memory mapping or any byte buffer, and a streaming writer that never
// holds more than the tensor being written.
//
// Layout (all little-endian):
//   u32 magic "GGUF", u32 version (3), u64 tensor_count, u64 kv_count,
//   kv_count × { string key, u32 value_type, value },
//   tensor_count × { string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset },
//   padding to `general.alignment` (default 32), then the data section; each
//   tensor's offset is relative to the data section and a multiple of the alignment.
//   string = u64 length + bytes (no terminator); array = u32 elem_type, u64 count, elems.
//   ne[0] is the innermost (contiguous) dimension: a PyTorch [rows, cols] tensor
//   has ne = {cols, rows}.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "io/mapped_file.h"
#include "io/safetensors.h"

namespace moefy {

// GGUF metadata value types (gguf.h enum gguf_type).
enum class GgufType : uint32_t {
    U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, Bool = 7,
    String = 8, Array = 9, U64 = 10, I64 = 11, F64 = 12,
};
const char* gguf_type_name(GgufType t);

// Tensor element types moefy reads and writes (ggml.h enum ggml_type values).
enum class GgmlType : uint32_t { F32 = 0, F16 = 1, Q8_0 = 8, BF16 = 30 };
const char* ggml_type_name(GgmlType t);  // "f32", "f16", "q8_0", "bf16"
// Elements per block (32 for q8_0, else 1) and bytes per block (q8_0: f16 scale + 32 int8).
int64_t ggml_block_elems(GgmlType t);
size_t ggml_block_bytes(GgmlType t);
// Bytes of a tensor of this type with `ne` (ne[0] must be a multiple of the block).
size_t ggml_nbytes(GgmlType t, const std::vector<int64_t>& ne);

constexpr uint32_t kGgufVersion = 3;
constexpr uint32_t kGgufDefaultAlignment = 32;
constexpr int64_t kQ8Block = 32;

// One metadata value. Scalars: integers and bools in `i` (u64 bit for bit),
// floats in `f`, strings in `s`. Arrays: `elem` is the element type and exactly
// one of ints / reals / strs holds the elements.
struct GgufValue {
    GgufType type = GgufType::U32;
    GgufType elem = GgufType::U8;
    int64_t i = 0;
    double f = 0;
    std::string s;
    std::vector<int64_t> ints;
    std::vector<double> reals;
    std::vector<std::string> strs;

    static GgufValue u32(uint32_t v);
    static GgufValue i32(int32_t v);
    static GgufValue u64(uint64_t v);
    static GgufValue f32(float v);
    static GgufValue boolean(bool v);
    static GgufValue str(std::string v);
    static GgufValue str_array(std::vector<std::string> v);
    static GgufValue f32_array(std::vector<double> v);
    static GgufValue i32_array(std::vector<int64_t> v);

    bool is_array() const { return type == GgufType::Array; }
    bool is_integer() const;  // an integer scalar type (not bool)
    size_t array_size() const { return elem == GgufType::String ? strs.size() : elem == GgufType::F32 || elem == GgufType::F64 ? reals.size() : ints.size(); }
    std::string to_string(size_t max_items = 8) const;  // for inspect
};

struct GgufKV {
    std::string key;
    GgufValue value;
};

struct GgufTensorInfo {
    std::string name;
    GgmlType type = GgmlType::F32;
    std::vector<int64_t> ne;     // GGUF order: ne[0] innermost
    uint64_t offset = 0;         // relative to the data section
    const uint8_t* data = nullptr;
    size_t nbytes = 0;

    int64_t numel() const;
    // PyTorch order (ne reversed), e.g. {rows, cols}.
    std::vector<int64_t> torch_shape() const;
};

// A parsed GGUF file. Holds the mapping when opened from a path; from
// parse_gguf the tensor data pointers point into the caller's buffer.
class GgufFile {
public:
    const std::string& name() const { return name_; }
    uint32_t version() const { return version_; }
    uint32_t alignment() const { return alignment_; }
    size_t data_offset() const { return data_offset_; }  // file offset of the data section
    const std::vector<GgufKV>& kv() const { return kv_; }
    const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }  // in header order
    const MappedFile* mapping() const { return map_.get(); }

    const GgufValue* find(const std::string& key) const;
    const GgufTensorInfo* find_tensor(const std::string& name) const;
    // Typed getters that throw naming the file and the key when it is missing
    // or has another type. Integer getters accept any integer type that fits.
    const GgufValue& get(const std::string& key) const;
    int64_t get_int(const std::string& key) const;
    int64_t get_int(const std::string& key, int64_t def) const;
    double get_float(const std::string& key) const;  // f32 or f64
    double get_float(const std::string& key, double def) const;
    bool get_bool(const std::string& key, bool def) const;
    std::string get_str(const std::string& key) const;
    std::string get_str(const std::string& key, const std::string& def) const;
    const GgufTensorInfo& tensor(const std::string& name) const;  // throws "tensor 'x' not found"

    friend GgufFile parse_gguf(const uint8_t* data, size_t size, const std::string& name);
    friend GgufFile open_gguf(const std::string& path);

private:
    std::string name_;
    uint32_t version_ = 0;
    uint32_t alignment_ = kGgufDefaultAlignment;
    size_t data_offset_ = 0;
    std::vector<GgufKV> kv_;
    std::map<std::string, size_t> kv_index_;
    std::vector<GgufTensorInfo> tensors_;
    std::map<std::string, size_t> tensor_index_;
    std::shared_ptr<MappedFile> map_;
};

// Validates every header field and names the bad one: magic, version (2 or 3),
// counts (what the bytes left can hold), key and string lengths, value and
// array types, duplicate keys, general.alignment (a power of two), n_dims (1..4),
// dimensions, tensor types (f32, f16, bf16, q8_0; others are refused by name),
// row length a multiple of the block, offsets aligned and inside the data
// section, type × shape = bytes, no two tensors overlapping, names unique.
// `name` is used in errors. Throws moefy::Error.
GgufFile parse_gguf(const uint8_t* data, size_t size, const std::string& name);
// Maps `path` and parses it.
GgufFile open_gguf(const std::string& path);
// True when the file starts with the GGUF magic (false for directories and short files).
bool is_gguf_file(const std::string& path);

// Rows [row0, row0+n) of a tensor viewed as [rows = numel / ne[0], ne[0]],
// converted to f32 (q8_0 dequantised: x = d · q).
void gguf_read_rows_f32(const GgufTensorInfo& t, int64_t row0, int64_t n, float* dst);

// q8_0: n (a multiple of 32) floats -> n/32 blocks {f16 d = amax/127, int8 q[32] = round(x/d)}.
void quantize_q8_0(const float* src, uint8_t* dst, size_t n);
void dequantize_q8_0(const uint8_t* src, float* dst, size_t n);

// ---- writing

struct GgufTensorSpec {
    std::string name;
    GgmlType type = GgmlType::F32;
    std::vector<int64_t> ne;  // GGUF order
    size_t nbytes() const { return ggml_nbytes(type, ne); }
};

// Produces tensor `index` by writing exactly its nbytes into the sink.
using GgufProducer = std::function<void(size_t index, ByteSink& sink)>;

// Writes a GGUF v3 file: header (metadata in the given order, then the tensor
// infos with aligned offsets), padding, then each tensor from `produce`, padded
// to the alignment. The file is written to a temporary sibling
// ("PATH.tmp-<pid>") and renamed to `path` only when complete; on any error the
// temporary is removed, so a failed or killed run leaves nothing at `path`.
// Refuses an existing `path` unless `force`. Verifies each tensor's byte count.
void write_gguf(const std::string& path, const std::vector<GgufKV>& kv, const std::vector<GgufTensorSpec>& specs,
                const GgufProducer& produce, bool force = false, uint32_t alignment = kGgufDefaultAlignment);

// A ByteSink adapter that receives the f32 values of one tensor, in order, and
// passes q8_0 blocks on to `out` (blocks never straddle a row when the row
// length is a multiple of 32). finish() throws if a partial block is left.
class Q8Sink : public ByteSink {
public:
    Q8Sink(ByteSink& out, std::string tensor_name) : out_(out), name_(std::move(tensor_name)) {}
    void write(const void* data, size_t n) override;
    void finish();

private:
    ByteSink& out_;
    std::string name_;
    std::vector<uint8_t> pending_;  // bytes of an incomplete float or block
    std::vector<uint8_t> blocks_;
};

}  // namespace moefy
