"""Decoding: every mode becomes correct 8-bit RGB; bad files give a reason, never a crash."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from transferkit.errors import ImageDecodeError
from transferkit.data.decode import load_rgb


def png_rgb16(path, rgb16: np.ndarray) -> None:
    """Write a 16-bit-per-channel RGB PNG (Pillow cannot write one)."""
    h, w, _ = rgb16.shape
    raw = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_16bit_grayscale_png(tmp_path):
    p = tmp_path / "g16.png"
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(p)
    arr = np.asarray(load_rgb(p))
    assert arr.dtype == np.uint8 and arr.shape == (8, 8, 3)
    assert np.all(arr == round(40000 / 257))


def test_16bit_rgb_png(tmp_path):
    p = tmp_path / "rgb16.png"
    png_rgb16(p, np.stack([np.full((4, 5), v, np.uint16) for v in (65535, 32896, 0)], axis=-1))
    arr = np.asarray(load_rgb(p))
    assert arr.shape == (4, 5, 3)
    assert tuple(arr[0, 0]) == (255, 128, 0)


def test_exif_rotation_applied(tmp_path):
    p = tmp_path / "rot.jpg"
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    img.save(p, exif=exif)
    assert load_rgb(p).size == (20, 40)


def test_grayscale(tmp_path):
    p = tmp_path / "g.png"
    Image.new("L", (6, 6), 77).save(p)
    assert tuple(np.asarray(load_rgb(p))[0, 0]) == (77, 77, 77)


def test_palette_with_alpha_composited_on_white(tmp_path):
    p = tmp_path / "pal.png"
    img = Image.new("P", (6, 6), 0)
    img.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 black (transparent), 1 blue
    img.paste(1, (0, 0, 3, 6))
    img.save(p, transparency=0)
    arr = np.asarray(load_rgb(p))
    assert tuple(arr[0, 0]) == (0, 0, 255)  # opaque blue stays blue
    assert tuple(arr[0, 5]) == (255, 255, 255)  # transparent becomes white, not black


def test_rgba_alpha(tmp_path):
    p = tmp_path / "a.png"
    Image.new("RGBA", (4, 4), (10, 20, 30, 0)).save(p)
    assert tuple(np.asarray(load_rgb(p))[0, 0]) == (255, 255, 255)


def test_cmyk_jpeg(tmp_path):
    p = tmp_path / "c.jpg"
    Image.new("RGB", (16, 16), (200, 30, 40)).convert("CMYK").save(p, quality=95)
    arr = np.asarray(load_rgb(p)).astype(int)
    assert load_rgb(p).mode == "RGB"
    assert np.abs(arr[8, 8] - [200, 30, 40]).max() < 12


def test_content_not_extension(tmp_path):
    p = tmp_path / "really_a_png.jpg"
    Image.new("RGB", (5, 5), (1, 2, 3)).save(p, format="PNG")
    assert tuple(np.asarray(load_rgb(p))[0, 0]) == (1, 2, 3)


@pytest.mark.parametrize("fmt", ["BMP", "GIF", "WEBP", "TIFF"])
def test_other_formats(tmp_path, fmt):
    p = tmp_path / f"x.{fmt.lower()}"
    Image.new("RGB", (8, 8), (0, 128, 255)).save(p, format=fmt)
    assert load_rgb(p).size == (8, 8)


def test_bad_files_give_reasons(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(good, "JPEG")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    reasons = {}
    for p in (empty, text, truncated):
        with pytest.raises(ImageDecodeError) as exc:
            load_rgb(p)
        reasons[p.name] = exc.value.reason
    assert "empty" in reasons["empty.jpg"]
    assert "not an image" in reasons["notes.jpg"]
    assert "truncated" in reasons["cut.jpg"]


def test_decompression_bomb_refused(tmp_path, monkeypatch):
    p = tmp_path / "big.png"
    Image.new("L", (200, 200)).save(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100)
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        load_rgb(p)


def test_draft_mode_keeps_short_side(tmp_path):
    p = tmp_path / "large.jpg"
    Image.new("RGB", (1200, 900), (9, 9, 9)).save(p)
    img = load_rgb(p, min_short_side=256)
    assert min(img.size) >= 256 and img.size[0] < 1200
