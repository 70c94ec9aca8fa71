#pragma once
// Read-only memory mapping of a whole file. Move-only; unmaps on destruction.
#include <cstddef>
#include <cstdint>
#include <string>

namespace moefy {

class MappedFile {
public:
    MappedFile() = default;
    explicit MappedFile(const std::string& path);  // throws naming the path
    ~MappedFile();
    MappedFile(MappedFile&& o) noexcept;
    MappedFile& operator=(MappedFile&& o) noexcept;
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;

    const uint8_t* data() const { return data_; }
    size_t size() const { return size_; }
    const std::string& path() const { return path_; }
    // The open descriptor, for copies the kernel can do itself (copy_file_range).
    int fd() const { return fd_; }
    // Drops the pages of [ptr, ptr+n) from this process's resident set (the
    // page cache keeps them), so streaming over a large model keeps RSS flat.
    void release(const void* ptr, size_t n) const;

private:
    std::string path_;
    const uint8_t* data_ = nullptr;
    size_t size_ = 0;
    int fd_ = -1;
};

}  // namespace moefy
