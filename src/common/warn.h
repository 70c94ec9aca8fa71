#pragma once
// Warnings: things moefy can go on with but the user should hear about (a
// weight that is NaN, a tensor no architecture uses). The library never prints;
// it hands each warning to the handler the program installed (the CLI prints
// "moefy: warning: ..." on stderr; tests collect them). No handler: dropped.
#include <functional>
#include <string>

#include <fmt/format.h>

namespace moefy {

using WarningHandler = std::function<void(const std::string&)>;

inline WarningHandler& warning_handler() {
    static WarningHandler h;
    return h;
}
// Installs `h` and returns the previous handler.
inline WarningHandler set_warning_handler(WarningHandler h) {
    WarningHandler old = std::move(warning_handler());
    warning_handler() = std::move(h);
    return old;
}

template <typename... Args>
inline void warn(fmt::format_string<Args...> f, Args&&... args) {
    if (warning_handler()) warning_handler()(fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace moefy
