#include "io/torch_save.h"

#include <cstring>

#include "common/error.h"
#include "io/mapped_file.h"

namespace moefy {

namespace {

// torch.save before 1.6 (and torch.save(..., _use_new_zipfile_serialization=False)) writes a bare
// pickle stream starting with a magic number; name it instead of saying "not a ZIP".
void refuse_legacy(const uint8_t* data, size_t size, const std::string& name) {
    if (size >= 2 && data[0] == 0x80 && data[1] >= 2 && data[1] <= 5)
        fail("{}: a legacy (pre-1.6, non-ZIP) torch.save file; re-save it with a current torch.save", name);
}

TorchSaveFile finish(ZipArchive zip) {
    TorchSaveFile t{std::move(zip), {}, {}};
    const std::string& name = t.zip.name();
    // The pickle: exactly one <prefix>/data.pkl; every entry lives under that prefix.
    const ZipEntry* pkl = nullptr;
    for (const ZipEntry& e : t.zip.entries()) {
        const size_t slash = e.name.find('/');
        if (slash == std::string::npos) fail("{}: entry '{}' is outside the archive's folder (not written by torch.save)", name, e.name);
        if (e.name.substr(slash + 1) == "data.pkl") {
            if (pkl) fail("{}: two pickles ('{}' and '{}'); torch.save writes one", name, pkl->name, e.name);
            pkl = &e;
            t.prefix = e.name.substr(0, slash);
        }
    }
    if (!pkl) fail("{}: no <folder>/data.pkl entry: a ZIP archive but not a torch.save file", name);
    for (const ZipEntry& e : t.zip.entries())
        if (e.name.compare(0, t.prefix.size() + 1, t.prefix + "/") != 0)
            fail("{}: entry '{}' is outside the folder '{}' of data.pkl", name, e.name, t.prefix);
    if (const ZipEntry* v = t.zip.find(t.prefix + "/version")) {
        const auto b = t.zip.bytes(*v);
        std::string s(reinterpret_cast<const char*>(b.data()), b.size());
        while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
        if (s != "1" && s != "2" && s != "3")
            fail("{}: entry '{}' says serialization version '{}' (this moefy reads 1 to 3)", name, v->name, s.substr(0, 16));
    }
    if (const ZipEntry* bo = t.zip.find(t.prefix + "/byteorder")) {
        const auto b = t.zip.bytes(*bo);
        if (std::string(reinterpret_cast<const char*>(b.data()), b.size()) != "little")
            fail("{}: storages are not little-endian (entry '{}')", name, bo->name);
    }
    const ZipArchive& zip_ref = t.zip;
    const std::string prefix = t.prefix;
    StorageLoader load = [&zip_ref, &name, prefix](const std::string& key, ElemType type, int64_t numel) {
        if (key.empty() || key.find('/') != std::string::npos || key.find("..") != std::string::npos)
            fail("{}: storage key '{}' is not a plain name", name, key);
        const ZipEntry* e = zip_ref.find(prefix + "/data/" + key);
        if (!e) fail("{}: storage '{}' has no entry {}/data/{}", name, key, prefix, key);
        const auto b = zip_ref.bytes(*e);
        if (uint64_t(numel) * elem_size(type) != b.size())
            fail("{}: entry '{}' holds {} bytes, the pickle says {} x {} ({} bytes)", name, e->name, b.size(), numel,
                 elem_type_name(type), uint64_t(numel) * elem_size(type));
        return b;
    };
    const auto p = t.zip.bytes(*pkl);
    t.tree = parse_pickle(p.data(), p.size(), name + ":" + pkl->name, load);
    return t;
}

}  // namespace

TorchSaveFile read_torch_save(const std::string& path) {
    ZipArchive z = [&] {
        try {
            return ZipArchive::open(path);
        } catch (const Error&) {
            MappedFile m(path);
            refuse_legacy(m.data(), m.size(), path);
            throw;
        }
    }();
    return finish(std::move(z));
}

TorchSaveFile read_torch_save_memory(const uint8_t* data, size_t size, const std::string& name) {
    try {
        return finish(ZipArchive::from_memory(data, size, name));
    } catch (const Error&) {
        refuse_legacy(data, size, name);
        throw;
    }
}

}  // namespace moefy
