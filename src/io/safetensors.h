#pragma once
// Safetensors checkpoints: a validating, memory-mapped reader (single file or
// sharded through model.safetensors.index.json) and a streaming writer that
// never holds more than the tensor being written.
//
// File layout: u64 little-endian header length N, N bytes of JSON
// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}},
// then the data section; offsets are relative to the data section.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "io/dtype.h"
#include "io/mapped_file.h"

namespace moefy {

struct TensorView {
    std::string name;
    DType dtype = DType::F32;
    std::vector<int64_t> shape;
    const uint8_t* data = nullptr;  // inside the mapping of `file`
    size_t nbytes = 0;
    const MappedFile* file = nullptr;

    int64_t numel() const;
    int64_t rows() const { return shape.empty() ? 1 : shape[0]; }
    int64_t cols() const { return rows() ? numel() / rows() : 0; }  // product of the other dims
    std::string shape_str() const;                                   // "[768, 192]"
};

// Validates a whole safetensors file held in memory (what SafetensorsFile does
// after mapping it): the views point into [p, p + size) and name `file`.
// The entry point for fuzzing; throws naming `where`.
std::vector<TensorView> parse_safetensors(const uint8_t* p, size_t size, const std::string& where,
                                          std::map<std::string, std::string>* metadata = nullptr,
                                          const MappedFile* file = nullptr);

class SafetensorsFile {
public:
    // Maps and validates: header length within the file, JSON well formed,
    // dtype known, offsets inside the data section, not overlapping, and
    // matching shape x dtype size. Throws naming the file and the tensor.
    explicit SafetensorsFile(const std::string& path);

    const std::string& path() const { return map_.path(); }
    const std::vector<TensorView>& tensors() const { return tensors_; }  // in data-offset order
    const std::map<std::string, std::string>& metadata() const { return metadata_; }
    const MappedFile& mapping() const { return map_; }

private:
    MappedFile map_;
    std::vector<TensorView> tensors_;
    std::map<std::string, std::string> metadata_;
};

// Every tensor of a checkpoint directory.
class TensorStore {
public:
    // `dir` holds model.safetensors, or model.safetensors.index.json and the
    // shards it names (every shard must exist and hold what the index says).
    static std::unique_ptr<TensorStore> open_dir(const std::string& dir);
    // A single file, for tests and tools.
    static std::unique_ptr<TensorStore> open_file(const std::string& path);
    // Tensors that live elsewhere (a GGUF mapping, buffers made at load time):
    // `owner` keeps their memory alive as long as the store. Views with
    // file == nullptr own no mapping and are never released.
    static std::unique_ptr<TensorStore> from_views(std::string location, std::vector<TensorView> views,
                                                   std::shared_ptr<const void> owner);

    const TensorView* find(const std::string& name) const;
    const TensorView& get(const std::string& name) const;  // throws naming the checkpoint
    // Throws unless `name` exists with exactly this shape.
    const TensorView& get(const std::string& name, const std::vector<int64_t>& shape) const;
    std::vector<std::string> names() const;                 // shard order, then offset order
    size_t tensor_count() const { return by_name_.size(); }
    size_t total_bytes() const;
    const std::string& location() const { return location_; }
    const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }

    // Rows [row0, row0+n) of a tensor (viewed as [rows, cols]) converted to f32.
    void read_rows_f32(const TensorView& t, int64_t row0, int64_t n, float* dst) const;
    std::vector<float> read_f32(const std::string& name) const;
    // Drops the tensor's pages from the resident set (see MappedFile::release).
    void release(const TensorView& t) const;

private:
    std::string location_;
    std::vector<std::unique_ptr<SafetensorsFile>> files_;
    std::unordered_map<std::string, const TensorView*> by_name_;
    std::vector<TensorView> views_;        // from_views
    std::shared_ptr<const void> owner_;   // from_views
};

// Warns (common/warn.h), naming the file and tensor, for every tensor holding a
// NaN or an infinity, with how many and the first index. Reads every byte.
void warn_non_finite(const TensorStore& store);

// Bytes of a tensor of `shape` x `dtype`; throws naming `where` when the product
// overflows 64 bits or a dimension is negative (a shape must never wrap to a small size).
uint64_t checked_nbytes(const std::vector<int64_t>& shape, DType dtype, const std::string& where);

// Receives the bytes of one tensor while it is written.
class ByteSink {
public:
    virtual ~ByteSink() = default;
    virtual void write(const void* data, size_t n) = 0;
    // Appends n bytes of file `fd` from `offset` without passing them through
    // this process, when the sink can (a file: copy_file_range). Returns false,
    // having written nothing, when it cannot; the caller then writes them itself.
    virtual bool copy_range(int fd, uint64_t offset, size_t n) {
        (void)fd, (void)offset, (void)n;
        return false;
    }
};

struct TensorSpec {
    std::string name;
    DType dtype = DType::F32;
    std::vector<int64_t> shape;
    size_t nbytes() const;
};

// Produces tensor `index` of the spec list by writing exactly its nbytes into the sink.
using TensorProducer = std::function<void(size_t index, ByteSink& sink)>;

// Writes one safetensors file: header from `specs`, then every tensor in order
// from `produce`. Verifies each tensor got exactly its declared byte count.
void write_safetensors(const std::string& path, const std::vector<TensorSpec>& specs,
                       const TensorProducer& produce,
                       const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

// Writes `specs` into `dir` as model.safetensors when the total is at most
// `max_shard_bytes`, else as model-0000i-of-0000N.safetensors shards (tensors
// kept whole, in order) plus model.safetensors.index.json. Returns the files written.
std::vector<std::string> write_checkpoint_tensors(const std::string& dir, const std::vector<TensorSpec>& specs,
                                                  const TensorProducer& produce, size_t max_shard_bytes);

}  // namespace moefy
