#pragma once
// The subset of ZIP that torch.save writes (PyTorch's miniz-based stream
// writer): stored (uncompressed) entries, a data descriptor after each entry,
// 64-byte aligned data, a ZIP64 end-of-central-directory record. Read-only and
// validated field by field: every offset and size inside the archive, names
// relative and unique, local headers matching the central directory, CRC-32 of
// every entry checked. Compressed, encrypted or multi-disk archives are refused
// by name (torch.save never writes them).
//
// Layout read: [local header, name, extra, data, (descriptor)]* central directory
// [ZIP64 EOCD record, ZIP64 EOCD locator] EOCD (+ comment).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace moefy {

class MappedFile;

struct ZipEntry {
    std::string name;
    uint64_t data_offset = 0;  // of the entry's bytes from the start of the archive
    uint64_t size = 0;
    uint32_t crc32 = 0;
};

class ZipArchive {
public:
    // Maps `path` and validates it; throws naming the file and the bad field.
    static ZipArchive open(const std::string& path);
    // Validates `size` bytes at `data` (not copied: they must outlive the archive);
    // `name` is used in messages. The fuzzing entry point.
    static ZipArchive from_memory(const uint8_t* data, size_t size, const std::string& name);

    ZipArchive(ZipArchive&&) noexcept;
    ZipArchive& operator=(ZipArchive&&) noexcept;
    ~ZipArchive();

    const std::string& name() const { return name_; }
    const std::vector<ZipEntry>& entries() const { return entries_; }  // central directory order
    const ZipEntry* find(const std::string& entry_name) const;
    std::span<const uint8_t> bytes(const ZipEntry& e) const { return {base_ + e.data_offset, size_t(e.size)}; }

private:
    ZipArchive() = default;
    void parse();

    std::unique_ptr<MappedFile> map_;
    const uint8_t* base_ = nullptr;
    size_t size_ = 0;
    std::string name_;
    std::vector<ZipEntry> entries_;
};

// CRC-32 (IEEE 802.3, as ZIP uses) of n bytes.
uint32_t crc32_ieee(const uint8_t* p, size_t n);

}  // namespace moefy
