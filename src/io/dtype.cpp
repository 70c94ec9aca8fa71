#include "io/dtype.h"

#include <cpuid.h>
#include <cmath>
#include <cstring>

#include <immintrin.h>

#include "common/error.h"

namespace moefy {

size_t dtype_size(DType t) {
    switch (t) {
        case DType::F32: return 4;
        case DType::F16: return 2;
        case DType::BF16: return 2;
    }
    return 0;
}

const char* dtype_name(DType t) {
    switch (t) {
        case DType::F32: return "F32";
        case DType::F16: return "F16";
        case DType::BF16: return "BF16";
    }
    return "?";
}

DType parse_dtype(std::string_view name, const std::string& where) {
    if (name == "F32") return DType::F32;
    if (name == "F16") return DType::F16;
    if (name == "BF16") return DType::BF16;
    fail("{}: unsupported dtype '{}' (moefy reads F32, F16 and BF16)", where, name);
}

float bf16_to_f32(uint16_t v) {
    uint32_t u = uint32_t(v) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

uint16_t f32_to_bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return uint16_t(u >> 16);
}

float f16_to_f32(uint16_t h) {
    uint32_t sign = uint32_t(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t u;
    if (exp == 0) {
        if (mant == 0) {
            u = sign;
        } else {  // subnormal: normalise
            int e = -1;
            do { mant <<= 1; ++e; } while (!(mant & 0x400u));
            u = sign | uint32_t(127 - 15 - e) << 23 | (mant & 0x3ffu) << 13;
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | mant << 13;
    } else {
        u = sign | (exp + 127 - 15) << 23 | mant << 13;
    }
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

uint16_t f32_to_f16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    uint16_t sign = uint16_t((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7e00u;            // NaN
    if (a >= 0x477ff000u) return sign | 0x7c00u;           // overflow -> inf (rounds past 65504)
    if (a < 0x38800000u) {                                 // subnormal or zero in f16
        if (a < 0x33000000u) return sign;                  // below half the smallest subnormal
        uint32_t e = a >> 23;
        uint32_t m = (a & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - e;                          // 113 - e + 13
        uint32_t r = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1))) ++r;
        return sign | uint16_t(r);
    }
    uint32_t r = a - 0x38000000u;                          // rebias exponent
    uint32_t out = r >> 13;
    uint32_t rem = r & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (out & 1))) ++out;
    return sign | uint16_t(out);
}

// The one BF16/F16 -> f32 conversion of moefy (the engine's products convert
// weight blocks with it too). Cloned for AVX-512 and AVX2 and picked at load
// time by the CPU, so it is vectorised without -march=native.
// Sources are read with memcpy: safetensors does not align tensors (a header of
// odd length puts every tensor at an odd address), so a 2-byte element may sit
// anywhere; memcpy compiles to the same loads and is defined for any address.
namespace {
inline uint16_t load_u16(const uint8_t* p) {
    uint16_t v;
    std::memcpy(&v, p, 2);
    return v;
}
__attribute__((target_clones("avx512f", "avx2", "default")))
void bf16_run_to_f32(const uint8_t* s, float* d, size_t n) {
    for (size_t i = 0; i < n; ++i) {
        const uint32_t u = uint32_t(load_u16(s + 2 * i)) << 16;
        std::memcpy(&d[i], &u, 4);
    }
}
__attribute__((target("f16c,avx"))) void f16_run_to_f32_f16c(const uint8_t* s, float* d, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(d + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 2 * i))));
    for (; i < n; ++i) d[i] = f16_to_f32(load_u16(s + 2 * i));
}
bool has_f16c() {
    static const bool yes = [] {
        __builtin_cpu_init();
        // F16C from cpuid leaf 1 (ECX bit 29): clang 14's __builtin_cpu_supports does not know "f16c".
        unsigned a = 0, b = 0, c = 0, d = 0;
        const bool f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29)) != 0;
        return __builtin_cpu_supports("avx") && f16c;
    }();
    return yes;
}
}  // namespace

void to_f32(DType t, const void* src, float* dst, size_t n) {
    if (n == 0) return;  // an empty tensor's pointers may be null, which memcpy must not get
    switch (t) {
        case DType::F32: std::memcpy(dst, src, n * 4); return;
        case DType::BF16: bf16_run_to_f32(static_cast<const uint8_t*>(src), dst, n); return;
        case DType::F16: {
            const uint8_t* s = static_cast<const uint8_t*>(src);
            if (has_f16c()) {
                f16_run_to_f32_f16c(s, dst, n);
                return;
            }
            for (size_t i = 0; i < n; ++i) dst[i] = f16_to_f32(load_u16(s + 2 * i));
            return;
        }
    }
}

void from_f32(DType t, const float* src, void* dst, size_t n) {
    if (n == 0) return;
    switch (t) {
        case DType::F32: std::memcpy(dst, src, n * 4); return;
        case DType::BF16: {
            uint16_t* d = static_cast<uint16_t*>(dst);
            for (size_t i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i]);
            return;
        }
        case DType::F16: {
            uint16_t* d = static_cast<uint16_t*>(dst);
            for (size_t i = 0; i < n; ++i) d[i] = f32_to_f16(src[i]);
            return;
        }
    }
}

}  // namespace moefy
