#pragma once
// Files written by torch.save (torch >= 1.6): a ZIP archive (io/zip_reader.h)
// holding <prefix>/data.pkl, a pickle (io/pickle.h) whose tensors refer to raw
// little-endian storages <prefix>/data/<key>, plus <prefix>/version and, from
// torch 2.1, <prefix>/byteorder. The prefix is the file's stem in torch 1.x and
// "archive" in torch 2.x; any single top-level folder is accepted.
// Nothing is executed: the restricted unpickler rebuilds lists, numbers,
// numpy arrays/scalars and tensors only.
#include <cstddef>
#include <cstdint>
#include <string>

#include "io/pickle.h"
#include "io/zip_reader.h"

namespace moefy {

struct TorchSaveFile {
    ZipArchive zip;
    std::string prefix;  // "archive", or the file's stem
    PickleTree tree;     // tensors copied out of the storages (Array values)
};

// Reads and validates a torch.save file; throws naming the file, the entry and
// the problem (legacy non-ZIP torch.save files are refused by name).
TorchSaveFile read_torch_save(const std::string& path);
// The same from memory (not copied; must outlive the result). The fuzzing entry point.
TorchSaveFile read_torch_save_memory(const uint8_t* data, size_t size, const std::string& name);

}  // namespace moefy
