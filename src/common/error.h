#pragma once
// Library errors: one exception type whose message names the file, tensor or
// field at fault. The CLI prints what() and exits non-zero; library code never
// prints or exits.
#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace moefy {

struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

template <typename... Args>
[[noreturn]] inline void fail(fmt::format_string<Args...> f, Args&&... args) {
    throw Error(fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace moefy
