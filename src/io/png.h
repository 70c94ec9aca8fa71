#pragma once
// A tiny raster image and PNG writer, enough for plots a person can open:
// 8-bit RGB, no interlace, filter 0 on every row, and a zlib stream made of
// stored (uncompressed) deflate blocks. CRC32 and Adler32 are computed here,
// so there is no zlib dependency. Plots are small, so size does not matter.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace moefy {

struct Rgb {
    uint8_t r = 0, g = 0, b = 0;
    bool operator==(const Rgb&) const = default;
};

struct Image {
    int width = 0, height = 0;
    std::vector<uint8_t> rgb;  // [height, width, 3], row-major, top row first

    Image() = default;
    Image(int w, int h, Rgb fill = {255, 255, 255});
    Rgb at(int x, int y) const;
    void set(int x, int y, Rgb c);  // ignores pixels outside the image
    // Fills [x0, x1) x [y0, y1), clipped to the image.
    void fill_rect(int x0, int y0, int x1, int y1, Rgb c);
    // Text in a built-in 5x7 font (digits, '.', '-', '=', '%', ' ' and the lower-case
    // letters a c e l n o p r t u v x y; anything else is drawn as a blank), each glyph
    // cell 6x8 pixels times `scale`, top-left corner at (x, y).
    void draw_text(int x, int y, const std::string& text, Rgb c, int scale = 1);
};
// Width in pixels of draw_text(text, scale).
int text_width(const std::string& text, int scale = 1);

// CRC-32 (ISO-HDLC, reflected 0xEDB88320) as PNG chunks use it; `crc` chains calls.
uint32_t crc32(const uint8_t* data, size_t n, uint32_t crc = 0);
// Adler-32 as the zlib trailer uses it; `adler` chains calls (start with 1).
uint32_t adler32(const uint8_t* data, size_t n, uint32_t adler = 1);

// The complete PNG file. Throws for an empty image or one whose pixel buffer
// does not hold width * height * 3 bytes.
std::vector<uint8_t> encode_png(const Image& img);
// Writes encode_png(img) to `path` (temp file + rename). Throws naming the path.
void write_png(const std::string& path, const Image& img);

}  // namespace moefy
