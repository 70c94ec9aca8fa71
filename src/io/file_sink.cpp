#include "io/file_sink.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "common/error.h"

namespace moefy {

FileSink::FileSink(const std::string& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) fail("{}: cannot create: {}", path, std::strerror(errno));
    buf_.reserve(kBuf);
}

FileSink::~FileSink() {
    if (fd_ >= 0) ::close(fd_);
}

// Every write() to the file starts at a multiple of kBuf: the buffer is topped
// up to the next boundary of the file; whole pieces go straight from `data`.
void FileSink::write(const void* data, size_t n) {
    written_ += n;
    const uint8_t* p = static_cast<const uint8_t*>(data);
    const size_t to_boundary = kBuf - (file_off_ + buf_.size()) % kBuf;
    if (!buf_.empty() || to_boundary != kBuf || n < kBuf) {
        const size_t take = std::min(n, to_boundary);
        buf_.insert(buf_.end(), p, p + take);
        p += take;
        n -= take;
        if (take < to_boundary) return;
        flush();
    }
    const size_t whole = n / kBuf * kBuf;
    raw_write(p, whole);
    buf_.insert(buf_.end(), p + whole, p + n);
}

bool FileSink::copy_range(int src_fd, uint64_t offset, size_t n) {
    if (!kernel_copy_ok_) return false;
    flush();
    auto off = loff_t(offset);
    size_t left = n;
    while (left > 0) {
        const ssize_t c = ::copy_file_range(src_fd, &off, fd_, nullptr, left, 0);
        if (c < 0 && errno == EINTR) continue;
        if (c <= 0) {
            // Not supported between these files: fall back, unless part is written.
            if (left == n && (c == 0 || errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP)) {
                kernel_copy_ok_ = false;
                return false;
            }
            fail("{}: copy_file_range failed: {}", path_, c == 0 ? "source ended early" : std::strerror(errno));
        }
        left -= size_t(c);
    }
    file_off_ += n;
    written_ += n;
    return true;
}

void FileSink::flush() {
    if (!buf_.empty()) raw_write(buf_.data(), buf_.size());
    buf_.clear();
}

void FileSink::close() {
    flush();
    if (::close(fd_) != 0) fail("{}: close failed: {}", path_, std::strerror(errno));
    fd_ = -1;
}

void FileSink::raw_write(const uint8_t* p, size_t n) {
    while (n > 0) {
        const ssize_t w = ::write(fd_, p, std::min(n, kBuf));
        if (w < 0) {
            if (errno == EINTR) continue;
            fail("{}: write failed: {}", path_, std::strerror(errno));
        }
        p += w;
        n -= size_t(w);
        file_off_ += size_t(w);
    }
}

}  // namespace moefy
