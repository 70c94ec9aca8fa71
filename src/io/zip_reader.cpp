#include "io/zip_reader.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <unordered_set>

#include "common/error.h"
#include "io/mapped_file.h"

namespace moefy {

namespace {

constexpr uint32_t kLocalSig = 0x04034b50, kCentralSig = 0x02014b50, kEndSig = 0x06054b50;
constexpr uint32_t kZip64EndSig = 0x06064b50, kZip64LocatorSig = 0x07064b50;
constexpr size_t kLocalLen = 30, kCentralLen = 46, kEndLen = 22, kZip64EndLen = 56, kZip64LocatorLen = 20;

uint16_t u16(const uint8_t* p) { return uint16_t(p[0] | p[1] << 8); }
uint32_t u32(const uint8_t* p) { return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24; }
uint64_t u64(const uint8_t* p) { return uint64_t(u32(p)) | uint64_t(u32(p + 4)) << 32; }

// A name is one the archive may hold: relative, no "..", printable, no backslashes.
bool good_entry_name(const std::string& n) {
    if (n.empty() || n.size() > 4096 || n[0] == '/') return false;
    for (unsigned char c : n)
        if (c < 0x20 || c == 0x7f || c == '\\') return false;
    size_t at = 0;
    while (at <= n.size()) {
        size_t end = n.find('/', at);
        if (end == std::string::npos) end = n.size();
        const std::string part = n.substr(at, end - at);
        if (part == ".." || part == ".") return false;
        at = end + 1;
    }
    return true;
}

}  // namespace

uint32_t crc32_ieee(const uint8_t* p, size_t n) {
    static const std::array<uint32_t, 256> table = [] {
        std::array<uint32_t, 256> t{};
        for (uint32_t i = 0; i < 256; ++i) {
            uint32_t c = i;
            for (int k = 0; k < 8; ++k) c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
            t[i] = c;
        }
        return t;
    }();
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; ++i) c = table[(c ^ p[i]) & 0xff] ^ (c >> 8);
    return c ^ 0xffffffffu;
}

ZipArchive::ZipArchive(ZipArchive&&) noexcept = default;
ZipArchive& ZipArchive::operator=(ZipArchive&&) noexcept = default;
ZipArchive::~ZipArchive() = default;

ZipArchive ZipArchive::open(const std::string& path) {
    ZipArchive z;
    z.map_ = std::make_unique<MappedFile>(path);
    z.base_ = z.map_->data();
    z.size_ = z.map_->size();
    z.name_ = path;
    z.parse();
    return z;
}

ZipArchive ZipArchive::from_memory(const uint8_t* data, size_t size, const std::string& name) {
    ZipArchive z;
    z.base_ = data;
    z.size_ = size;
    z.name_ = name;
    z.parse();
    return z;
}

const ZipEntry* ZipArchive::find(const std::string& entry_name) const {
    for (const ZipEntry& e : entries_)
        if (e.name == entry_name) return &e;
    return nullptr;
}

void ZipArchive::parse() {
    const std::string& f = name_;
    const uint8_t* b = base_;
    const uint64_t size = size_;
    if (size < kEndLen) fail("{}: not a ZIP archive ({} bytes, too short for an end-of-central-directory record)", f, size);

    // End of central directory: the last signature whose comment runs exactly to the end of the file.
    uint64_t eocd = UINT64_MAX;
    const uint64_t lowest = size > kEndLen + 0xffff ? size - kEndLen - 0xffff : 0;
    for (uint64_t at = size - kEndLen + 1; at-- > lowest;)
        if (u32(b + at) == kEndSig && at + kEndLen + u16(b + at + 20) == size) {
            eocd = at;
            break;
        }
    if (eocd == UINT64_MAX)
        fail("{}: not a ZIP archive (no end-of-central-directory record; torch.save files are ZIP archives, "
             "truncated?)", f);
    const uint8_t* e = b + eocd;
    uint64_t disk = u16(e + 4), cd_disk = u16(e + 6), entries_here = u16(e + 8), entries = u16(e + 10);
    uint64_t cd_size = u32(e + 12), cd_offset = u32(e + 16);
    uint64_t cd_limit = eocd;  // the central directory ends before this

    // ZIP64: a locator right before the EOCD points at the ZIP64 EOCD record, whose fields win.
    if (eocd >= kZip64LocatorLen && u32(b + eocd - kZip64LocatorLen) == kZip64LocatorSig) {
        const uint8_t* loc = b + eocd - kZip64LocatorLen;
        const uint64_t rec = u64(loc + 8);
        if (u32(loc + 4) != 0 || u32(loc + 16) != 1) fail("{}: ZIP64 locator names a multi-disk archive (not supported)", f);
        if (rec > eocd - kZip64LocatorLen || eocd - kZip64LocatorLen - rec < kZip64EndLen)
            fail("{}: ZIP64 locator points at offset {}, outside the archive before the locator", f, rec);
        const uint8_t* z = b + rec;
        if (u32(z) != kZip64EndSig) fail("{}: no ZIP64 end-of-central-directory record at offset {} (bad signature)", f, rec);
        const uint64_t rec_size = u64(z + 4);
        if (rec_size < kZip64EndLen - 12 || rec_size > eocd - kZip64LocatorLen - rec - 12)
            fail("{}: ZIP64 end-of-central-directory record size {} runs past the locator", f, rec_size);
        auto take = [&](uint64_t& field, uint64_t wide, uint64_t saturated, const char* what) {
            if (field != saturated && field != wide)
                fail("{}: ZIP64 record says {} = {}, the end-of-central-directory record says {}", f, what, wide, field);
            field = wide;
        };
        take(disk, u32(z + 16), 0xffff, "disk number");
        take(cd_disk, u32(z + 20), 0xffff, "central directory disk");
        take(entries_here, u64(z + 24), 0xffff, "entries on this disk");
        take(entries, u64(z + 32), 0xffff, "entry count");
        take(cd_size, u64(z + 40), 0xffffffff, "central directory size");
        take(cd_offset, u64(z + 48), 0xffffffff, "central directory offset");
        cd_limit = rec;
    }
    if (disk != 0 || cd_disk != 0 || entries_here != entries) fail("{}: multi-disk ZIP archives are not supported", f);
    if (cd_offset > cd_limit || cd_size > cd_limit - cd_offset)
        fail("{}: central directory [{}, +{}) runs past its end record at {} (truncated?)", f, cd_offset, cd_size, cd_limit);
    if (entries > cd_size / kCentralLen)
        fail("{}: {} entries cannot fit in a central directory of {} bytes", f, entries, cd_size);

    std::unordered_set<std::string> names;
    struct Span {
        uint64_t header, end;
        size_t entry;
    };
    std::vector<Span> spans;
    uint64_t at = cd_offset;
    const uint64_t cd_end = cd_offset + cd_size;
    for (uint64_t i = 0; i < entries; ++i) {
        if (cd_end - at < kCentralLen) fail("{}: central directory entry {} runs past the directory", f, i);
        const uint8_t* c = b + at;
        if (u32(c) != kCentralSig) fail("{}: central directory entry {} at offset {} has a bad signature", f, i, at);
        const uint16_t flags = u16(c + 8), method = u16(c + 10);
        const uint32_t crc = u32(c + 16);
        uint64_t csize = u32(c + 20), usize = u32(c + 24), header = u32(c + 42);
        const uint64_t nlen = u16(c + 28), xlen = u16(c + 30), clen = u16(c + 32);
        uint64_t edisk = u16(c + 34);
        if (cd_end - at - kCentralLen < nlen + xlen + clen)
            fail("{}: central directory entry {}'s name, extra and comment run past the directory", f, i);
        ZipEntry ent;
        ent.name.assign(reinterpret_cast<const char*>(c + kCentralLen), nlen);
        const std::string where = fmt::format("{}: entry '{}'", f, ent.name);
        if (!good_entry_name(ent.name)) fail("{}: entry {} has a bad name (empty, absolute, '..' or control characters)", f, i);
        if (!names.insert(ent.name).second) fail("{}: appears twice", where);
        if (flags & 0x41) fail("{}: is encrypted (not written by torch.save)", where);
        if (method != 0) fail("{}: is compressed (method {}); torch.save stores entries uncompressed", where, method);
        // ZIP64 extended information: the saturated 32-bit fields, in this order.
        const uint8_t* x = c + kCentralLen + nlen;
        for (uint64_t xa = 0; xa < xlen;) {
            if (xlen - xa < 4) fail("{}: truncated extra field", where);
            const uint16_t id = u16(x + xa), len = u16(x + xa + 2);
            if (xlen - xa - 4 < len) fail("{}: extra field 0x{:04x} runs past the extra data", where, id);
            if (id == 0x0001) {
                const uint8_t* z = x + xa + 4;
                uint64_t zl = len;
                auto wide = [&](uint64_t& field, uint64_t saturated, const char* what) {
                    if (field != saturated) return;
                    if (zl < 8) fail("{}: ZIP64 extra field lacks the {}", where, what);
                    field = u64(z);
                    z += 8, zl -= 8;
                };
                wide(usize, 0xffffffff, "size");
                wide(csize, 0xffffffff, "compressed size");
                wide(header, 0xffffffff, "local header offset");
                if (edisk == 0xffff) {
                    if (zl < 4) fail("{}: ZIP64 extra field lacks the disk number", where);
                    edisk = u32(z);
                }
            }
            xa += 4 + uint64_t(len);
        }
        if (edisk != 0) fail("{}: starts on disk {} (multi-disk archives are not supported)", where, edisk);
        if (csize != usize) fail("{}: stored size {} differs from its size {}", where, csize, usize);
        // Local header: same name and method; the data follows its name and extra field.
        if (header > cd_offset || cd_offset - header < kLocalLen)
            fail("{}: local header offset {} is not before the central directory at {}", where, header, cd_offset);
        const uint8_t* l = b + header;
        if (u32(l) != kLocalSig) fail("{}: no local header at offset {} (bad signature)", where, header);
        if (u16(l + 8) != method) fail("{}: local header says method {}, the central directory {}", where, u16(l + 8), method);
        const uint64_t lnlen = u16(l + 26), lxlen = u16(l + 28);
        if (cd_offset - header - kLocalLen < lnlen + lxlen) fail("{}: local header name runs into the central directory", where);
        if (lnlen != nlen || std::memcmp(l + kLocalLen, ent.name.data(), nlen) != 0)
            fail("{}: local header at offset {} names another entry", where, header);
        ent.data_offset = header + kLocalLen + lnlen + lxlen;
        ent.size = usize;
        ent.crc32 = crc;
        if (ent.data_offset > cd_offset || usize > cd_offset - ent.data_offset)
            fail("{}: data [{}, +{}) runs past the end of the entries at {} (truncated?)", where, ent.data_offset, usize, cd_offset);
        const uint32_t actual = crc32_ieee(b + ent.data_offset, size_t(usize));
        if (actual != crc) fail("{}: CRC-32 {:08x} does not match the recorded {:08x} (corrupt)", where, actual, crc);
        spans.push_back({header, ent.data_offset + usize, entries_.size()});
        entries_.push_back(std::move(ent));
        at += kCentralLen + nlen + xlen + clen;
    }
    std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& c) { return a.header < c.header; });
    for (size_t i = 1; i < spans.size(); ++i)
        if (spans[i - 1].end > spans[i].header)
            fail("{}: entries '{}' and '{}' overlap", f, entries_[spans[i - 1].entry].name, entries_[spans[i].entry].name);
}

}  // namespace moefy
