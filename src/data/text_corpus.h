#pragma once
// The documents to cluster (data/text_cluster.h), with the line that stands
// for each in a cluster file.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace moefy {

// ---- input -------------------------------------------------------------------

// Documents plus, for each, the line that represents it in a cluster file:
// for .jsonl/.json input the input line verbatim (without its '\n'), for any
// other file the whole file as {"text": ...}. `paths` may name files and
// directories (a directory contributes its *.jsonl, *.json and *.txt files in
// sorted order). Blank .jsonl lines are not documents (as read_documents).
struct TextCorpus {
    std::vector<std::string> texts;
    std::vector<std::string> records;
    std::vector<std::string> files;  // the files read, in order
};
TextCorpus read_text_corpus(const std::vector<std::string>& paths, const std::string& text_field = "");

}  // namespace moefy
