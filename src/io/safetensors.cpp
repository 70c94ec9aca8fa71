#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/parallel.h"
#include "common/warn.h"
#include "io/file_sink.h"
#include "io/json.h"
#include "io/output_dir.h"

namespace moefy {

namespace fs = std::filesystem;
using nlohmann::json;

int64_t TensorView::numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;  // shape x dtype was checked against overflow on load
    return n;
}


static std::string shape_to_str(const std::vector<int64_t>& shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

std::string TensorView::shape_str() const { return shape_to_str(shape); }

uint64_t checked_nbytes(const std::vector<int64_t>& shape, DType dtype, const std::string& where) {
    uint64_t n = dtype_size(dtype);
    for (int64_t d : shape) {
        if (d < 0) fail("{}: shape has a negative dimension {}", where, d);
        if (__builtin_mul_overflow(n, uint64_t(d), &n))
            fail("{}: shape {} x {} does not fit in 64 bits (more than 2^64 bytes)", where, shape_to_str(shape), dtype_name(dtype));
    }
    if (n > uint64_t(INT64_MAX)) fail("{}: shape {} x {} needs {} bytes, more than 2^63", where, shape_to_str(shape), dtype_name(dtype), n);
    return n;
}

size_t TensorSpec::nbytes() const { return size_t(checked_nbytes(shape, dtype, "tensor '" + name + "'")); }

// ---------------------------------------------------------------- reading

SafetensorsFile::SafetensorsFile(const std::string& path) : map_(path) {
    tensors_ = parse_safetensors(map_.data(), map_.size(), path, &metadata_, &map_);
}

std::vector<TensorView> parse_safetensors(const uint8_t* p, size_t size, const std::string& path,
                                          std::map<std::string, std::string>* metadata_out, const MappedFile* file) {
    std::vector<TensorView> tensors_;
    std::map<std::string, std::string> metadata_;
    if (size < 8) fail("{}: not a safetensors file (only {} bytes, no header length)", path, size);
    uint64_t hlen = 0;
    std::memcpy(&hlen, p, 8);  // little-endian hosts only (x86-64, aarch64)
    // The format's own bound (the reference implementation refuses headers over 100 MB).
    if (hlen > (uint64_t(100) << 20)) fail("{}: header length {} is over the 100 MB limit of the format", path, hlen);
    if (hlen > size - 8) fail("{}: header length {} runs past the end of the file ({} bytes): truncated or not safetensors", path, hlen, size);
    const json header = parse_json(std::string_view(reinterpret_cast<const char*>(p) + 8, size_t(hlen)), path + ": header");
    if (!header.is_object()) fail("{}: header is not a JSON object", path);
    const uint8_t* data = p + 8 + hlen;
    const size_t data_size = size - 8 - hlen;

    for (auto it = header.begin(); it != header.end(); ++it) {
        const std::string& name = it.key();
        if (name == "__metadata__") {
            if (!it->is_object()) fail("{}: __metadata__ is not an object", path);
            for (auto m = it->begin(); m != it->end(); ++m)
                if (m->is_string()) metadata_[m.key()] = m->get<std::string>();
            continue;
        }
        const json& t = *it;
        const std::string where = fmt::format("{}: tensor '{}'", path, name);
        if (!t.is_object()) fail("{}: entry is not an object", where);
        if (!t.contains("dtype") || !t["dtype"].is_string()) fail("{}: missing dtype", where);
        if (!t.contains("shape") || !t["shape"].is_array()) fail("{}: missing shape", where);
        if (!t.contains("data_offsets") || !t["data_offsets"].is_array() || t["data_offsets"].size() != 2)
            fail("{}: data_offsets must be [begin, end]", where);
        TensorView v;
        v.name = name;
        v.dtype = parse_dtype(t["dtype"].get<std::string>(), where);
        for (const json& d : t["shape"]) {
            if (!d.is_number_integer() || d.get<int64_t>() < 0) fail("{}: shape has a non-integer or negative dimension", where);
            v.shape.push_back(d.get<int64_t>());
        }
        const json& off = t["data_offsets"];
        if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned()) fail("{}: data_offsets are not non-negative integers", where);
        uint64_t b = off[0].get<uint64_t>(), e = off[1].get<uint64_t>();
        if (b > e) fail("{}: data_offsets [{}, {}] are reversed", where, b, e);
        if (e > data_size)
            fail("{}: data_offsets [{}, {}] run past the data section ({} bytes): file truncated?", where, b, e, data_size);
        const uint64_t expect = checked_nbytes(v.shape, v.dtype, where);
        if (e - b != expect)
            fail("{}: {} bytes in data_offsets but shape {} x {} needs {}", where, e - b, v.shape_str(), dtype_name(v.dtype), expect);
        v.data = data + b;
        v.nbytes = size_t(e - b);
        v.file = file;
        tensors_.push_back(std::move(v));
    }
    std::sort(tensors_.begin(), tensors_.end(), [](const TensorView& a, const TensorView& b) { return a.data < b.data; });
    for (size_t i = 1; i < tensors_.size(); ++i) {
        const TensorView& a = tensors_[i - 1];
        const TensorView& b = tensors_[i];
        if (a.data + a.nbytes > b.data) fail("{}: tensors '{}' and '{}' overlap in the data section", path, a.name, b.name);
    }
    if (metadata_out) *metadata_out = std::move(metadata_);
    return tensors_;
}

std::unique_ptr<TensorStore> TensorStore::open_file(const std::string& path) {
    auto s = std::make_unique<TensorStore>();
    s->location_ = path;
    s->files_.push_back(std::make_unique<SafetensorsFile>(path));
    for (const TensorView& t : s->files_.back()->tensors()) s->by_name_[t.name] = &t;
    return s;
}

std::unique_ptr<TensorStore> TensorStore::from_views(std::string location, std::vector<TensorView> views,
                                                     std::shared_ptr<const void> owner) {
    auto s = std::make_unique<TensorStore>();
    s->location_ = std::move(location);
    s->views_ = std::move(views);
    s->owner_ = std::move(owner);
    for (const TensorView& t : s->views_) {
        if (s->by_name_.count(t.name)) fail("{}: tensor '{}' given twice", s->location_, t.name);
        s->by_name_[t.name] = &t;
    }
    return s;
}

std::unique_ptr<TensorStore> TensorStore::open_dir(const std::string& dir) {
    const fs::path d(dir);
    if (!fs::is_directory(d)) fail("{}: not a directory", dir);
    const fs::path index = d / "model.safetensors.index.json";
    auto s = std::make_unique<TensorStore>();
    s->location_ = dir;
    if (fs::exists(index)) {
        const json j = read_json_file(index.string());
        if (!j.contains("weight_map") || !j["weight_map"].is_object()) fail("{}: no weight_map object", index.string());
        std::vector<std::string> shards;
        for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
            if (!it->is_string()) fail("{}: weight_map entry '{}' is not a file name", index.string(), it.key());
            std::string f = it->get<std::string>();
            if (f.find('/') != std::string::npos) fail("{}: shard name '{}' must be a plain file name", index.string(), f);
            if (std::find(shards.begin(), shards.end(), f) == shards.end()) shards.push_back(f);
        }
        std::sort(shards.begin(), shards.end());
        for (const std::string& f : shards) {
            const fs::path p = d / f;
            if (!fs::exists(p)) fail("{}: shard '{}' named in model.safetensors.index.json is missing", dir, f);
            s->files_.push_back(std::make_unique<SafetensorsFile>(p.string()));
            for (const TensorView& t : s->files_.back()->tensors()) {
                if (s->by_name_.count(t.name)) fail("{}: tensor '{}' appears in more than one shard", dir, t.name);
                s->by_name_[t.name] = &t;
            }
        }
        for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
            auto found = s->by_name_.find(it.key());
            if (found == s->by_name_.end())
                fail("{}: tensor '{}' is listed in the index but not present in shard '{}'", dir, it.key(), it->get<std::string>());
            if (fs::path(found->second->file->path()).filename() != it->get<std::string>())
                fail("{}: tensor '{}' is in '{}', but the index says '{}'", dir, it.key(),
                     fs::path(found->second->file->path()).filename().string(), it->get<std::string>());
        }
        return s;
    }
    const fs::path single = d / "model.safetensors";
    if (fs::exists(single)) {
        s->files_.push_back(std::make_unique<SafetensorsFile>(single.string()));
        for (const TensorView& t : s->files_.back()->tensors()) s->by_name_[t.name] = &t;
        return s;
    }
    fail("{}: no model.safetensors or model.safetensors.index.json (moefy reads safetensors checkpoints)", dir);
}

const TensorView* TensorStore::find(const std::string& name) const {
    auto it = by_name_.find(name);
    return it == by_name_.end() ? nullptr : it->second;
}

const TensorView& TensorStore::get(const std::string& name) const {
    const TensorView* t = find(name);
    if (!t) fail("{}: tensor '{}' not found", location_, name);
    return *t;
}

const TensorView& TensorStore::get(const std::string& name, const std::vector<int64_t>& shape) const {
    const TensorView& t = get(name);
    if (t.shape != shape) fail("{}: tensor '{}' has shape {}, expected {}", location_, name, t.shape_str(), shape_to_str(shape));
    return t;
}

std::vector<std::string> TensorStore::names() const {
    std::vector<std::string> out;
    for (const auto& f : files_)
        for (const TensorView& t : f->tensors()) out.push_back(t.name);
    for (const TensorView& t : views_) out.push_back(t.name);
    return out;
}

size_t TensorStore::total_bytes() const {
    size_t n = 0;
    for (const auto& f : files_)
        for (const TensorView& t : f->tensors()) n += t.nbytes;
    for (const TensorView& t : views_) n += t.nbytes;
    return n;
}

void TensorStore::read_rows_f32(const TensorView& t, int64_t row0, int64_t n, float* dst) const {
    if (row0 < 0 || n < 0 || row0 + n > t.rows()) fail("{}: rows [{}, {}) out of range for tensor '{}' {}", location_, row0, row0 + n, t.name, t.shape_str());
    const size_t es = dtype_size(t.dtype);
    to_f32(t.dtype, t.data + size_t(row0 * t.cols()) * es, dst, size_t(n * t.cols()));
}

std::vector<float> TensorStore::read_f32(const std::string& name) const {
    const TensorView& t = get(name);
    std::vector<float> out(size_t(t.numel()));
    to_f32(t.dtype, t.data, out.data(), out.size());
    return out;
}

void TensorStore::release(const TensorView& t) const {
    if (t.file) t.file->release(t.data, t.nbytes);
}

namespace {

// Words of `p[0, n)` whose exponent bits are all ones (NaN or Inf in every float
// format). Branch-free, so the loop vectorizes (the first offender is looked
// for only when there is one).
template <class W>
size_t count_non_finite(const uint8_t* p, size_t n, W mask) {
    // counted in W-sized lanes per block of at most 2^15 words (no overflow),
    // so the compare and the sum stay in vector registers of W
    constexpr size_t kBlock = size_t(1) << 15;
    size_t bad = 0;
    for (size_t b = 0; b < n; b += kBlock) {
        W c = 0;
        for (size_t i = b, e = std::min(n, b + kBlock); i < e; ++i) {
            W v;
            std::memcpy(&v, p + i * sizeof(W), sizeof(W));
            c = W(c + W((v & mask) == mask));
        }
        bad += c;
    }
    return bad;
}

template <class W>
size_t first_non_finite(const uint8_t* p, size_t n, W mask) {
    for (size_t i = 0; i < n; ++i) {
        W v;
        std::memcpy(&v, p + i * sizeof(W), sizeof(W));
        if ((v & mask) == mask) return i;
    }
    return n;
}

}  // namespace

void warn_non_finite(const TensorStore& store) {
    for (const auto& f : store.files())
        for (const TensorView& t : f->tensors()) {
            const size_t n = t.nbytes / dtype_size(t.dtype);
            size_t bad = 0, first = 0;
            // the engine threads take blocks of 1M words (the scan is most of a
            // model's load time: it is where the mapped pages are first read)
            auto scan = [&](auto mask) {
                constexpr int64_t kChunk = int64_t(1) << 20;
                std::atomic<size_t> total{0};
                const auto W = sizeof(mask);
                parallel_for(
                    (int64_t(n) + kChunk - 1) / kChunk,
                    [&](int64_t b, int64_t e) {
                        const size_t lo = size_t(b * kChunk), hi = std::min(n, size_t(e * kChunk));
                        total += count_non_finite(t.data + lo * W, hi - lo, mask);
                    },
                    int64_t(n) > kChunk);
                bad = total;
                if (bad) first = first_non_finite(t.data, n, mask);
            };
            switch (t.dtype) {
                case DType::F32: scan(uint32_t(0x7f800000u)); break;
                case DType::BF16: scan(uint16_t(0x7f80u)); break;
                case DType::F16: scan(uint16_t(0x7c00u)); break;
            }
            if (bad) warn("{}: tensor '{}' holds {} NaN/Inf value(s) (first at element {})", f->path(), t.name, bad, first);
        }
}

// ---------------------------------------------------------------- writing

namespace {


}  // namespace

void write_safetensors(const std::string& path, const std::vector<TensorSpec>& specs, const TensorProducer& produce,
                       const std::map<std::string, std::string>& metadata) {
    // nlohmann::json sorts keys; safetensors readers do not care about header
    // order, and offsets follow the order of `specs`.
    json header = json::object();
    if (!metadata.empty()) header["__metadata__"] = metadata;
    size_t off = 0;
    for (const TensorSpec& s : specs) {
        if (header.contains(s.name)) fail("{}: tensor '{}' declared twice", path, s.name);
        header[s.name] = {{"dtype", dtype_name(s.dtype)}, {"shape", s.shape}, {"data_offsets", {off, off + s.nbytes()}}};
        off += s.nbytes();
    }
    std::string h = header.dump();
    // The data section starts on a 64-byte boundary (header padded with
    // spaces, as the format allows), so every tensor whose offset is a multiple
    // of 64 (all of them while sizes are) starts on a cache line: the amx path
    // loads 64-byte weight rows, and one that straddles two lines cost its
    // products 25-30% (bench_gemm-style run, [512 x 2048] x [5632 x 2048]).
    while ((h.size() + 8) % 64 != 0) h.push_back(' ');
    FileSink sink(path);
    uint64_t hlen = h.size();
    sink.write(&hlen, 8);
    sink.write(h.data(), h.size());
    for (size_t i = 0; i < specs.size(); ++i) {
        size_t before = sink.written();
        produce(i, sink);
        size_t got = sink.written() - before;
        if (got != specs[i].nbytes())
            fail("{}: tensor '{}' produced {} bytes, expected {}", path, specs[i].name, got, specs[i].nbytes());
    }
    sink.close();
}

std::vector<std::string> write_checkpoint_tensors(const std::string& dir, const std::vector<TensorSpec>& specs,
                                                  const TensorProducer& produce, size_t max_shard_bytes) {
    size_t total = 0;
    for (const TensorSpec& s : specs) total += s.nbytes();
    if (total <= max_shard_bytes) {
        write_safetensors(dir + "/model.safetensors", specs, produce);
        return {"model.safetensors"};
    }
    // Greedy packing in order; a tensor larger than the limit gets a shard of its own.
    std::vector<std::pair<size_t, size_t>> ranges;  // [begin, end) into specs
    size_t begin = 0, bytes = 0;
    for (size_t i = 0; i < specs.size(); ++i) {
        if (i > begin && bytes + specs[i].nbytes() > max_shard_bytes) {
            ranges.push_back({begin, i});
            begin = i;
            bytes = 0;
        }
        bytes += specs[i].nbytes();
    }
    ranges.push_back({begin, specs.size()});
    std::vector<std::string> files;
    json weight_map = json::object();
    for (size_t r = 0; r < ranges.size(); ++r) {
        std::string name = fmt::format("model-{:05d}-of-{:05d}.safetensors", r + 1, ranges.size());
        std::vector<TensorSpec> sub(specs.begin() + long(ranges[r].first), specs.begin() + long(ranges[r].second));
        size_t base = ranges[r].first;
        write_safetensors(dir + "/" + name, sub, [&](size_t i, ByteSink& s) { produce(base + i, s); });
        for (const TensorSpec& s : sub) weight_map[s.name] = name;
        files.push_back(name);
    }
    json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    write_file_atomic(dir + "/model.safetensors.index.json", index.dump(2) + "\n");
    files.push_back("model.safetensors.index.json");
    return files;
}

}  // namespace moefy
