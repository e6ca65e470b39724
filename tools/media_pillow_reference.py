#!/usr/bin/python3
"""Pillow reference for Lancet's media preprocessing (Lance's loader + VideoTransform, spec §3.7).

Lance's transform, re-expressed with Pillow and numpy only (no torch): Image.open, P -> RGBA,
RGBA pasted onto white, convert("RGB"); the nearest of six buckets; torchvision's
RandomResizedCrop(scale=(1,1)) centre crop; Image.resize(BICUBIC); the centre crop to a multiple
of 28 (ViT) or 16 (VAE); x/255 then (x - mean) / std in float32.

  media_pillow_reference.py fixtures OUT_DIR   small synthetic inputs + Pillow outputs for the tests
                                               (and, when ../shared is there, Pillow's results on
                                               Lance's example images as CRC-32s and windows)
  media_pillow_reference.py compare LANCET IMG...  runs `LANCET preprocess` on every image, preset
                                                   and stream, prints the max abs differences
  media_pillow_reference.py compare-video LANCET VIDEO...  the same for videos (needs the ffmpeg CLI)

Run with Debian's python3-pil and python3-numpy (/usr/bin/python3).
"""
import io
import json
import math
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

PRESETS = {
    "image_256res": (256, 224), "video_192p": (256, 224), "image_512res": (512, 448),
    "image_768res": (768, 672), "video_360p": (480, 476), "video_480p": (640, 616),
}
RATIOS = ["21:9", "16:9", "4:3", "1:1", "3:4", "9:16"]
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def lance_open(path_or_file):
    image = Image.open(path_or_file)
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        bg = Image.new("RGB", image.size, (255, 255, 255))
        bg.paste(image, mask=image.split()[3])
        return bg
    return image.convert("RGB")


def buckets(resolution, stride=16):
    max_area = resolution ** 2
    out = []
    for name in RATIOS:
        w, h = (int(v) for v in name.split(":"))
        ar = w / h
        bw1 = round(math.sqrt(max_area * ar) / stride) * stride
        bh1 = round(bw1 / ar / stride) * stride
        bh2 = round(math.sqrt(max_area / ar) / stride) * stride
        bw2 = round(bh2 * ar / stride) * stride
        r1, r2 = bw1 / bh1, bw2 / bh2
        if abs(r1 - ar) < abs(r2 - ar):
            bw, bh = bw1, bh1
        elif abs(r1 - ar) > abs(r2 - ar):
            bw, bh = bw2, bh2
        elif abs(bw1 * bh1 - max_area) <= abs(bw2 * bh2 - max_area):
            bw, bh = bw1, bh1
        else:
            bw, bh = bw2, bh2
        out.append((bh, bw, bw / bh))
    return out


def crop_params(width, height, ratio):
    """torchvision RandomResizedCrop.get_params with scale (1, 1), ratio (r, r); offsets centred."""
    area = height * width
    aspect = float(np.exp(np.float32(math.log(ratio))))
    w = int(round(math.sqrt(area * aspect)))
    h = int(round(math.sqrt(area / aspect)))
    if not (0 < w <= width and 0 < h <= height):
        in_ratio = width / height
        if in_ratio < ratio:
            w, h = width, int(round(width / ratio))
        elif in_ratio > ratio:
            h, w = height, int(round(height * ratio))
        else:
            w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def lance_resize(img, preset, stream):
    """Returns the uint8 HxWx3 array after bucket resize and divisible crop."""
    res = PRESETS[preset][0 if stream == "vae" else 1]
    bks = buckets(res)
    r = img.width / img.height
    idx = int(np.argmin(np.abs(r - np.array([b[2] for b in bks]))))
    bh, bw, ratio = bks[idx]
    i, j, h, w = crop_params(img.width, img.height, ratio)
    out = img.crop((j, i, j + w, i + h)).resize((bw, bh), Image.BICUBIC)
    f = 16 if stream == "vae" else 28
    ch, cw = bh - bh % f, bw - bw % f
    top, left = int(round((bh - ch) / 2.0)), int(round((bw - cw) / 2.0))
    return np.asarray(out)[top:top + ch, left:left + cw, :]


def normalize(u8, stream):
    x = u8.astype(np.float32) / np.float32(255)
    mean = np.array(CLIP_MEAN if stream == "vit" else [0.5] * 3, np.float32)
    std = np.array(CLIP_STD if stream == "vit" else [0.5] * 3, np.float32)
    return ((x - mean) / std).transpose(2, 0, 1)  # [3, H, W]


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    e = header["pixels"]
    a, b = e["data_offsets"]
    return np.frombuffer(data[a:b], np.float32).reshape(e["shape"])


def compare(lancet, images):
    worst_u8 = 0
    worst_f = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for path in images:
            img = lance_open(path)
            for preset in ["image_768res", "image_512res", "video_480p", "image_256res"]:
                for stream in ["vit", "vae"]:
                    out, png = os.path.join(tmp, "p.safetensors"), os.path.join(tmp, "p.png")
                    for p in (out, png):
                        if os.path.exists(p):
                            os.remove(p)
                    subprocess.run([lancet, "-q", "preprocess", "--image", path, "--preset", preset,
                                    "--stream", stream, "--out", out, "--png", png],
                                   check=True, stdout=subprocess.DEVNULL)
                    ref = lance_resize(img, preset, stream)
                    got = np.asarray(Image.open(png).convert("RGB"))
                    assert got.shape == ref.shape, (path, preset, stream, got.shape, ref.shape)
                    d = int(np.abs(got.astype(int) - ref.astype(int)).max())
                    pix = read_safetensors(out)
                    want = normalize(ref, stream)
                    df = float(np.abs(pix[:, 0] - want).max())
                    if stream == "vit":
                        df = max(df, float(np.abs(pix[:, 1] - want).max()))
                    worst_u8, worst_f = max(worst_u8, d), max(worst_f, df)
                    print(f"{os.path.basename(path)} {preset} {stream} {got.shape[1]}x{got.shape[0]}"
                          f": max |u8 diff| {d}, max |pixels diff| {df:.3g}")
    print(f"WORST: max |u8 diff| {worst_u8} (of 255), max |pixels diff| {worst_f:.3g}")


def lance_indices(total, avg_fps, sample_fps=12, max_duration=6.0, temporal=4):
    """data/video/sampler/frames.py, one clip (0, total), assert_seconds=False."""
    try:
        fps = int(round(float(avg_fps)))
    except Exception:
        fps = 24
    duration = min(total / fps, max_duration)
    n = int(round(duration * sample_fps))
    n = n // temporal * temporal + 1 if n % temporal else n // temporal * temporal + 1 - temporal
    return np.linspace(0, total - 1, n, dtype=int).tolist()


def compare_video(lancet, videos):
    """Frames decoded by the ffmpeg CLI (the same libswscale conversion decord's filter graph
    does), sampled and transformed with Pillow, against `lancet preprocess --video`."""
    for path in videos:
        probe = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_packets",
                                "-show_entries", "stream=width,height,avg_frame_rate,nb_read_packets",
                                "-of", "json", path], check=True, capture_output=True, text=True)
        st = json.loads(probe.stdout)["streams"][0]
        w, h, total = st["width"], st["height"], int(st["nb_read_packets"])
        num, den = (int(v) for v in st["avg_frame_rate"].split("/"))
        raw = subprocess.run(["ffmpeg", "-v", "error", "-i", path, "-f", "rawvideo", "-pix_fmt",
                              "rgb24", "-vsync", "passthrough", "-"], check=True,
                             capture_output=True).stdout
        frames = np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3)
        idx = lance_indices(total, num / den if den else float("nan"))
        for preset, stream in [("image_768res", "vit"), ("video_480p", "vae")]:
            with tempfile.TemporaryDirectory() as tmp:
                out = os.path.join(tmp, "p.safetensors")
                subprocess.run([lancet, "-q", "preprocess", "--video", path, "--preset", preset,
                                "--stream", stream, "--out", out], check=True,
                               stdout=subprocess.DEVNULL)
                pix = read_safetensors(out)
            want = [normalize(lance_resize(Image.fromarray(frames[i]), preset, stream), stream)
                    for i in idx]
            if stream == "vit" and len(want) % 2:
                want.append(want[-1])
            want = np.stack(want, 1)
            assert pix.shape == want.shape, (pix.shape, want.shape)
            d = np.abs(pix - want).max()
            step = (np.float32(1) / np.float32(255)) / np.float32(0.26130258 if stream == "vit" else 0.5)
            print(f"{os.path.basename(path)} {preset} {stream} {total} frames decoded by ffmpeg "
                  f"({len(frames)}), {len(idx)} sampled, pixels {list(pix.shape)}: "
                  f"max |diff| {d:.3g} = {d / step:.2f} u8 steps")


def fixtures(out_dir):
    """Small synthetic inputs covering each decoder path, and Pillow's results for them."""
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(1234)
    h, w = 45, 61
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 4) % 256, (yy * 5) % 256, (xx + yy) * 2 % 256], -1).astype(np.int32)
    noise = rng.integers(-40, 41, size=(h, w, 3))
    rgb = np.clip(base + noise, 0, 255).astype(np.uint8)
    alpha = np.clip(xx * 5 - yy, 0, 255).astype(np.uint8)
    rgba = np.dstack([rgb, alpha])
    inputs = {}

    def save(name, im, **kw):
        bio = io.BytesIO()
        im.save(bio, **kw)
        path = os.path.join(out_dir, name)
        with open(path, "wb") as f:
            f.write(bio.getvalue())
        inputs[name] = path

    save("rgb.png", Image.fromarray(rgb), format="PNG")
    save("rgba.png", Image.fromarray(rgba, "RGBA"), format="PNG")
    pal = Image.fromarray(rgb).quantize(colors=16)
    pal.info["transparency"] = 3
    save("palette_trns.png", pal, format="PNG", transparency=3)
    save("gray.png", Image.fromarray(rgb[..., 0]), format="PNG")
    save("gray16.png", Image.fromarray((rgb[..., 1].astype(np.uint16) * 3)), format="PNG")
    save("la.png", Image.fromarray(np.dstack([rgb[..., 2], alpha]), "LA"), format="PNG")
    save("photo.jpg", Image.fromarray(rgb), format="JPEG", quality=90)
    save("gray.jpg", Image.fromarray(rgb[..., 0]), format="JPEG", quality=90)
    save("cmyk.jpg", Image.fromarray(rgb).convert("CMYK"), format="JPEG", quality=95)
    save("lossless_alpha.webp", Image.fromarray(rgba, "RGBA"), format="WEBP", lossless=True)
    save("lossy.webp", Image.fromarray(rgb), format="WEBP", quality=80)
    # Orientation 6 (rotate 90° clockwise to view); Lance ignores it, Lancet applies it by default.
    exif = Image.Exif()
    exif[0x0112] = 6
    save("exif6.jpg", Image.fromarray(rgb), format="JPEG", quality=90, exif=exif.tobytes())

    manifest = {"decode": {}, "resize": []}
    for name, path in sorted(inputs.items()):
        im = lance_open(path)
        ref = os.path.splitext(name)[0] + "_" + name.split(".")[-1] + ".ref.png"
        im.save(os.path.join(out_dir, ref))
        manifest["decode"][name] = ref
    # Resizes of the RGB fixture to sizes that up- and down-sample each axis by odd factors.
    src = lance_open(inputs["rgb.png"])
    for (ow, oh) in [(17, 11), (61, 20), (30, 45), (97, 73), (8, 128), (1, 1)]:
        name = f"resize_{ow}x{oh}.ref.png"
        src.resize((ow, oh), Image.BICUBIC).save(os.path.join(out_dir, name))
        manifest["resize"].append({"width": ow, "height": oh, "file": name})
    # What Lancet gives by default for the EXIF file: Pillow's own exif_transpose.
    from PIL import ImageOps
    ImageOps.exif_transpose(Image.open(inputs["exif6.jpg"])).convert("RGB").save(
        os.path.join(out_dir, "exif6_jpg.transposed.ref.png"))
    manifest["exif_transposed"] = {"exif6.jpg": "exif6_jpg.transposed.ref.png"}
    # A tiny VP9 WebM (12 frames at 10 fps) from the ffmpeg CLI, for the non-MP4 container path.
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc=size=32x24:rate=10:duration=1.2", "-c:v", "libvpx-vp9", "-b:v", "50k",
                    os.path.join(out_dir, "clip_vp9.webm")], check=True)
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)


def example_fixtures(out_dir, images):
    """For Lance's example images (not committed): Pillow's image_768res results as a CRC-32 of
    all bytes plus two 16x16 windows (top-left corner and centre) stored side by side."""
    import zlib
    table = {}
    for path in sorted(images):
        img = lance_open(path)
        name = os.path.basename(path)
        for stream in ["vit", "vae"]:
            ref = lance_resize(img, "image_768res", stream)
            h, w = ref.shape[:2]
            cy, cx = h // 2 - 8, w // 2 - 8
            win = np.concatenate([ref[:16, :16], ref[cy:cy + 16, cx:cx + 16]], 1)
            win_name = f"example_{os.path.splitext(name)[0]}_{stream}.win.png"
            Image.fromarray(np.ascontiguousarray(win)).save(os.path.join(out_dir, win_name))
            table[f"{name}:{stream}"] = {"height": h, "width": w,
                                         "crc32": zlib.crc32(ref.tobytes()), "windows": win_name}
    with open(os.path.join(out_dir, "lance_examples.json"), "w") as f:
        json.dump(table, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "fixtures":
        fixtures(sys.argv[2])
        shared = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                              "data", "lance-examples", "images")
        if os.path.isdir(shared):
            example_fixtures(sys.argv[2], [os.path.join(shared, f) for f in os.listdir(shared)])
    elif len(sys.argv) >= 4 and sys.argv[1] == "compare-video":
        compare_video(sys.argv[2], sys.argv[3:])
    elif len(sys.argv) >= 4 and sys.argv[1] == "compare":
        compare(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(__doc__)
