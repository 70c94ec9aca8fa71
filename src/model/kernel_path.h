#pragma once
// Which matmul kernels the engine uses in this build, in words, for
// `moefy --version` and benchmark headers.

namespace moefy {

const char* kernel_path_name();

}  // namespace moefy
