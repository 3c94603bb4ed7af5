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


def png_padded_to(total_bytes: int, size: tuple[int, int] = (1, 1)) -> bytes:
    """A valid PNG of exactly total_bytes, padded with a private ancillary `prVt` chunk.

    The chunk's CRC is correct, so decoders skip it and the file stays a well-formed PNG.
    """
    out = io.BytesIO()
    Image.new("L", size, 128).save(out, format="PNG")
    base = out.getvalue()
    padding = total_bytes - len(base) - 12  # a chunk adds length, type and CRC: 12 bytes
    if padding < 0:
        raise ValueError(f"a {size} PNG needs at least {len(base) + 12} bytes")
    after_ihdr = 8 + 25  # signature, then IHDR (4 length + 4 type + 13 data + 4 CRC)
    return base[:after_ihdr] + _png_chunk(b"prVt", b"\x00" * padding) + base[after_ihdr:]


def _gif_image_descriptor_offset(data: bytes) -> int:
    """Where the first image descriptor (0x2C) of a GIF starts, walking its blocks."""
    pos = 13
    if data[10] & 0x80:
        pos += 3 * 2 ** ((data[10] & 7) + 1)
    while data[pos] == 0x21:  # extension: introducer, label, sub-blocks up to a 0 size
        pos += 2
        while data[pos]:
            pos += 1 + data[pos]
        pos += 1
    if data[pos] != 0x2C:
        raise ValueError("no image descriptor where one was expected")
    return pos


def gif_with_frame_at(
    screen: tuple[int, int], frame: tuple[int, int], offset: tuple[int, int]
) -> bytes:
    """A real one-frame GIF whose frame (frame size, at offset) may stick out of its screen."""
    out = io.BytesIO()
    Image.new("RGB", frame, (10, 200, 30)).convert("P").save(out, format="GIF")
    data = bytearray(out.getvalue())
    data[6:10] = struct.pack("<HH", *screen)
    descriptor = _gif_image_descriptor_offset(bytes(data))
    data[descriptor + 1 : descriptor + 5] = struct.pack("<HH", *offset)
    return bytes(data)


def webp_bomb(width: int, height: int) -> bytes:
    """A few hundred bytes of animated WEBP whose canvas is width x height, with 1x1 frames.

    A WEBP decoder allocates the whole canvas (twice) when it is created, before any frame.
    """
    frames = [Image.new("RGB", (1, 1), (60 * i, 0, 0)) for i in range(2)]
    out = io.BytesIO()
    frames[0].save(out, format="WEBP", save_all=True, append_images=frames[1:], lossless=True)
    data = bytearray(out.getvalue())
    if data[12:16] != b"VP8X":
        raise ValueError("expected an extended (VP8X) WEBP")
    data[24:27] = (width - 1).to_bytes(3, "little")
    data[27:30] = (height - 1).to_bytes(3, "little")
    return bytes(data)


def jpeg_with_orientation(size: tuple[int, int] = (400, 300), orientation: int = 6) -> bytes:
    """A JPEG whose pixels are stored size wide but whose EXIF says to rotate them on display."""
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation: 6 means rotate 90 degrees clockwise to view
    out = io.BytesIO()
    Image.new("RGB", size, (30, 60, 90)).save(out, format="JPEG", exif=exif)
    return out.getvalue()


def mpo_bytes(size: tuple[int, int] = (320, 240), pictures: int = 2) -> bytes:
    """A multi-picture JPEG (MPO), as phones write for depth or stereo shots."""
    images = [Image.new("RGB", size, (20 * i, 90, 150)) for i in range(pictures)]
    out = io.BytesIO()
    images[0].save(out, format="MPO", save_all=True, append_images=images[1:])
    return out.getvalue()
