// Video reading (decord-compatible frame counting, sampling, colour conversion) and MP4 writing
// through FFmpeg's libraries.
#include "io/video.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "io/output_dir.h"

#ifdef LANCET_WITH_FFMPEG
extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/display.h>
#include <libavutil/imgutils.h>
#include <libavutil/opt.h>
#include <libswscale/swscale.h>
}
#endif

namespace lancet {

namespace fs = std::filesystem;

FrameSampling lance_sample_frames(int64_t total, double avg_fps, double sample_fps,
                                  double max_duration, int temporal) {
    FrameSampling s;
    if (total <= 0) return s;
    // decord's get_avg_fps, rounded to an integer; Lance falls back to 24 when that fails.
    const double r = std::nearbyint(avg_fps);
    s.fps = (std::isfinite(avg_fps) && r >= 1) ? static_cast<int>(r) : 24;
    s.duration = std::min(static_cast<double>(total) / s.fps, max_duration);
    int64_t n = static_cast<int64_t>(std::nearbyint(s.duration * sample_fps));
    // To the form k*temporal + 1, never above n (72 -> 69, 73 -> 73, 70 -> 69).
    if (n % temporal != 0)
        n = n / temporal * temporal + 1;
    else
        n = n / temporal * temporal + 1 - temporal;
    if (n < 1) n = 1;  // Lance fails here (a negative count); one frame is the sensible answer
    // numpy.linspace(0, total - 1, n, dtype=int): i * step in float64, truncated; the last
    // sample is exactly total - 1.
    s.indices.resize(static_cast<size_t>(n));
    const double stop = static_cast<double>(total - 1);
    const double step = n > 1 ? stop / static_cast<double>(n - 1) : 0.0;
    for (int64_t i = 0; i < n; ++i)
        s.indices[static_cast<size_t>(i)] = static_cast<int64_t>(static_cast<double>(i) * step);
    if (n > 1) s.indices.back() = total - 1;
    return s;
}

#ifdef LANCET_WITH_FFMPEG

namespace {

std::string av_error(int err) {
    char buf[AV_ERROR_MAX_STRING_SIZE] = {0};
    av_strerror(err, buf, sizeof buf);
    return buf;
}

struct FormatCtx {
    AVFormatContext* p = nullptr;
    ~FormatCtx() {
        if (p) avformat_close_input(&p);
    }
};
struct CodecCtx {
    AVCodecContext* p = nullptr;
    ~CodecCtx() { avcodec_free_context(&p); }
};
struct Packet {
    AVPacket* p = av_packet_alloc();
    ~Packet() { av_packet_free(&p); }
};
struct Frame {
    AVFrame* p = av_frame_alloc();
    ~Frame() { av_frame_free(&p); }
};
struct Sws {
    SwsContext* p = nullptr;
    ~Sws() { sws_freeContext(p); }
};

// decord's GetRotation: the "rotate" tag, else minus the display matrix's counter-clockwise angle,
// modulo 360; only 90, 180 and 270 are applied.
int stream_rotation(AVStream* st) {
    double theta = 0;
    const AVDictionaryEntry* rot = av_dict_get(st->metadata, "rotate", nullptr, 0);
    if (rot && rot->value[0] && std::strcmp(rot->value, "0") != 0) theta = std::atof(rot->value);
    const uint8_t* m = av_stream_get_side_data(st, AV_PKT_DATA_DISPLAYMATRIX, nullptr);
    if (m && theta == 0) theta = -av_display_rotation_get(reinterpret_cast<const int32_t*>(m));
    theta = std::fmod(theta, 360);
    if (theta < 0) theta += 360;
    const int r = static_cast<int>(theta);
    return (r == 90 || r == 180 || r == 270) ? r : 0;
}

}  // namespace

struct VideoReader::Impl {
    std::string path;
    VideoReadOptions opts;
    VideoInfo info;
    FormatCtx fmt;
    CodecCtx dec;
    int sidx = -1;
    int coded_w = 0, coded_h = 0;     // frame size before the rotation
    std::vector<int64_t> sorted_pts;  // frame index -> pts (presentation order)
    std::vector<int64_t> key_pts;     // sorted pts of key frames
    bool pts_usable = true;           // every packet had a distinct pts: seeking is possible
    int64_t decoded = 0;

    void open_demuxer() {
        if (fmt.p) avformat_close_input(&fmt.p);
        int ret = avformat_open_input(&fmt.p, path.c_str(), nullptr, nullptr);
        if (ret < 0) fail(path, ": cannot open as a video: ", av_error(ret));
        // find_stream_info decodes a few frames; the pixel limit bounds what a hostile header
        // can make those decoders allocate.
        std::vector<AVDictionary*> stream_opts(fmt.p->nb_streams, nullptr);
        const std::string limit = std::to_string(std::min<uint64_t>(opts.max_pixels, INT32_MAX));
        for (auto& d : stream_opts) av_dict_set(&d, "max_pixels", limit.c_str(), 0);
        ret = avformat_find_stream_info(fmt.p, stream_opts.empty() ? nullptr : stream_opts.data());
        for (auto& d : stream_opts) av_dict_free(&d);
        if (ret < 0) fail(path, ": cannot read the stream information: ", av_error(ret));
    }

    void open() {
        std::error_code ec;
        if (!fs::exists(path, ec)) fail(path, ": video file missing");
        if (fs::is_directory(path, ec)) fail(path, ": is a directory, not a video file");
        if (!fs::is_regular_file(path, ec)) fail(path, ": not a regular file");
        if (fs::file_size(path, ec) == 0) fail(path, ": file is empty");
        av_log_set_level(AV_LOG_QUIET);  // errors come back as return codes and become one line
        open_demuxer();
        const AVCodec* codec = nullptr;
        sidx = av_find_best_stream(fmt.p, AVMEDIA_TYPE_VIDEO, -1, -1, &codec, 0);
        if (sidx == AVERROR_DECODER_NOT_FOUND)
            fail(path, ": no decoder for its video stream in this FFmpeg build");
        if (sidx < 0) fail(path, ": no video stream");
        AVStream* st = fmt.p->streams[sidx];
        coded_w = st->codecpar->width;
        coded_h = st->codecpar->height;
        if (coded_w <= 0 || coded_h <= 0)
            fail(path, ": video stream has no frame size (", coded_w, "x", coded_h, ")");
        const uint64_t px = static_cast<uint64_t>(coded_w) * static_cast<uint64_t>(coded_h);
        if (px > opts.max_pixels)
            fail(path, ": video frames are ", coded_w, "x", coded_h, " = ", px,
                 " pixels, over the pixel limit of ", opts.max_pixels, " (",
                 opts.max_pixels / (1 << 20), " MP, --max-pixels)");
        info.rotation = stream_rotation(st);
        info.width = (info.rotation == 90 || info.rotation == 270) ? coded_h : coded_w;
        info.height = (info.rotation == 90 || info.rotation == 270) ? coded_w : coded_h;
        info.avg_fps = (st->avg_frame_rate.den > 0 && st->avg_frame_rate.num > 0)
                           ? av_q2d(st->avg_frame_rate)
                           : 0.0;
        info.codec = codec->name;

        // decord's IndexKeyframes: every packet of the stream is one frame; sorting their pts
        // gives the frame order its indices refer to.
        Packet pkt;
        while (true) {
            const int ret = av_read_frame(fmt.p, pkt.p);
            if (ret == AVERROR_EOF) break;
            if (ret < 0) fail(path, ": cannot read packets: ", av_error(ret));
            if (pkt.p->stream_index == sidx) {
                const int64_t ts = pkt.p->pts != AV_NOPTS_VALUE ? pkt.p->pts : pkt.p->dts;
                if (ts == AV_NOPTS_VALUE) pts_usable = false;
                sorted_pts.push_back(ts);
                if (pkt.p->flags & AV_PKT_FLAG_KEY) key_pts.push_back(ts);
            }
            av_packet_unref(pkt.p);
        }
        std::sort(sorted_pts.begin(), sorted_pts.end());
        std::sort(key_pts.begin(), key_pts.end());
        if (std::adjacent_find(sorted_pts.begin(), sorted_pts.end()) != sorted_pts.end())
            pts_usable = false;
        info.frame_count = static_cast<int64_t>(sorted_pts.size());
        if (info.frame_count == 0) fail(path, ": video stream has no frames");

        open_demuxer();  // back at the start with a fresh demuxer
        dec.p = avcodec_alloc_context3(codec);
        if (!dec.p) fail(path, ": out of memory creating the decoder");
        int ret = avcodec_parameters_to_context(dec.p, fmt.p->streams[sidx]->codecpar);
        if (ret < 0) fail(path, ": bad codec parameters: ", av_error(ret));
        dec.p->thread_count = 0;  // FFmpeg picks
        dec.p->max_pixels = static_cast<int64_t>(std::min<uint64_t>(opts.max_pixels, INT32_MAX));
        ret = avcodec_open2(dec.p, codec, nullptr);
        if (ret < 0) fail(path, ": cannot open the ", codec->name, " decoder: ", av_error(ret));
    }

    // The frame index of a decoded picture: its pts in the sorted list, else the next index.
    int64_t index_of(const AVFrame* f, int64_t prev) const {
        const int64_t ts =
            f->best_effort_timestamp != AV_NOPTS_VALUE ? f->best_effort_timestamp : f->pts;
        if (pts_usable && ts != AV_NOPTS_VALUE) {
            const auto it = std::lower_bound(sorted_pts.begin(), sorted_pts.end(), ts);
            if (it != sorted_pts.end() && *it == ts) return it - sorted_pts.begin();
        }
        return prev + 1;
    }

    // Next decoded picture into `f`; false at the end of the stream.
    bool next_frame(AVFrame* f, AVPacket* pkt, bool* eof_sent) {
        while (true) {
            int ret = avcodec_receive_frame(dec.p, f);
            if (ret == 0) {
                ++decoded;
                return true;
            }
            if (ret == AVERROR_EOF) return false;
            if (ret != AVERROR(EAGAIN)) fail(path, ": decoding failed: ", av_error(ret));
            if (*eof_sent) return false;
            ret = av_read_frame(fmt.p, pkt);
            if (ret < 0) {  // end of file (or a damaged tail): drain the decoder
                avcodec_send_packet(dec.p, nullptr);
                *eof_sent = true;
                continue;
            }
            if (pkt->stream_index == sidx) {
                ret = avcodec_send_packet(dec.p, pkt);
                // A damaged packet is skipped, as decoders conceal; missing frames are caught
                // by the index check in read_frames.
                if (ret < 0 && ret != AVERROR(EAGAIN) && ret != AVERROR_INVALIDDATA)
                    fail(path, ": decoding failed: ", av_error(ret));
            }
            av_packet_unref(pkt);
        }
    }
};

VideoReader::VideoReader(const std::string& path, const VideoReadOptions& opts)
    : impl_(std::make_unique<Impl>()) {
    impl_->path = path;
    impl_->opts = opts;
    impl_->open();
}

VideoReader::~VideoReader() = default;

const VideoInfo& VideoReader::info() const { return impl_->info; }
int64_t VideoReader::frames_decoded() const { return impl_->decoded; }

void VideoReader::read_frames(const std::vector<int64_t>& indices,
                              const std::function<void(size_t, const ImageRGB8&)>& fn) {
    Impl& m = *impl_;
    const std::string& path = m.path;
    for (size_t k = 0; k < indices.size(); ++k) {
        if (indices[k] < 0 || indices[k] >= m.info.frame_count ||
            (k && indices[k] < indices[k - 1]))
            fail(path, ": frame indices must be non-decreasing and in [0, ", m.info.frame_count,
                 ")");
    }
    m.decoded = 0;
    Packet pkt;
    Frame frame;
    Sws sws;
    std::vector<uint8_t> line_buf;
    bool eof_sent = false;
    int64_t cur = -1;  // index of the last picture the decoder gave us
    const int orientation = m.info.rotation == 90    ? 6
                            : m.info.rotation == 180 ? 3
                            : m.info.rotation == 270 ? 8
                                                     : 1;
    size_t k = 0;
    while (k < indices.size()) {
        const int64_t target = indices[k];
        // Skip ahead: when a key frame lies after the current position and at or before the
        // target, decoding from it gives the same picture without the frames in between.
        if (m.pts_usable && !m.key_pts.empty() && !eof_sent) {
            const int64_t tpts = m.sorted_pts[static_cast<size_t>(target)];
            const auto it = std::upper_bound(m.key_pts.begin(), m.key_pts.end(), tpts);
            if (it != m.key_pts.begin()) {
                const int64_t kpts = *(it - 1);
                const int64_t kidx =
                    std::lower_bound(m.sorted_pts.begin(), m.sorted_pts.end(), kpts) -
                    m.sorted_pts.begin();
                if (kidx > cur + 1) {
                    const int ret = av_seek_frame(m.fmt.p, m.sidx, kpts, AVSEEK_FLAG_BACKWARD);
                    if (ret >= 0) {
                        avcodec_flush_buffers(m.dec.p);
                        cur = kidx - 1;
                    }
                }
            }
        }
        if (!m.next_frame(frame.p, pkt.p, &eof_sent))
            fail(path, ": frame ", target, " of ", m.info.frame_count,
                 " could not be decoded (the stream ends early or is damaged)");
        const int64_t idx = m.index_of(frame.p, cur);
        cur = idx;
        if (idx < target) continue;
        if (idx > target)
            fail(path, ": frame ", target, " of ", m.info.frame_count,
                 " could not be decoded (the decoder skipped it)");
        const AVFrame* f = frame.p;
        if (f->width <= 0 || f->height <= 0 ||
            static_cast<uint64_t>(f->width) * f->height > m.opts.max_pixels)
            fail(path, ": decoded frame of ", f->width, "x", f->height,
                 " is empty or over the pixel limit");
        // decord's filter graph: "scale=W:H" (the stream's size) to rgb24, with the matrix and
        // range the frame carries (vf_scale's in_color_matrix=auto).
        sws.p = sws_getCachedContext(sws.p, f->width, f->height,
                                     static_cast<AVPixelFormat>(f->format), m.coded_w, m.coded_h,
                                     AV_PIX_FMT_RGB24, SWS_BICUBIC, nullptr, nullptr, nullptr);
        if (!sws.p) fail(path, ": cannot convert frames of pixel format ", f->format, " to RGB");
        int *inv_table = nullptr, *table = nullptr;
        int src_range = 0, dst_range = 0, brightness = 0, contrast = 0, saturation = 0;
        if (sws_getColorspaceDetails(sws.p, &inv_table, &src_range, &table, &dst_range, &brightness,
                                     &contrast, &saturation) >= 0) {
            const int* coeffs = sws_getCoefficients(f->colorspace);
            if (f->color_range != AVCOL_RANGE_UNSPECIFIED)
                src_range = f->color_range == AVCOL_RANGE_JPEG;
            sws_setColorspaceDetails(sws.p, coeffs, src_range, table, dst_range, brightness,
                                     contrast, saturation);
        }
        // swscale's SIMD paths write whole vectors past the end of a line: convert into a
        // 64-byte aligned, padded buffer, then copy the rows out tightly.
        const int stride = (m.coded_w * 3 + 63) / 64 * 64;
        line_buf.resize(static_cast<size_t>(stride) * m.coded_h + 256);
        uint8_t* dst[4] = {line_buf.data(), nullptr, nullptr, nullptr};
        int dst_stride[4] = {stride, 0, 0, 0};
        sws_scale(sws.p, f->data, f->linesize, 0, f->height, dst, dst_stride);
        av_frame_unref(frame.p);
        ImageRGB8 rgb(m.coded_w, m.coded_h);
        for (int y = 0; y < m.coded_h; ++y)
            std::memcpy(rgb.row(y), line_buf.data() + static_cast<size_t>(stride) * y,
                        static_cast<size_t>(m.coded_w) * 3);
        if (orientation != 1) rgb = apply_orientation(rgb, orientation);
        while (k < indices.size() && indices[k] == idx) fn(k++, rgb);
    }
}

struct Mp4Writer::Impl {
    std::string path, tmp;
    int64_t H = 0, W = 0, written = 0;
    AVFormatContext* oc = nullptr;
    CodecCtx enc;
    AVStream* st = nullptr;
    Sws sws;
    Frame yuv;
    Packet pkt;
    std::vector<uint8_t> padded;
    bool committed = false;

    ~Impl() {
        if (oc) {
            if (oc->pb) avio_closep(&oc->pb);
            avformat_free_context(oc);
        }
        if (!committed && !tmp.empty()) ::unlink(tmp.c_str());
    }

    void drain() {
        while (true) {
            int ret = avcodec_receive_packet(enc.p, pkt.p);
            if (ret == AVERROR(EAGAIN) || ret == AVERROR_EOF) return;
            if (ret < 0) fail(path, ": H.264 encoding failed: ", av_error(ret));
            av_packet_rescale_ts(pkt.p, enc.p->time_base, st->time_base);
            pkt.p->stream_index = st->index;
            ret = av_interleaved_write_frame(oc, pkt.p);
            if (ret < 0) fail(path, ": write failed: ", av_error(ret));
        }
    }
};

Mp4Writer::Mp4Writer(const std::string& path, int64_t H, int64_t W, const VideoWriteOptions& opts)
    : impl_(std::make_unique<Impl>()) {
    if (H <= 0 || W <= 0 || H % 2 || W % 2 || H > 16384 || W > 16384)
        fail(path, ": cannot encode frames of ", H, "x", W,
             " (H.264 4:2:0 needs a positive, even height and width)");
    if (!(opts.fps > 0 && opts.fps <= 1000)) fail(path, ": frame rate ", opts.fps, " is invalid");
    check_not_source(path);
    std::error_code ec;
    if (fs::is_directory(path, ec)) fail(path, ": is a directory");
    av_log_set_level(AV_LOG_QUIET);
    Impl& w = *impl_;
    w.path = path;
    w.H = H;
    w.W = W;
    w.tmp = path + ".tmp." + std::to_string(::getpid());
    int ret = avformat_alloc_output_context2(&w.oc, nullptr, "mp4", w.tmp.c_str());
    if (ret < 0 || !w.oc) fail(path, ": cannot set up the MP4 muxer: ", av_error(ret));
    const AVCodec* codec = avcodec_find_encoder_by_name("libx264");
    if (!codec) fail(path, ": this FFmpeg build has no libx264 encoder");
    w.st = avformat_new_stream(w.oc, nullptr);
    w.enc.p = avcodec_alloc_context3(codec);
    if (!w.st || !w.enc.p) fail(path, ": out of memory setting up the encoder");
    const AVRational rate = av_d2q(opts.fps, 100000);
    w.enc.p->width = static_cast<int>(W);
    w.enc.p->height = static_cast<int>(H);
    w.enc.p->pix_fmt = AV_PIX_FMT_YUV420P;
    w.enc.p->time_base = av_inv_q(rate);
    w.enc.p->framerate = rate;
    w.enc.p->color_range = AVCOL_RANGE_MPEG;
    w.enc.p->colorspace = AVCOL_SPC_BT709;
    w.enc.p->color_primaries = AVCOL_PRI_BT709;
    w.enc.p->color_trc = AVCOL_TRC_BT709;
    if (opts.keyint > 0) w.enc.p->gop_size = opts.keyint;
    if (w.oc->oformat->flags & AVFMT_GLOBALHEADER) w.enc.p->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
    av_opt_set(w.enc.p->priv_data, "crf", std::to_string(opts.crf).c_str(), 0);
    av_opt_set(w.enc.p->priv_data, "preset", "medium", 0);
    ret = avcodec_open2(w.enc.p, codec, nullptr);
    if (ret < 0) fail(path, ": cannot open the libx264 encoder: ", av_error(ret));
    ret = avcodec_parameters_from_context(w.st->codecpar, w.enc.p);
    if (ret < 0) fail(path, ": cannot copy the encoder parameters: ", av_error(ret));
    w.st->time_base = w.enc.p->time_base;
    w.st->avg_frame_rate = rate;
    for (const auto& [k, v] : opts.metadata) av_dict_set(&w.oc->metadata, k.c_str(), v.c_str(), 0);
    ret = avio_open(&w.oc->pb, w.tmp.c_str(), AVIO_FLAG_WRITE);
    if (ret < 0) fail(path, ": cannot create ", w.tmp, ": ", av_error(ret));
    AVDictionary* mux_opts = nullptr;
    av_dict_set(&mux_opts, "movflags", "use_metadata_tags", 0);  // keep arbitrary keys (prompt..)
    ret = avformat_write_header(w.oc, &mux_opts);
    av_dict_free(&mux_opts);
    if (ret < 0) fail(path, ": cannot write the MP4 header: ", av_error(ret));

    w.sws.p = sws_getContext(static_cast<int>(W), static_cast<int>(H), AV_PIX_FMT_RGB24,
                             static_cast<int>(W), static_cast<int>(H), AV_PIX_FMT_YUV420P,
                             SWS_BICUBIC, nullptr, nullptr, nullptr);
    if (!w.sws.p) fail(path, ": cannot set up the RGB to YUV conversion");
    // RGB (full range) to BT.709 limited-range YUV, matching the tags above.
    sws_setColorspaceDetails(w.sws.p, sws_getCoefficients(SWS_CS_ITU709), 1,
                             sws_getCoefficients(SWS_CS_ITU709), 0, 0, 1 << 16, 1 << 16);
    w.yuv.p->format = AV_PIX_FMT_YUV420P;
    w.yuv.p->width = static_cast<int>(W);
    w.yuv.p->height = static_cast<int>(H);
    ret = av_frame_get_buffer(w.yuv.p, 0);
    if (ret < 0) fail(path, ": out of memory for a frame");
}

Mp4Writer::~Mp4Writer() = default;

int64_t Mp4Writer::frames_written() const { return impl_->written; }

void Mp4Writer::write(const float* frames, int64_t n) {
    Impl& w = *impl_;
    if (w.committed) fail(w.path, ": frames written after finish()");
    const int64_t H = w.H, W = w.W;
    for (int64_t t = 0; t < n; ++t) {
        const ImageRGB8 rgb = frame_to_rgb8(frames, n, H, W, t);
        int ret = av_frame_make_writable(w.yuv.p);
        if (ret < 0) fail(w.path, ": out of memory for a frame");
        // A padded, aligned copy: swscale's SIMD input readers may read past a line's end.
        const int stride = (static_cast<int>(W) * 3 + 63) / 64 * 64;
        w.padded.resize(static_cast<size_t>(stride) * static_cast<size_t>(H) + 256);
        for (int64_t y = 0; y < H; ++y)
            std::memcpy(w.padded.data() + static_cast<size_t>(stride * y),
                        rgb.row(static_cast<int>(y)), static_cast<size_t>(W) * 3);
        const uint8_t* src[4] = {w.padded.data(), nullptr, nullptr, nullptr};
        const int src_stride[4] = {stride, 0, 0, 0};
        sws_scale(w.sws.p, src, src_stride, 0, static_cast<int>(H), w.yuv.p->data,
                  w.yuv.p->linesize);
        w.yuv.p->pts = w.written++;
        ret = avcodec_send_frame(w.enc.p, w.yuv.p);
        if (ret < 0) fail(w.path, ": H.264 encoding failed: ", av_error(ret));
        w.drain();
    }
}

void Mp4Writer::finish() {
    Impl& w = *impl_;
    if (w.committed) return;
    if (w.written == 0) fail(w.path, ": no frames to write");
    avcodec_send_frame(w.enc.p, nullptr);
    w.drain();
    int ret = av_write_trailer(w.oc);
    if (ret < 0) fail(w.path, ": cannot finish the MP4: ", av_error(ret));
    if (w.oc->pb->error < 0) fail(w.path, ": write failed: ", av_error(w.oc->pb->error));
    ret = avio_closep(&w.oc->pb);
    if (ret < 0) fail(w.path, ": write failed: ", av_error(ret));
    const int fd = ::open(w.tmp.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0 || ::fsync(fd) != 0) {
        if (fd >= 0) ::close(fd);
        fail(w.path, ": cannot flush ", w.tmp, ": ", std::strerror(errno));
    }
    ::close(fd);
    if (::rename(w.tmp.c_str(), w.path.c_str()) != 0)
        fail(w.path, ": cannot rename ", w.tmp, ": ", std::strerror(errno));
    w.committed = true;
}

void write_mp4(const std::string& path, const float* frames, int64_t T, int64_t H, int64_t W,
               const VideoWriteOptions& opts) {
    if (T <= 0 || H <= 0 || W <= 0 || H % 2 || W % 2 || H > 16384 || W > 16384)
        fail(path, ": cannot encode frames of [3, ", T, ", ", H, ", ", W,
             "] (H.264 4:2:0 needs a positive, even height and width)");
    Mp4Writer w(path, H, W, opts);
    w.write(frames, T);
    w.finish();
}

bool video_support_built() { return true; }

#else  // !LANCET_WITH_FFMPEG

struct VideoReader::Impl {};

VideoReader::VideoReader(const std::string& path, const VideoReadOptions&) {
    fail(path, ": video input needs FFmpeg (this build has LANCET_WITH_FFMPEG=OFF)");
}
VideoReader::~VideoReader() = default;
const VideoInfo& VideoReader::info() const {
    static VideoInfo none;
    return none;
}
int64_t VideoReader::frames_decoded() const { return 0; }
void VideoReader::read_frames(const std::vector<int64_t>&,
                              const std::function<void(size_t, const ImageRGB8&)>&) {}
void write_mp4(const std::string& path, const float*, int64_t, int64_t, int64_t,
               const VideoWriteOptions&) {
    fail(path, ": MP4 output needs FFmpeg (this build has LANCET_WITH_FFMPEG=OFF)");
}
struct Mp4Writer::Impl {};
Mp4Writer::Mp4Writer(const std::string& path, int64_t, int64_t, const VideoWriteOptions&) {
    fail(path, ": MP4 output needs FFmpeg (this build has LANCET_WITH_FFMPEG=OFF)");
}
Mp4Writer::~Mp4Writer() = default;
void Mp4Writer::write(const float*, int64_t) {}
void Mp4Writer::finish() {}
int64_t Mp4Writer::frames_written() const { return 0; }
bool video_support_built() { return false; }

#endif

}  // namespace lancet
