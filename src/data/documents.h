#pragma once
// Text data: documents from .jsonl (one JSON object per line, text in a
// "text" or "content" field, or the field the caller names) or from a plain
// text file (the whole file is one document), and token windows for
// evaluation and activation gathering.
#include <cstdint>
#include <string>
#include <vector>

namespace moefy {

class Tokenizer;

// Reads every document. Errors name the file and line: unreadable file, a
// line that is not JSON or lacks the field, invalid UTF-8, no documents at all.
std::vector<std::string> read_documents(const std::string& path, const std::string& text_field = "");

// A window of consecutive tokens of one document; positions 1..size-1 are predicted.
using TokenWindow = std::vector<int32_t>;

struct WindowOptions {
    int ctx = 512;               // tokens per window
    size_t max_tokens = 0;       // stop after this many predicted tokens (0: all)
    bool add_bos = true;         // each document starts with BOS
};

// Tokenizes each document (BOS first) and cuts it into windows of at most
// `ctx` tokens that overlap by one token, so that every token after BOS is
// predicted exactly once and no window crosses a document boundary. A window's
// first token is its context start; windows shorter than 2 tokens are dropped.
std::vector<TokenWindow> make_windows(const std::vector<std::string>& docs, const Tokenizer& tok, const WindowOptions& opt);

// read_documents + make_windows (BOS first): the windows of a text file.
std::vector<TokenWindow> read_windows(const std::string& path, const std::string& text_field, const Tokenizer& tok, int ctx,
                                      size_t max_tokens);

// Number of predicted tokens in a set of windows: sum of (size - 1).
size_t predicted_tokens(const std::vector<TokenWindow>& windows);

}  // namespace moefy
