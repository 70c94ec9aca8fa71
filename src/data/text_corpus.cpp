#include "data/text_corpus.h"

#include <algorithm>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "data/documents.h"
#include "io/output_dir.h"

namespace moefy {

namespace fs = std::filesystem;

// ---- input -------------------------------------------------------------------

static bool has_ext(const std::string& p, const char* ext) {
    const std::string e = fs::path(p).extension().string();
    return e == ext;
}

static bool is_jsonl(const std::string& p) { return has_ext(p, ".jsonl") || has_ext(p, ".json"); }

static std::vector<std::string> expand_data_paths(const std::vector<std::string>& paths) {
    if (paths.empty()) fail("no data files given");
    std::vector<std::string> files;
    for (const std::string& p : paths) {
        std::error_code ec;
        if (!fs::is_directory(p, ec)) {
            files.push_back(p);
            continue;
        }
        std::vector<std::string> in_dir;
        for (const auto& e : fs::directory_iterator(p, ec)) {
            const std::string f = e.path().string();
            if (e.is_regular_file() && (is_jsonl(f) || has_ext(f, ".txt"))) in_dir.push_back(f);
        }
        if (ec) fail("{}: cannot list directory: {}", p, ec.message());
        if (in_dir.empty()) fail("{}: directory holds no .jsonl, .json or .txt files", p);
        std::sort(in_dir.begin(), in_dir.end());
        files.insert(files.end(), in_dir.begin(), in_dir.end());
    }
    return files;
}

// The non-blank lines of a .jsonl file, byte for byte (read_documents skips
// the same blank lines, so line i here is document i there).
static std::vector<std::string> jsonl_records(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) fail("{}: cannot open data file", path);
    std::vector<std::string> out;
    std::string line;
    while (std::getline(f, line))
        if (line.find_first_not_of(" \t\r") != std::string::npos) out.push_back(line);
    if (f.bad()) fail("{}: read error", path);
    return out;
}

TextCorpus read_text_corpus(const std::vector<std::string>& paths, const std::string& text_field) {
    TextCorpus c;
    c.files = expand_data_paths(paths);
    for (const std::string& path : c.files) {
        std::vector<std::string> texts = read_documents(path, text_field);
        if (is_jsonl(path)) {
            std::vector<std::string> rec = jsonl_records(path);
            if (rec.size() != texts.size())
                fail("{}: {} documents but {} non-blank lines (file changed while reading?)", path, texts.size(), rec.size());
            for (auto& r : rec) c.records.push_back(std::move(r));
        } else {
            for (const auto& t : texts) c.records.push_back(nlohmann::json{{"text", t}}.dump());
        }
        for (auto& t : texts) c.texts.push_back(std::move(t));
    }
    return c;
}

}  // namespace moefy
