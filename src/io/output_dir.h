#pragma once
// Writes a directory atomically: everything goes into a temporary sibling
// ("OUT.tmp-<pid>") that is renamed to OUT only by commit(). If the writer
// throws, the destructor removes the temporary, so an interrupted run never
// leaves something that looks like a finished model.
#include <string>

namespace moefy {

class OutputDir {
public:
    // Refuses an existing `final_path` unless `force` (then it is replaced at commit).
    OutputDir(const std::string& final_path, bool force);
    ~OutputDir();
    OutputDir(const OutputDir&) = delete;
    OutputDir& operator=(const OutputDir&) = delete;

    const std::string& path() const { return tmp_; }  // write here
    std::string file(const std::string& name) const { return tmp_ + "/" + name; }
    void commit();

private:
    std::string final_;
    std::string tmp_;
    bool force_;
    bool committed_ = false;
};

// Writes `text` to `path` atomically (temp file in the same directory + rename).
void write_file_atomic(const std::string& path, const std::string& text);
std::string read_text_file(const std::string& path);  // throws naming the path

}  // namespace moefy
