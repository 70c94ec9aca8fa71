// Data files: the same bytes read as JSONL (one object per line, text field,
// UTF-8 check) and as a plain text document.
#include "data/documents.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string jsonl = fuzz::write_input(data, size, "docs.jsonl");
    FUZZ_EXPECT_ERRORS((void)moefy::read_documents(jsonl));
    FUZZ_EXPECT_ERRORS((void)moefy::read_documents(jsonl, "content"));
    const std::string txt = fuzz::write_input(data, size, "docs.txt");
    FUZZ_EXPECT_ERRORS((void)moefy::read_documents(txt));
    return 0;
}
