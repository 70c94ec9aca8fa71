#pragma once
// A restricted unpickler for the pickles torch.save writes (protocol 2 to 5):
// it builds a small value tree and never runs code. Untrusted input: only the
// opcodes those files use are accepted, and only these globals, each rebuilt by
// moefy itself (never looked up or called):
//
//   torch._utils._rebuild_tensor_v2        -> Array (the storage's elements, C order)
//   torch.{Float,Double,Half,BFloat16,Long,Int,Short,Char,Byte,Bool}Storage
//                                          (only inside a persistent id, see StorageLoader)
//   collections.OrderedDict                -> Dict
//   numpy.core.multiarray.scalar           -> Int / Float / Bool
//   numpy.dtype                            (argument of the numpy rebuilders)
//   numpy.core.numeric._frombuffer         -> Array (numpy arrays, protocol 5)
//   numpy.core.multiarray._reconstruct, numpy.ndarray -> Array (numpy arrays, protocol 2-4)
//   _codecs.encode(str, "latin1")          -> Bytes (protocol 2 writes bytes so)
//   (numpy._core.* spellings of numpy 2 too)
//
// Any other global (os.system, builtins.eval, subprocess.Popen, ...) or opcode
// is refused with an error naming the file, the global or opcode and its byte
// offset. Sizes are capped (PickleLimits), lengths are checked against the
// bytes left, and nothing recurses: the tree is a flat arena of nodes that
// refer to each other by index, so no input can overflow the stack.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

namespace moefy {

enum class PyKind : uint8_t { None, Bool, Int, Float, Str, Bytes, List, Tuple, Dict, Array,
                              // intermediate values, never left in a finished tree's data
                              Global, Storage, DType, PendingArray };
const char* py_kind_name(PyKind k);

// Element types of arrays (numpy dtypes / torch storages).
enum class ElemType : uint8_t { Bool, U8, I8, I16, I32, I64, F16, BF16, F32, F64 };
size_t elem_size(ElemType t);
const char* elem_type_name(ElemType t);  // numpy spelling: "bool", "uint8", ..., "float64", "bfloat16"
bool elem_is_integer(ElemType t);        // Bool and the integer types
bool elem_is_float(ElemType t);

struct PyValue {
    PyKind kind = PyKind::None;
    int64_t i = 0;              // Bool, Int; Storage: element count
    double f = 0;               // Float
    std::string s;              // Str, Bytes; Global: "module.name"; Storage: key
    std::vector<uint32_t> items;  // List, Tuple; Dict: key, value, key, value ...
    // Array (and Storage / DType / PendingArray while parsing)
    ElemType elem = ElemType::U8;
    std::vector<int64_t> shape;
    std::vector<uint8_t> data;  // Array: elements, C order, little-endian
    std::string origin;         // Array: "numpy.ndarray" | "torch.FloatStorage" ...; numpy scalars: "numpy.int32" ...
    const uint8_t* storage = nullptr;  // Storage: the bytes the loader returned
};

struct PickleTree {
    std::string name;  // for messages
    std::vector<PyValue> values;
    uint32_t root = 0;
    const PyValue& at(uint32_t i) const { return values[i]; }
    const PyValue& top() const { return values[root]; }
};

struct PickleLimits {
    size_t max_values = size_t(1) << 22;  // nodes in the tree (~170 bytes each)
    size_t max_stack = size_t(1) << 20;
    size_t max_memo = size_t(1) << 22;
    size_t max_payload = size_t(1) << 32;  // bytes held by strings, bytes and arrays together
};

// Resolves a torch persistent id ('storage', torch.<T>Storage, key, location,
// numel): must return exactly numel * elem_size(t) bytes that stay valid for
// the parse, or throw. Without one, persistent ids are refused.
using StorageLoader = std::function<std::span<const uint8_t>(const std::string& key, ElemType t, int64_t numel)>;

// Parses one pickle stream of `size` bytes; `name` (a file, or file:entry)
// appears in every message. The fuzzing entry point.
PickleTree parse_pickle(const uint8_t* data, size_t size, const std::string& name, const StorageLoader& storages = {},
                        const PickleLimits& limits = {});

}  // namespace moefy
