#include "io/png.h"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "common/error.h"

namespace moefy {

// ---------------------------------------------------------------------------------------------
// Raster

Image::Image(int w, int h, Rgb fill) : width(w), height(h) {
    if (w < 0 || h < 0) fail("image: negative size {}x{}", w, h);
    rgb.resize(size_t(w) * size_t(h) * 3);
    for (size_t i = 0; i < rgb.size(); i += 3) rgb[i] = fill.r, rgb[i + 1] = fill.g, rgb[i + 2] = fill.b;
}

Rgb Image::at(int x, int y) const {
    if (x < 0 || y < 0 || x >= width || y >= height) fail("image: pixel ({}, {}) outside {}x{}", x, y, width, height);
    const uint8_t* p = &rgb[(size_t(y) * size_t(width) + size_t(x)) * 3];
    return {p[0], p[1], p[2]};
}

void Image::set(int x, int y, Rgb c) {
    if (x < 0 || y < 0 || x >= width || y >= height) return;
    uint8_t* p = &rgb[(size_t(y) * size_t(width) + size_t(x)) * 3];
    p[0] = c.r, p[1] = c.g, p[2] = c.b;
}

void Image::fill_rect(int x0, int y0, int x1, int y1, Rgb c) {
    x0 = std::max(x0, 0), y0 = std::max(y0, 0);
    x1 = std::min(x1, width), y1 = std::min(y1, height);
    for (int y = y0; y < y1; ++y)
        for (int x = x0; x < x1; ++x) set(x, y, c);
}

namespace {

// 5x7 glyphs, one byte per row, bit 4 = leftmost column.
struct Glyph {
    char ch;
    std::array<uint8_t, 7> rows;
};
constexpr Glyph kFont[] = {
    {'0', {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E}}, {'1', {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E}},
    {'2', {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F}}, {'3', {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E}},
    {'4', {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02}}, {'5', {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E}},
    {'6', {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E}}, {'7', {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08}},
    {'8', {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E}}, {'9', {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C}},
    {'.', {0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C}}, {'-', {0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00}},
    {'=', {0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00}}, {'%', {0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03}},
    {'a', {0x00, 0x00, 0x0E, 0x01, 0x0F, 0x11, 0x0F}}, {'c', {0x00, 0x00, 0x0E, 0x10, 0x10, 0x11, 0x0E}},
    {'e', {0x00, 0x00, 0x0E, 0x11, 0x1F, 0x10, 0x0E}}, {'l', {0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E}},
    {'n', {0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11}}, {'o', {0x00, 0x00, 0x0E, 0x11, 0x11, 0x11, 0x0E}},
    {'p', {0x00, 0x00, 0x1E, 0x11, 0x1E, 0x10, 0x10}}, {'r', {0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10}},
    {'t', {0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06}}, {'u', {0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0D}},
    {'v', {0x00, 0x00, 0x11, 0x11, 0x11, 0x0A, 0x04}}, {'x', {0x00, 0x00, 0x11, 0x0A, 0x04, 0x0A, 0x11}},
    {'y', {0x00, 0x00, 0x11, 0x11, 0x0F, 0x01, 0x0E}},
};

const Glyph* find_glyph(char ch) {
    for (const Glyph& g : kFont)
        if (g.ch == ch) return &g;
    return nullptr;
}

}  // namespace

int text_width(const std::string& text, int scale) { return text.empty() ? 0 : (int(text.size()) * 6 - 1) * scale; }

void Image::draw_text(int x, int y, const std::string& text, Rgb c, int scale) {
    for (size_t i = 0; i < text.size(); ++i) {
        const Glyph* g = find_glyph(text[i]);
        if (!g) continue;
        const int gx = x + int(i) * 6 * scale;
        for (int r = 0; r < 7; ++r)
            for (int col = 0; col < 5; ++col)
                if ((g->rows[size_t(r)] >> (4 - col)) & 1)
                    fill_rect(gx + col * scale, y + r * scale, gx + (col + 1) * scale, y + (r + 1) * scale, c);
    }
}

// ---------------------------------------------------------------------------------------------
// Checksums

static const std::array<uint32_t, 256>& crc_table() {
    static const std::array<uint32_t, 256> t = [] {
        std::array<uint32_t, 256> t{};
        for (uint32_t i = 0; i < 256; ++i) {
            uint32_t c = i;
            for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            t[i] = c;
        }
        return t;
    }();
    return t;
}

uint32_t crc32(const uint8_t* data, size_t n, uint32_t crc) {
    const auto& t = crc_table();
    crc = ~crc;
    for (size_t i = 0; i < n; ++i) crc = t[(crc ^ data[i]) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

uint32_t adler32(const uint8_t* data, size_t n, uint32_t adler) {
    constexpr uint32_t kMod = 65521;
    uint32_t a = adler & 0xFFFF, b = adler >> 16;
    // 5552 bytes is the longest run before b can overflow 32 bits.
    while (n > 0) {
        const size_t run = std::min<size_t>(n, 5552);
        for (size_t i = 0; i < run; ++i) a += data[i], b += a;
        a %= kMod, b %= kMod;
        data += run, n -= run;
    }
    return (b << 16) | a;
}

// ---------------------------------------------------------------------------------------------
// PNG

static void put_be32(std::vector<uint8_t>& out, uint32_t v) {
    for (int s = 24; s >= 0; s -= 8) out.push_back(uint8_t(v >> s));
}

static void put_chunk(std::vector<uint8_t>& out, const char type[4], const std::vector<uint8_t>& data) {
    put_be32(out, uint32_t(data.size()));
    const size_t start = out.size();
    out.insert(out.end(), type, type + 4);
    out.insert(out.end(), data.begin(), data.end());
    put_be32(out, crc32(out.data() + start, out.size() - start));  // CRC covers type and data
}

std::vector<uint8_t> encode_png(const Image& img) {
    if (img.width <= 0 || img.height <= 0) fail("png: image is empty ({}x{})", img.width, img.height);
    const size_t row = size_t(img.width) * 3;
    if (img.rgb.size() != row * size_t(img.height))
        fail("png: pixel buffer holds {} bytes, {}x{} RGB needs {}", img.rgb.size(), img.width, img.height,
             row * size_t(img.height));
    if (row + 1 > 0x7FFFFFFFu / size_t(img.height)) fail("png: image {}x{} is too large", img.width, img.height);

    // Scanlines: filter byte 0 (None) then the row.
    std::vector<uint8_t> raw;
    raw.reserve((row + 1) * size_t(img.height));
    for (int y = 0; y < img.height; ++y) {
        raw.push_back(0);
        raw.insert(raw.end(), img.rgb.begin() + long(row * size_t(y)), img.rgb.begin() + long(row * size_t(y + 1)));
    }

    // zlib: CMF 0x78 (deflate, 32 KiB window), FLG 0x01 (check bits: 0x7801 % 31 == 0),
    // stored blocks of at most 65535 bytes each (BFINAL on the last, BTYPE 00), Adler-32.
    std::vector<uint8_t> z = {0x78, 0x01};
    z.reserve(raw.size() + raw.size() / 65535 * 5 + 16);
    size_t at = 0;
    do {
        const size_t len = std::min<size_t>(raw.size() - at, 65535);
        const bool last = at + len == raw.size();
        z.push_back(last ? 1 : 0);
        z.push_back(uint8_t(len)), z.push_back(uint8_t(len >> 8));
        z.push_back(uint8_t(~len)), z.push_back(uint8_t(~len >> 8));
        z.insert(z.end(), raw.begin() + long(at), raw.begin() + long(at + len));
        at += len;
    } while (at < raw.size());
    put_be32(z, adler32(raw.data(), raw.size()));

    std::vector<uint8_t> ihdr;
    put_be32(ihdr, uint32_t(img.width));
    put_be32(ihdr, uint32_t(img.height));
    ihdr.insert(ihdr.end(), {8, 2, 0, 0, 0});  // bit depth 8, colour type 2 (RGB), deflate, filter 0, no interlace

    std::vector<uint8_t> out = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
    put_chunk(out, "IHDR", ihdr);
    put_chunk(out, "IDAT", z);
    put_chunk(out, "IEND", {});
    return out;
}

void write_png(const std::string& path, const Image& img) {
    const std::vector<uint8_t> bytes = encode_png(img);
    const std::string tmp = path + ".tmp-" + std::to_string(getpid());
    FILE* f = std::fopen(tmp.c_str(), "wb");
    if (!f) fail("{}: cannot create: {}", tmp, std::strerror(errno));
    const bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
    if (std::fclose(f) != 0 || !ok) {
        std::remove(tmp.c_str());
        fail("{}: write failed: {}", path, std::strerror(errno));
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
        const int err = errno;
        std::remove(tmp.c_str());
        fail("{}: cannot rename from {}: {}", path, tmp, std::strerror(err));
    }
}

}  // namespace moefy
