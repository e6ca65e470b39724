// Image decoding and PNG writing through libpng, libjpeg-turbo and libwebp.
//
// libpng and libjpeg report errors by longjmp. Every function that calls setjmp below keeps only
// trivially destructible locals, so the jump never skips a destructor; buffers are owned by the
// callers, and the C library objects are released by RAII guards in those callers.
#include "io/image.h"

#include <fcntl.h>
#include <jerror.h>
#include <jpeglib.h>
#include <png.h>
#include <stdio.h>  // before jpeglib.h, which uses FILE and size_t without including them
#include <unistd.h>
#include <webp/decode.h>
#include <webp/demux.h>

#include <algorithm>
#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "io/mmap_file.h"
#include "io/safetensors.h"

namespace lancet {

namespace {

namespace fs = std::filesystem;

// Pillow's DIV255 (ImagingUtils.h): an exact, rounded division by 255 of a 16-bit product sum.
inline uint8_t div255(uint32_t v) {
    v += 128;
    return static_cast<uint8_t>(((v >> 8) + v) >> 8);
}

// RGBA -> RGB onto white as `bg.paste(image, mask=alpha)` computes it: Pillow's BLEND per byte,
// out = DIV255(255 * (255 - a) + c * a).
void composite_on_white(const uint8_t* rgba, size_t n, uint8_t* rgb) {
    for (size_t i = 0; i < n; ++i) {
        const uint32_t a = rgba[4 * i + 3];
        for (int c = 0; c < 3; ++c)
            rgb[3 * i + c] = div255(255u * (255u - a) + uint32_t{rgba[4 * i + c]} * a);
    }
}

void check_dimensions(uint64_t w, uint64_t h, const ImageReadOptions& opts,
                      const std::string& where) {
    if (w == 0 || h == 0) fail(where, ": image has zero size (", w, "x", h, ")");
    if (w * h > opts.max_pixels)
        fail(where, ": image is ", w, "x", h, " = ", w * h, " pixels, over the pixel limit of ",
             opts.max_pixels, " (", opts.max_pixels / (1 << 20), " MP, --max-pixels)");
}

// ---------------------------------------------------------------- PNG

struct PngIo {
    const uint8_t* data = nullptr;
    size_t size = 0, pos = 0;
    char msg[200] = {0};
};

void png_read_cb(png_structp png, png_bytep out, size_t n) {
    auto* io = static_cast<PngIo*>(png_get_io_ptr(png));
    if (io->size - io->pos < n) png_error(png, "file is truncated");
    std::memcpy(out, io->data + io->pos, n);
    io->pos += n;
}

[[noreturn]] void png_error_cb(png_structp png, png_const_charp msg) {
    auto* io = static_cast<PngIo*>(png_get_error_ptr(png));
    std::snprintf(io->msg, sizeof io->msg, "%s", msg);
    png_longjmp(png, 1);
}
void png_warning_cb(png_structp, png_const_charp) {}

struct PngReadGuard {
    png_structp png = nullptr;
    png_infop info = nullptr;
    ~PngReadGuard() { png_destroy_read_struct(&png, info ? &info : nullptr, nullptr); }
};

struct PngHeader {
    uint32_t width = 0, height = 0;
    int channels = 0;        // after the transforms: 3 (RGB), 4 (RGBA) or 2 (16-bit grey)
    bool gray16 = false;     // 16-bit grey: Pillow opens it as mode "I" and clips to 255
    bool composite = false;  // RGBA (straight or from a palette with tRNS): onto white
    size_t rowbytes = 0;
};

void png_copy_exif(png_structp png, png_infop info, std::vector<uint8_t>* exif) {
#ifdef PNG_eXIf_SUPPORTED
    png_uint_32 num = 0;
    png_bytep data = nullptr;
    if (exif->empty() && png_get_eXIf_1(png, info, &num, &data) && data && num > 0)
        exif->assign(data, data + num);
#else
    (void)png;
    (void)info;
    (void)exif;
#endif
}

// Phase 1: signature, IHDR and the transforms matching Pillow's modes. Returns false after a
// libpng error (the message is in io->msg).
bool png_read_header(PngReadGuard* g, PngIo* io, PngHeader* h, std::vector<uint8_t>* exif) {
    if (setjmp(png_jmpbuf(g->png))) return false;
    png_set_user_limits(g->png, 0x7fffffff, 0x7fffffff);  // our own pixel limit names the problem
    png_set_read_fn(g->png, io, png_read_cb);
    png_read_info(g->png, g->info);
    h->width = png_get_image_width(g->png, g->info);
    h->height = png_get_image_height(g->png, g->info);
    const int color = png_get_color_type(g->png, g->info);
    const int depth = png_get_bit_depth(g->png, g->info);
    png_copy_exif(g->png, g->info, exif);
    if (color == PNG_COLOR_TYPE_GRAY && depth == 16) {
        h->gray16 = true;  // kept at 16 bits; clipped below
    } else if (depth == 16) {
        png_set_strip_16(g->png);  // Pillow's "RGB;16B"/"RGBA;16B" unpackers keep the high byte
    }
    if (color == PNG_COLOR_TYPE_PALETTE) {
        png_set_palette_to_rgb(g->png);
        // Only a palette's tRNS becomes alpha (Pillow: P -> RGBA); grey or RGB with a tRNS colour
        // open as L / RGB and convert("RGB") ignores the transparency.
        if (png_get_valid(g->png, g->info, PNG_INFO_tRNS)) {
            png_set_tRNS_to_alpha(g->png);
            h->composite = true;
        }
    }
    if ((color == PNG_COLOR_TYPE_GRAY || color == PNG_COLOR_TYPE_GRAY_ALPHA) && depth < 8)
        png_set_expand_gray_1_2_4_to_8(g->png);
    if (color == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_strip_alpha(g->png);  // LA -> RGB drops A
    if ((color == PNG_COLOR_TYPE_GRAY || color == PNG_COLOR_TYPE_GRAY_ALPHA) && !h->gray16)
        png_set_gray_to_rgb(g->png);
    if (color == PNG_COLOR_TYPE_RGB_ALPHA) h->composite = true;
    png_set_interlace_handling(g->png);
    png_read_update_info(g->png, g->info);
    h->channels = png_get_channels(g->png, g->info);
    h->rowbytes = png_get_rowbytes(g->png, g->info);
    return true;
}

// Phase 2: the pixels into `rows` (allocated by the caller), then the chunks after IDAT.
bool png_read_pixels(PngReadGuard* g, PngIo* io, png_bytepp rows, std::vector<uint8_t>* exif) {
    (void)io;
    if (setjmp(png_jmpbuf(g->png))) return false;
    png_read_image(g->png, rows);
    png_read_end(g->png, g->info);
    png_copy_exif(g->png, g->info, exif);
    return true;
}

ImageRGB8 decode_png(std::span<const uint8_t> bytes, const std::string& where,
                     const ImageReadOptions& opts, std::vector<uint8_t>* exif) {
    PngIo io;
    io.data = bytes.data();
    io.size = bytes.size();
    PngReadGuard g;
    g.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &io, png_error_cb, png_warning_cb);
    if (!g.png) fail(where, ": out of memory creating the PNG reader");
    g.info = png_create_info_struct(g.png);
    if (!g.info) fail(where, ": out of memory creating the PNG reader");
    PngHeader h;
    if (!png_read_header(&g, &io, &h, exif)) fail(where, ": corrupt PNG: ", io.msg);
    check_dimensions(h.width, h.height, opts, where);
    std::vector<uint8_t> raw(h.rowbytes * h.height);
    std::vector<png_bytep> rows(h.height);
    for (uint32_t y = 0; y < h.height; ++y) rows[y] = raw.data() + h.rowbytes * y;
    if (!png_read_pixels(&g, &io, rows.data(), exif)) fail(where, ": corrupt PNG: ", io.msg);

    ImageRGB8 img(static_cast<int>(h.width), static_cast<int>(h.height));
    const size_t n = static_cast<size_t>(h.width) * h.height;
    if (h.gray16) {
        // Pillow: I;16 opens as mode "I", and convert("RGB") clips every value above 255.
        for (size_t i = 0; i < n; ++i) {
            const uint32_t v = (uint32_t{raw[2 * i]} << 8) | raw[2 * i + 1];
            const uint8_t c = static_cast<uint8_t>(std::min<uint32_t>(v, 255));
            img.rgb[3 * i] = img.rgb[3 * i + 1] = img.rgb[3 * i + 2] = c;
        }
    } else if (h.channels == 4) {
        composite_on_white(raw.data(), n, img.rgb.data());
    } else if (h.channels == 3) {
        img.rgb = std::move(raw);
    } else {
        fail(where, ": unsupported PNG layout (", h.channels, " channels after conversion)");
    }
    return img;
}

// ---------------------------------------------------------------- JPEG

struct JpegErr {
    jpeg_error_mgr pub;
    jmp_buf jump;
    char msg[JMSG_LENGTH_MAX] = {0};
    bool premature_eof = false;
};

[[noreturn]] void jpeg_error_exit_cb(j_common_ptr cinfo) {
    auto* err = reinterpret_cast<JpegErr*>(cinfo->err);
    (*cinfo->err->format_message)(cinfo, err->msg);
    std::longjmp(err->jump, 1);
}
// Warnings are ignored, as Pillow ignores them, except the end of data arriving early:
// libjpeg-turbo pads a truncated file with grey, Pillow refuses it ("image file is truncated"), and
// so do we.
void jpeg_emit_message_cb(j_common_ptr cinfo, int level) {
    auto* err = reinterpret_cast<JpegErr*>(cinfo->err);
    if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) err->premature_eof = true;
}

struct JpegGuard {
    jpeg_decompress_struct cinfo;
    bool created = false;
    ~JpegGuard() {
        if (created) jpeg_destroy_decompress(&cinfo);
    }
};

struct JpegHeader {
    uint32_t width = 0, height = 0;
    int components = 0;
    bool cmyk = false, adobe_inverted = false;
};

bool jpeg_read_header_phase(JpegGuard* g, JpegErr* err, std::span<const uint8_t> bytes,
                            JpegHeader* h, std::vector<uint8_t>* exif) {
    if (setjmp(err->jump)) return false;
    jpeg_create_decompress(&g->cinfo);
    g->created = true;
    jpeg_mem_src(&g->cinfo, bytes.data(), static_cast<unsigned long>(bytes.size()));
    jpeg_save_markers(&g->cinfo, JPEG_APP0 + 1, 0xffff);
    jpeg_read_header(&g->cinfo, TRUE);
    for (jpeg_saved_marker_ptr m = g->cinfo.marker_list; m; m = m->next) {
        static const uint8_t kExif[6] = {'E', 'x', 'i', 'f', 0, 0};
        if (exif->empty() && m->marker == JPEG_APP0 + 1 && m->data_length > 6 &&
            std::memcmp(m->data, kExif, 6) == 0)
            exif->assign(m->data, m->data + m->data_length);
    }
    h->width = g->cinfo.image_width;
    h->height = g->cinfo.image_height;
    // Pillow decodes CMYK / YCCK files to CMYK (inverted when an Adobe marker says so) and then
    // converts; everything else libjpeg turns into RGB itself (grey is replicated, as L -> RGB).
    if (g->cinfo.jpeg_color_space == JCS_CMYK || g->cinfo.jpeg_color_space == JCS_YCCK) {
        g->cinfo.out_color_space = JCS_CMYK;
        h->cmyk = true;
        h->adobe_inverted = g->cinfo.saw_Adobe_marker;
    } else {
        g->cinfo.out_color_space = JCS_RGB;
    }
    return true;
}

bool jpeg_read_pixels_phase(JpegGuard* g, JpegErr* err, uint8_t* out, size_t stride) {
    if (setjmp(err->jump)) return false;
    jpeg_start_decompress(&g->cinfo);
    while (g->cinfo.output_scanline < g->cinfo.output_height) {
        JSAMPROW row = out + stride * g->cinfo.output_scanline;
        jpeg_read_scanlines(&g->cinfo, &row, 1);
    }
    jpeg_finish_decompress(&g->cinfo);
    return true;
}

ImageRGB8 decode_jpeg(std::span<const uint8_t> bytes, const std::string& where,
                      const ImageReadOptions& opts, std::vector<uint8_t>* exif) {
    JpegGuard g;
    JpegErr err;
    g.cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = jpeg_error_exit_cb;
    err.pub.emit_message = jpeg_emit_message_cb;
    JpegHeader h;
    if (!jpeg_read_header_phase(&g, &err, bytes, &h, exif))
        fail(where, ": corrupt JPEG: ", err.msg);
    check_dimensions(h.width, h.height, opts, where);
    const int comps = h.cmyk ? 4 : 3;
    const size_t stride = static_cast<size_t>(h.width) * comps;
    std::vector<uint8_t> raw(stride * h.height);
    if (!jpeg_read_pixels_phase(&g, &err, raw.data(), stride))
        fail(where, ": corrupt JPEG: ", err.msg);
    if (err.premature_eof) fail(where, ": corrupt JPEG: file is truncated");
    ImageRGB8 img(static_cast<int>(h.width), static_cast<int>(h.height));
    const size_t n = static_cast<size_t>(h.width) * h.height;
    if (!h.cmyk) {
        img.rgb = std::move(raw);
    } else {
        // Pillow's cmyk2rgb: nk = 255 - k; out = clip(nk - MULDIV255(c, nk)).
        for (size_t i = 0; i < n; ++i) {
            uint8_t v[4];
            for (int c = 0; c < 4; ++c)
                v[c] =
                    h.adobe_inverted ? static_cast<uint8_t>(255 - raw[4 * i + c]) : raw[4 * i + c];
            const int nk = 255 - v[3];
            for (int c = 0; c < 3; ++c) {
                const int m = div255(static_cast<uint32_t>(v[c] * nk));
                img.rgb[3 * i + c] = static_cast<uint8_t>(std::clamp(nk - m, 0, 255));
            }
        }
    }
    return img;
}

// ---------------------------------------------------------------- WebP

ImageRGB8 decode_webp(std::span<const uint8_t> bytes, const std::string& where,
                      const ImageReadOptions& opts, std::vector<uint8_t>* exif) {
    WebPBitstreamFeatures feat;
    if (WebPGetFeatures(bytes.data(), bytes.size(), &feat) != VP8_STATUS_OK)
        fail(where, ": corrupt WebP: cannot read the header");
    check_dimensions(static_cast<uint64_t>(std::max(feat.width, 0)),
                     static_cast<uint64_t>(std::max(feat.height, 0)), opts, where);
    WebPData data{bytes.data(), bytes.size()};
    if (WebPDemuxer* demux = WebPDemux(&data)) {
        WebPChunkIterator it;
        if (WebPDemuxGetChunk(demux, "EXIF", 1, &it)) {
            exif->assign(it.chunk.bytes, it.chunk.bytes + it.chunk.size);
            WebPDemuxReleaseChunkIterator(&it);
        }
        WebPDemuxDelete(demux);
    }
    ImageRGB8 img(feat.width, feat.height);
    const size_t n = static_cast<size_t>(feat.width) * feat.height;
    if (feat.has_alpha) {
        std::vector<uint8_t> rgba(n * 4);
        if (!WebPDecodeRGBAInto(bytes.data(), bytes.size(), rgba.data(), rgba.size(),
                                feat.width * 4))
            fail(where, ": corrupt WebP: cannot decode the pixels");
        composite_on_white(rgba.data(), n, img.rgb.data());
    } else if (!WebPDecodeRGBInto(bytes.data(), bytes.size(), img.rgb.data(), img.rgb.size(),
                                  feat.width * 3)) {
        fail(where, ": corrupt WebP: cannot decode the pixels");
    }
    return img;
}

// ---------------------------------------------------------------- PNG output

struct PngWriteState {
    std::string* out = nullptr;
    char msg[200] = {0};
};

void png_write_cb(png_structp png, png_bytep data, size_t n) {
    auto* st = static_cast<PngWriteState*>(png_get_io_ptr(png));
    st->out->append(reinterpret_cast<const char*>(data), n);  // may throw bad_alloc: fatal anyway
}
void png_flush_cb(png_structp) {}
[[noreturn]] void png_write_error_cb(png_structp png, png_const_charp msg) {
    auto* st = static_cast<PngWriteState*>(png_get_error_ptr(png));
    std::snprintf(st->msg, sizeof st->msg, "%s", msg);
    png_longjmp(png, 1);
}

struct PngWriteGuard {
    png_structp png = nullptr;
    png_infop info = nullptr;
    ~PngWriteGuard() { png_destroy_write_struct(&png, info ? &info : nullptr); }
};

bool png_write_phase(PngWriteGuard* g, PngWriteState* st, const ImageRGB8* img, png_textp text,
                     int ntext, png_bytepp rows) {
    if (setjmp(png_jmpbuf(g->png))) return false;
    png_set_write_fn(g->png, st, png_write_cb, png_flush_cb);
    png_set_IHDR(g->png, g->info, static_cast<png_uint_32>(img->width),
                 static_cast<png_uint_32>(img->height), 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (ntext > 0) png_set_text(g->png, g->info, text, ntext);
    png_write_info(g->png, g->info);
    png_write_image(g->png, rows);
    png_write_end(g->png, g->info);
    return true;
}

void check_png_key(const std::string& key) {
    bool ok = !key.empty() && key.size() <= 79 && key.front() != ' ' && key.back() != ' ' &&
              key.find("  ") == std::string::npos;
    for (unsigned char c : key)
        if (!((c >= 32 && c <= 126) || c >= 161)) ok = false;
    if (!ok)
        fail("PNG metadata key \"", key,
             "\" is not 1..79 printable Latin-1 characters without leading, trailing or double "
             "spaces");
}

}  // namespace

bool is_image_magic(std::span<const uint8_t> b) {
    static const uint8_t kPng[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    if (b.size() >= 8 && std::memcmp(b.data(), kPng, 8) == 0) return true;
    if (b.size() >= 3 && b[0] == 0xff && b[1] == 0xd8 && b[2] == 0xff) return true;
    if (b.size() >= 12 && std::memcmp(b.data(), "RIFF", 4) == 0 &&
        std::memcmp(b.data() + 8, "WEBP", 4) == 0)
        return true;
    return false;
}

bool file_is_image(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    uint8_t head[16] = {0};
    const ssize_t n = ::read(fd, head, sizeof head);
    ::close(fd);
    return n > 0 && is_image_magic(std::span<const uint8_t>(head, static_cast<size_t>(n)));
}

ImageRGB8 decode_image(std::span<const uint8_t> b, const std::string& where,
                       const ImageReadOptions& opts) {
    std::vector<uint8_t> exif;
    ImageRGB8 img;
    static const uint8_t kPng[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    if (b.size() >= 8 && std::memcmp(b.data(), kPng, 8) == 0) {
        img = decode_png(b, where, opts, &exif);
    } else if (b.size() >= 3 && b[0] == 0xff && b[1] == 0xd8 && b[2] == 0xff) {
        img = decode_jpeg(b, where, opts, &exif);
    } else if (b.size() >= 12 && std::memcmp(b.data(), "RIFF", 4) == 0 &&
               std::memcmp(b.data() + 8, "WEBP", 4) == 0) {
        img = decode_webp(b, where, opts, &exif);
    } else if (b.empty()) {
        fail(where, ": file is empty");
    } else {
        fail(where, ": not a PNG, JPEG or WebP image (unrecognised magic bytes)");
    }
    if (opts.apply_exif_orientation && !exif.empty()) {
        const int o = exif_orientation(exif);
        if (o != 1) img = apply_orientation(img, o);
    }
    return img;
}

ImageRGB8 read_image(const std::string& path, const ImageReadOptions& opts) {
    std::error_code ec;
    if (!fs::exists(path, ec)) fail(path, ": image file missing");
    if (fs::is_directory(path, ec)) fail(path, ": is a directory, not an image file");
    if (!fs::is_regular_file(path, ec)) fail(path, ": not a regular file");
    if (fs::file_size(path, ec) == 0) fail(path, ": file is empty");
    MappedFile f(path);
    return decode_image(std::span<const uint8_t>(f.data(), f.size()), path, opts);
}

int exif_orientation(std::span<const uint8_t> e) {
    if (e.size() >= 6 && std::memcmp(e.data(), "Exif\0\0", 6) == 0) e = e.subspan(6);
    if (e.size() < 8) return 1;
    bool le;
    if (e[0] == 'I' && e[1] == 'I')
        le = true;
    else if (e[0] == 'M' && e[1] == 'M')
        le = false;
    else
        return 1;
    auto u16 = [&](size_t off) -> uint32_t {
        return le ? (e[off] | (uint32_t{e[off + 1]} << 8)) : ((uint32_t{e[off]} << 8) | e[off + 1]);
    };
    auto u32 = [&](size_t off) -> uint64_t {
        return le ? (u16(off) | (uint64_t{u16(off + 2)} << 16))
                  : ((uint64_t{u16(off)} << 16) | u16(off + 2));
    };
    if (u16(2) != 42) return 1;
    const uint64_t ifd = u32(4);
    if (ifd + 2 > e.size()) return 1;
    const uint32_t count = u16(static_cast<size_t>(ifd));
    for (uint32_t i = 0; i < count; ++i) {
        const uint64_t ent = ifd + 2 + 12ull * i;
        if (ent + 12 > e.size()) return 1;
        const size_t o = static_cast<size_t>(ent);
        if (u16(o) != 0x0112) continue;
        if (u16(o + 2) != 3 || u32(o + 4) < 1) return 1;  // SHORT, at least one value
        const uint32_t v = u16(o + 8);
        return (v >= 1 && v <= 8) ? static_cast<int>(v) : 1;
    }
    return 1;
}

ImageRGB8 apply_orientation(const ImageRGB8& in, int o) {
    if (o < 2 || o > 8) return in;
    const int W = in.width, H = in.height;
    const bool swap = o >= 5;
    ImageRGB8 out(swap ? H : W, swap ? W : H);
    for (int yo = 0; yo < out.height; ++yo) {
        uint8_t* dst = out.row(yo);
        for (int xo = 0; xo < out.width; ++xo) {
            int x = xo, y = yo;  // the source pixel of (xo, yo)
            switch (o) {
                case 2:
                    x = W - 1 - xo;
                    break;  // mirror left-right
                case 3:
                    x = W - 1 - xo, y = H - 1 - yo;
                    break;  // rotate 180
                case 4:
                    y = H - 1 - yo;
                    break;  // mirror top-bottom
                case 5:
                    x = yo, y = xo;
                    break;  // transpose
                case 6:
                    x = yo, y = H - 1 - xo;
                    break;  // rotate 90 clockwise
                case 7:
                    x = W - 1 - yo, y = H - 1 - xo;
                    break;  // transverse
                case 8:
                    x = W - 1 - yo, y = xo;
                    break;  // rotate 90 counter-clockwise
            }
            std::memcpy(dst + 3 * xo, in.row(y) + 3 * x, 3);
        }
    }
    return out;
}

std::string encode_png(const ImageRGB8& img, const ImageMetadata& meta) {
    if (img.width <= 0 || img.height <= 0 ||
        img.rgb.size() != static_cast<size_t>(img.width) * img.height * 3)
        fail("PNG output: image has no pixels or a wrong buffer size");
    for (const auto& [k, v] : meta) check_png_key(k);
    std::vector<png_text> text(meta.size());
    for (size_t i = 0; i < meta.size(); ++i) {
        bool ascii = true;
        for (unsigned char c : meta[i].second)
            if (c >= 128) ascii = false;
        std::memset(&text[i], 0, sizeof(png_text));
        // tEXt is Latin-1 only; UTF-8 values (most prompts) go into an uncompressed iTXt chunk.
        text[i].compression = ascii ? PNG_TEXT_COMPRESSION_NONE : PNG_ITXT_COMPRESSION_NONE;
        text[i].key = const_cast<char*>(meta[i].first.c_str());
        text[i].text = const_cast<char*>(meta[i].second.c_str());
        text[i].text_length = ascii ? meta[i].second.size() : 0;
        text[i].itxt_length = ascii ? 0 : meta[i].second.size();
    }
    std::vector<png_bytep> rows(static_cast<size_t>(img.height));
    for (int y = 0; y < img.height; ++y)
        rows[static_cast<size_t>(y)] = const_cast<png_bytep>(img.row(y));
    std::string out;
    PngWriteState st;
    st.out = &out;
    PngWriteGuard g;
    g.png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &st, png_write_error_cb, nullptr);
    if (!g.png) fail("PNG output: out of memory");
    g.info = png_create_info_struct(g.png);
    if (!g.info) fail("PNG output: out of memory");
    if (!png_write_phase(&g, &st, &img, text.data(), static_cast<int>(text.size()), rows.data()))
        fail("PNG output: ", st.msg);
    return out;
}

void write_png(const std::string& path, const ImageRGB8& img, const ImageMetadata& meta) {
    std::error_code ec;
    if (fs::is_directory(path, ec)) fail(path, ": is a directory");
    const std::string bytes = encode_png(img, meta);
    write_file_atomic(path, bytes);
}

ImageRGB8 frame_to_rgb8(const float* data, int64_t T, int64_t H, int64_t W, int64_t t) {
    ImageRGB8 img(static_cast<int>(W), static_cast<int>(H));
    const int64_t plane = T * H * W;
    for (int64_t y = 0; y < H; ++y)
        for (int64_t x = 0; x < W; ++x)
            for (int64_t c = 0; c < 3; ++c) {
                const float v = data[c * plane + (t * H + y) * W + x];
                // NaN maps to 0 through the clamp's comparisons failing the other way.
                const float s = std::nearbyint(255.0f * (v + 1.0f) * 0.5f);
                img.rgb[static_cast<size_t>((y * W + x) * 3 + c)] =
                    static_cast<uint8_t>(s >= 0.0f ? std::min(s, 255.0f) : 0.0f);
            }
    return img;
}

}  // namespace lancet
