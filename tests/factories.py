"""Real image files made in memory, for every format IMM accepts and some it refuses."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def image_bytes(
    fmt: str = "PNG",
    size: tuple[int, int] = (320, 240),
    color: tuple[int, int, int] = (90, 120, 150),
    **save: object,
) -> bytes:
    mode = "P" if fmt == "GIF" else "RGB"
    image = Image.new("RGB", size, color)
    if mode == "P":
        image = image.convert("P")
    out = io.BytesIO()
    image.save(out, format=fmt, **save)
    return out.getvalue()


def animated_bytes(fmt: str = "GIF", size: tuple[int, int] = (64, 48), frames: int = 3) -> bytes:
    images = [Image.new("RGB", size, (40 * i % 256, 80, 160)) for i in range(frames)]
    if fmt == "GIF":
        images = [im.convert("P") for im in images]
    out = io.BytesIO()
    images[0].save(out, format=fmt, save_all=True, append_images=images[1:], duration=100, loop=0)
    return out.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (1-bit greyscale, a few compressed rows).

    Decoding it would allocate width x height pixels; a header-first check never does.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (1 + (width + 7) // 8) * min(height, 4), 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def gif_with_screen(width: int, height: int) -> bytes:
    """A one-frame GIF with a logical screen of width x height and a 1x1 frame."""
    header = (
        b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    )
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return header + frame + b"\x3b"


def jpeg_with_gps() -> bytes:
    """A JPEG carrying EXIF with a GPS position and a camera make, to prove previews drop it."""
    image = Image.new("RGB", (400, 300), (200, 100, 50))
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"  # Make
    exif[0x8825] = {1: "N", 2: (51.0, 30.0, 0.0), 3: "W", 4: (0.0, 7.0, 0.0)}  # GPSInfo
    out = io.BytesIO()
    image.save(out, format="JPEG", exif=exif)
    return out.getvalue()
