#pragma once
// The one tile configuration of the amx path's kernels (model/ops/gemm_bf16.cpp,
// model/ops/attention_amx.cpp): eight tiles of 16 rows x 64 bytes, C tiles 0-3
// (16 x 16 f32), A tiles 4-5 (16 rows x 32 BF16), B tiles 6-7 (16 pairs x 16
// columns in the pair layout of tdpbf16ps). Each thread configures before its
// first tile instruction and releases after its last.
#include <immintrin.h>

#include <cstdint>

#define MOEFY_AMX __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512bf16")))

namespace moefy::ops {

struct TileConfig {
    uint8_t palette = 1, start_row = 0;
    uint8_t reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
};

MOEFY_AMX inline void amx_configure() {
    TileConfig c;
    for (int i = 0; i < 8; ++i) c.rows[i] = 16, c.colsb[i] = 64;
    _tile_loadconfig(&c);
}

MOEFY_AMX inline void amx_release() { _tile_release(); }

}  // namespace moefy::ops
