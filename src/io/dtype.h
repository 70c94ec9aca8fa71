#pragma once
// Element types of checkpoint tensors and conversions to and from f32.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace moefy {

enum class DType { F32, F16, BF16 };

size_t dtype_size(DType t);
const char* dtype_name(DType t);  // safetensors spelling: "F32", "F16", "BF16"
// Parses a safetensors dtype name; throws naming `where` for anything else
// (I8, F64, ... are refused by name).
DType parse_dtype(std::string_view name, const std::string& where);

float bf16_to_f32(uint16_t v);
uint16_t f32_to_bf16(float v);  // round to nearest even, NaN kept quiet
float f16_to_f32(uint16_t v);
uint16_t f32_to_f16(float v);   // round to nearest even

// n elements of type `t` at `src` -> f32 at `dst`.
void to_f32(DType t, const void* src, float* dst, size_t n);
// n f32 values -> n elements of type `t` at `dst`.
void from_f32(DType t, const float* src, void* dst, size_t n);

}  // namespace moefy
