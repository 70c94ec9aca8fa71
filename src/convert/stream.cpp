// Byte movers of the converter. Sources are read straight from the mapping;
// gathered and cast output is built in small chunks that a writer thread hands
// to the sink (ChunkPipe) while the next chunk is gathered. Not the thread pool: the work
// is a two-stage pipeline (gather | kernel copy), not a parallel loop, and a
// parallel region per 256 KiB chunk would cost more than it saves.
#include <algorithm>
#include <cstring>

#include "common/error.h"
#include "convert/chunk_pipe.h"
#include "convert/layout.h"

namespace moefy::convert {

namespace {

// A same-dtype copy goes to the sink straight from the mapping in slices this
// big; each slice is dropped from the resident set once written.
constexpr size_t kCopySlice = size_t(64) << 20;

template <typename T>
void gather(const T* row, const int32_t* ids, size_t n, T* out) {
    for (size_t j = 0; j < n; ++j) out[j] = row[ids[j]];
}

// out[j] = row[ids[j]] for elements of `es` bytes.
void gather_elems(const uint8_t* row, const int32_t* ids, size_t n, size_t es, uint8_t* out) {
    if (es == 2)
        gather(reinterpret_cast<const uint16_t*>(row), ids, n, reinterpret_cast<uint16_t*>(out));
    else
        gather(reinterpret_cast<const uint32_t*>(row), ids, n, reinterpret_cast<uint32_t*>(out));
}

void check_ids(const TensorView& src, const std::vector<int32_t>& ids, int64_t limit, const char* what) {
    for (int32_t n : ids)
        if (n < 0 || n >= limit) fail("{}: neuron id {} is outside the {} {} of {}", src.name, n, limit, what, src.shape_str());
}

}  // namespace

TensorStreamer::TensorStreamer(size_t chunk_bytes) : chunk_(chunk_bytes), pipe_(std::make_unique<ChunkPipe>(chunk_bytes)) {}

TensorStreamer::~TensorStreamer() = default;

void TensorStreamer::gather_row(const uint8_t* row, DType in, const std::vector<int32_t>& ids, float scale, DType out,
                                uint8_t* dst) {
    const size_t S = ids.size(), is = dtype_size(in);
    if (in == out && scale == 1.0f) {
        gather_elems(row, ids.data(), S, is, dst);
        return;
    }
    // Gather in the stored dtype, then scale in f32 and cast once.
    if (raw_.size() < S * is) raw_.resize(S * is);
    if (f32_.size() < S) f32_.resize(S);
    gather_elems(row, ids.data(), S, is, raw_.data());
    to_f32(in, raw_.data(), f32_.data(), S);
    if (scale != 1.0f)
        for (size_t j = 0; j < S; ++j) f32_[j] *= scale;
    from_f32(out, f32_.data(), dst, S);
}

void TensorStreamer::copy(const TensorView& src, DType out, ByteSink& sink) {
    // Same dtype: the kernel copies file to file (as cp does), no page faults on
    // the mapping and no copy through this process; else from the mapping.
    if (out == src.dtype && src.file && src.file->fd() >= 0 &&
        sink.copy_range(src.file->fd(), uint64_t(src.data - src.file->data()), src.nbytes))
        return;
    if (out == src.dtype) {
        for (size_t off = 0; off < src.nbytes; off += kCopySlice) {
            const size_t n = std::min(kCopySlice, src.nbytes - off);
            sink.write(src.data + off, n);
            src.file->release(src.data + off, n);
        }
        return;
    }
    const size_t is = dtype_size(src.dtype), os = dtype_size(out);
    const size_t total = size_t(src.numel());
    const size_t per_chunk = std::max<size_t>(1, chunk_ / std::max(is, os));
    if (f32_.size() < per_chunk) f32_.resize(per_chunk);
    ChunkPipe::Tensor tensor(*pipe_, sink);
    size_t released = 0;
    for (size_t i0 = 0; i0 < total; i0 += per_chunk) {
        const size_t n = std::min(per_chunk, total - i0);
        uint8_t* d = pipe_->acquire(n * os);
        to_f32(src.dtype, src.data + i0 * is, f32_.data(), n);
        from_f32(out, f32_.data(), d, n);
        pipe_->submit(n * os);
        // Source pages can go once read (the pipe holds converted copies).
        if ((i0 + n) * is - released >= kCopySlice || i0 + n == total) {
            src.file->release(src.data + released, (i0 + n) * is - released);
            released = (i0 + n) * is;
        }
    }
    tensor.end();
}

void TensorStreamer::rows(const TensorView& src, const std::vector<int32_t>& ids, DType out, ByteSink& sink) {
    check_ids(src, ids, src.rows(), "rows");
    const size_t C = size_t(src.cols());
    const size_t is = dtype_size(src.dtype), os = dtype_size(out);
    const size_t row_in = C * is, row_out = C * os;
    const size_t per_chunk = std::max<size_t>(1, chunk_ / std::max<size_t>(1, row_out));
    if (out != src.dtype && f32_.size() < C) f32_.resize(C);
    ChunkPipe::Tensor tensor(*pipe_, sink);
    for (size_t r0 = 0; r0 < ids.size(); r0 += per_chunk) {
        const size_t n = std::min(per_chunk, ids.size() - r0);
        uint8_t* chunk = pipe_->acquire(n * row_out);
        for (size_t i = 0; i < n; ++i) {
            const uint8_t* s = src.data + size_t(ids[r0 + i]) * row_in;
            uint8_t* d = chunk + i * row_out;
            if (out == src.dtype) {
                std::memcpy(d, s, row_in);
            } else {
                to_f32(src.dtype, s, f32_.data(), C);
                from_f32(out, f32_.data(), d, C);
            }
        }
        pipe_->submit(n * row_out);
    }
    tensor.end();
}

void TensorStreamer::cols(const TensorView& src, const std::vector<ColsMember>& members, DType out, ByteSink& sink,
                          std::vector<std::vector<uint8_t>>& staged) {
    const size_t I = size_t(src.cols()), H = size_t(src.rows());
    const size_t is = dtype_size(src.dtype), os = dtype_size(out);
    for (const ColsMember& m : members) check_ids(src, *m.ids, src.cols(), "columns");
    staged.resize(members.size());
    for (size_t m = 1; m < members.size(); ++m) staged[m].resize(H * members[m].ids->size() * os);
    const size_t row_out = members[0].ids->size() * os;
    const size_t per_chunk = std::max<size_t>(1, chunk_ / std::max<size_t>(1, row_out));
    ChunkPipe::Tensor tensor(*pipe_, sink);
    for (size_t h0 = 0; h0 < H; h0 += per_chunk) {
        const size_t n = std::min(per_chunk, H - h0);
        uint8_t* chunk = pipe_->acquire(n * row_out);
        for (size_t i = 0; i < n; ++i) {
            const size_t h = h0 + i;
            const uint8_t* s = src.data + h * I * is;  // the row stays in L1 across members
            gather_row(s, src.dtype, *members[0].ids, members[0].scale, out, chunk + i * row_out);
            for (size_t m = 1; m < members.size(); ++m) {
                const size_t w = members[m].ids->size() * os;
                gather_row(s, src.dtype, *members[m].ids, members[m].scale, out, staged[m].data() + h * w);
            }
        }
        pipe_->submit(n * row_out);
    }
    tensor.end();
}

void TensorStreamer::matrix(const float* v, size_t n, DType out, ByteSink& sink) {
    const size_t os = dtype_size(out);
    const size_t per_chunk = std::max<size_t>(1, chunk_ / os);
    if (buf_.size() < per_chunk * os) buf_.resize(per_chunk * os);
    for (size_t i0 = 0; i0 < n; i0 += per_chunk) {
        const size_t m = std::min(per_chunk, n - i0);
        from_f32(out, v + i0, buf_.data(), m);
        sink.write(buf_.data(), m * os);
    }
}

void TensorStreamer::zeros(size_t nbytes, ByteSink& sink) {
    const size_t n = std::min(nbytes, chunk_);
    if (buf_.size() < n) buf_.resize(n);
    std::memset(buf_.data(), 0, n);
    for (size_t off = 0; off < nbytes; off += n) sink.write(buf_.data(), std::min(n, nbytes - off));
}

}  // namespace moefy::convert
