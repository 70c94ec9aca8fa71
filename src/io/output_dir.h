#pragma once
// Outputs are written atomically, under one path policy.
//
// Policy (check_output_path): an output path may be absent, or (with --force
// for directories) an existing output of the same kind. moefy refuses, naming
// the path: a symbolic link (it would write through or replace the link), a
// device node, FIFO or socket (as root, replacing /dev/null), a directory where
// a file goes and a file where a directory goes, and a missing parent.
//
// Writing: everything goes into a temporary sibling "OUT.tmp-<pid>" renamed to
// OUT only by commit() (an atomic exchange when OUT exists, so OUT always holds
// either the complete old or the complete new content). If the writer throws,
// the destructor removes the temporary. A run killed with SIGKILL leaves its
// sibling behind; the next run writing OUT removes every "OUT.tmp-<pid>" /
// "OUT.old-<pid>" whose process is gone, so no stale sibling accumulates or is
// mistaken for an output (readers only ever open OUT itself).
#include <string>

namespace moefy {

enum class OutputKind { File, Directory };

// Throws unless `path` is acceptable as an output of this kind (see above).
// `force`: an existing directory output may be replaced; files are always replaced.
void check_output_path(const std::string& path, OutputKind kind, bool force);
// Removes temporary siblings of `path` left by runs that no longer exist.
void remove_stale_siblings(const std::string& path);

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
// Renames the finished temporary file `tmp` onto `path` (checked by the output
// policy first); removes `tmp` and throws on failure.
void commit_file(const std::string& tmp, const std::string& path);
// The temporary sibling this process writes `path` through.
std::string temp_sibling(const std::string& path);
// Reads a whole regular file; throws naming the path (missing, a directory, unreadable).
std::string read_text_file(const std::string& path);

}  // namespace moefy
