#include "model/kernel_path.h"

namespace moefy {

// model/matmul.cpp: products of several tokens convert blocks of BF16/F16
// weight rows to f32 and call OpenBLAS sgemm; a few tokens (generation) use
// direct dot products on the 16-bit rows.
const char* kernel_path_name() { return "f32 sgemm (OpenBLAS) + bf16 dot"; }

}  // namespace moefy
