#pragma once
// Parallel loops of the text clustering only pay off past this much work;
// below it (small corpora, tests) the fork/join costs more than the loop,
// badly so on a loaded machine.
#include <cstddef>

namespace moefy {

inline constexpr size_t kParallelWork = size_t(1) << 14;

}  // namespace moefy
