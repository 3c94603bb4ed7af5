"""Image intake: decide by content whether IMM will accept a file, and make its safe derivatives.

IMM's limits (CreateImageModerationTask, "Image requirements"):
- PNG, JPG/JPEG, BMP, GIF and WEBP only; at most 20 MB;
- width and height at most 30,000 px and at most 250,000,000 pixels;
- GIF: at most 4,194,304 pixels in total and 30,000 px a side.

How a GIF's total pixels are counted. A GIF is a canvas (the "logical screen") that every frame
is drawn onto; a frame may not be larger than the canvas in a well-formed file, but decoders grow
the canvas when one is. We count the pixels of that canvas: the logical screen, widened to cover
any frame that sticks out of it. We do not sum over frames: "total pixels" in IMM's general rule
means width x height, IMM samples a GIF's frames (Interval, MaxFrames) rather than reading all of
them, and 4,194,304 is exactly 2048 x 2048, a canvas size. Per-canvas is the reading under which
a GIF that IMM decodes frame by frame stays within the stated bound.

Order of checks: size, then the header (format and dimensions, read without decoding any pixel),
then structure (GIF blocks, PNG chunks and CRCs, the WEBP RIFF length, a BMP's pixel array against
its header), and only then a decode of the first frame to catch truncated or corrupt data. A
decompression bomb is refused at the header. A WEBP's canvas size and RIFF length are read from
its bytes before Pillow opens it: libwebp allocates the whole canvas when its decoder is created,
which Pillow does on open.

Decoding is bounded in memory. A baseline JPEG is decoded reduced (libjpeg's DCT scaling, Pillow's
draft mode), at most a few megapixels whatever its size. Other formats are decoded whole or not
at all: above DECODE_MAX_PIXELS (WEBP_DECODE_MAX_PIXELS for WEBP) the image keeps the structural
checks, is accepted for IMM (which has its own, larger limits) and is stored without a preview.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import struct
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO

from PIL import Image as PILImage
from PIL import ImageOps, UnidentifiedImageError

from .models import EXTENSIONS, LOW_RESOLUTION_SIDE

MAX_BYTES = 20 * 1024 * 1024
MAX_SIDE = 30_000
MAX_PIXELS = 250_000_000
MAX_GIF_PIXELS = 4_194_304
ACCEPTED = ("PNG", "JPEG", "BMP", "GIF", "WEBP")

PREVIEW_SIDE = 1600
THUMBNAIL_SIDE = 320

# The most pixels decoded at full size, for the check and for the previews. A decoded frame takes
# up to 4 bytes a pixel (RGBA, CMYK, 32-bit modes) and resizing an RGBA frame premultiplies a
# second full-size copy: 8 bytes a pixel, about 200 MB here (bench/decode_memory.py measures it).
# A progressive JPEG is decoded reduced, but libjpeg first keeps every DCT coefficient (2 bytes
# each, up to 4 a pixel): the same bound holds it. A baseline JPEG never reaches it.
DECODE_MAX_PIXELS = 25_000_000
# Pillow opens every WEBP with libwebp's animation decoder, which holds two RGBA canvases beside
# the decoded frame: about 15 bytes a pixel, measured.
WEBP_DECODE_MAX_PIXELS = 12_000_000

# We enforce IMM's pixel limits ourselves, from the header, before any decode (inspect below);
# Pillow's own guard would refuse legitimate images between 89M and 250M pixels, and would refuse
# bombs with its own message before we could say which of IMM's rules they break.
PILImage.MAX_IMAGE_PIXELS = None

_CHUNK = 1024 * 1024


class Refused(Exception):
    """A file IMM would not accept, with the rule it broke in plain words."""

    def __init__(self, rule: str, reason: str) -> None:
        super().__init__(reason)
        self.rule = rule
        self.reason = reason


@dataclass(frozen=True)
class Inspection:
    format: str
    width: int
    height: int
    frame_count: int
    byte_size: int
    sha256: str
    warnings: list[str] = field(default_factory=list)
    # False when the image is too large to decode within the budget: stored without previews.
    previewable: bool = True

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.format]


def decode_limit(format: str) -> int:
    """The most pixels of this format the server decodes at full size (see DECODE_MAX_PIXELS)."""
    return WEBP_DECODE_MAX_PIXELS if format == "WEBP" else DECODE_MAX_PIXELS


def _decodes_reduced(image: PILImage.Image) -> bool:
    """Whether libjpeg can decode this image scaled down without holding it whole first."""
    return image.format in ("JPEG", "MPO") and "progressive" not in image.info


def _draft_for_preview(image: PILImage.Image) -> None:
    # draft() picks the smallest DCT scale that keeps both sides at least the size asked for,
    # so ask for the preview's own size (the image fitted into PREVIEW_SIDE), not the box.
    width, height = image.size
    scale = min(1.0, PREVIEW_SIDE / max(width, height))
    image.draft(image.mode, (max(1, int(width * scale)), max(1, int(height * scale))))


def _n(value: int) -> str:
    return f"{value:,}"


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


def _size_and_digest(fp: BinaryIO) -> tuple[int, str]:
    # The size first, from the end of the file, so an oversized one is refused unread.
    total = fp.seek(0, io.SEEK_END)
    if total > MAX_BYTES:
        raise Refused(
            "max_bytes",
            f"is {_n(total)} bytes ({_megabytes(total)}); IMM accepts at most 20 MB "
            f"({_n(MAX_BYTES)} bytes)",
        )
    fp.seek(0)
    digest = hashlib.sha256()
    size = 0
    while chunk := fp.read(_CHUNK):
        size += len(chunk)
        if size > MAX_BYTES:  # the file grew while we read it
            raise Refused(
                "max_bytes", f"is larger than 20 MB ({_n(MAX_BYTES)} bytes), the most IMM accepts"
            )
        digest.update(chunk)
    fp.seek(0)
    return size, digest.hexdigest()


def _signature(head: bytes) -> str | None:
    """The accepted format whose signature `head` starts with, if any (BMP's "BM" is too weak)."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def _what_it_looks_like(head: bytes) -> str:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"%pdf"):
        return "it is a PDF document"
    if text.startswith((b"<!doctype html", b"<html")) or b"<body" in text or b"<head" in text:
        return "it looks like an HTML page"
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in text):
        return "it is an SVG drawing, which IMM does not accept"
    if text.startswith(b"<?xml") or text.startswith(b"<"):
        return "it looks like an XML or HTML document"
    if head.startswith(b"PK\x03\x04"):
        return "it is a ZIP archive"
    try:
        # Incremental, not final: `head` is the first 1024 bytes and may end inside a character.
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return "its content is not a recognisable image"
    return "it looks like a text file"


def _walk_gif(fp: BinaryIO) -> tuple[int, int, int]:
    """Walk a GIF's blocks without decoding: (canvas width, canvas height, frames).

    Raises Refused when the block structure is cut short or malformed.
    """
    fp.seek(0)
    data = fp.read()
    if len(data) < 13:
        raise Refused("truncated", "is truncated: the GIF header is incomplete")
    width, height, packed = struct.unpack_from("<HHB", data, 6)
    pos = 13
    if packed & 0x80:
        pos += 3 * (2 ** ((packed & 7) + 1))
    canvas_w, canvas_h, frames = width, height, 0

    def skip_sub_blocks(pos: int) -> int:
        while True:
            if pos >= len(data):
                raise Refused("truncated", "is truncated: its last GIF frame is cut short")
            size = data[pos]
            pos += 1 + size
            if size == 0:
                return pos

    while True:
        if pos >= len(data):
            raise Refused("truncated", "is truncated: it ends without the GIF trailer")
        marker = data[pos]
        if marker == 0x3B:  # trailer
            break
        if marker == 0x21:  # extension: label, then sub-blocks
            pos = skip_sub_blocks(pos + 2)
        elif marker == 0x2C:  # image descriptor
            if pos + 10 > len(data):
                raise Refused("truncated", "is truncated: a GIF frame header is cut short")
            left, top, w, h, fpacked = struct.unpack_from("<HHHHB", data, pos + 1)
            canvas_w, canvas_h = max(canvas_w, left + w), max(canvas_h, top + h)
            pos += 10
            if fpacked & 0x80:
                pos += 3 * (2 ** ((fpacked & 7) + 1))
            pos = skip_sub_blocks(pos + 1)  # after the LZW minimum code size byte
            frames += 1
        else:
            raise Refused("corrupt", f"is corrupt: unexpected byte 0x{marker:02x} in the GIF data")
    if frames == 0:
        raise Refused("corrupt", "is corrupt: the GIF contains no image")
    return canvas_w, canvas_h, frames


def _walk_png(fp: BinaryIO) -> None:
    """Check every PNG chunk's length and CRC, and that the file ends with IEND."""
    fp.seek(8)
    while True:
        header = fp.read(8)
        if len(header) < 8:
            raise Refused("truncated", "is truncated: the PNG data stops before its end marker")
        length, kind = struct.unpack(">I4s", header)
        body = fp.read(length)
        crc = fp.read(4)
        if len(body) < length or len(crc) < 4:
            raise Refused("truncated", "is truncated: a PNG chunk is cut short")
        if zlib.crc32(kind + body) != struct.unpack(">I", crc)[0]:
            name = kind.decode("latin-1")
            raise Refused("corrupt", f"is corrupt: the PNG {name} chunk fails its checksum")
        if kind == b"IEND":
            return


def _webp_canvas(head: bytes) -> tuple[int, int] | None:
    """A WEBP's canvas size from its first chunk (VP8X, VP8L or VP8), without decoding."""
    kind = head[12:16]
    if kind == b"VP8X" and len(head) >= 30:
        return (
            int.from_bytes(head[24:27], "little") + 1,
            int.from_bytes(head[27:30], "little") + 1,
        )
    if kind == b"VP8L" and len(head) >= 25 and head[20] == 0x2F:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8 " and len(head) >= 30 and head[23:26] == b"\x9d\x01\x2a":
        return (
            int.from_bytes(head[26:28], "little") & 0x3FFF,
            int.from_bytes(head[28:30], "little") & 0x3FFF,
        )
    return None


def _check_dimensions(detected: str, width: int, height: int) -> None:
    if width > MAX_SIDE or height > MAX_SIDE:
        raise Refused(
            "max_side",
            f"is {_n(width)} x {_n(height)} px; IMM accepts at most 30,000 px on a side",
        )
    pixels = width * height
    if detected == "GIF" and pixels > MAX_GIF_PIXELS:
        raise Refused(
            "gif_pixels",
            f"is a GIF of {_n(pixels)} pixels ({_n(width)} x {_n(height)}); IMM accepts GIFs "
            "of at most 4,194,304 pixels (2048 x 2048)",
        )
    if pixels > MAX_PIXELS:
        raise Refused(
            "max_pixels",
            f"has {_n(pixels)} pixels ({_n(width)} x {_n(height)}); IMM accepts at most "
            "250,000,000",
        )


def _check_webp_length(fp: BinaryIO, size: int) -> None:
    fp.seek(4)
    (riff_size,) = struct.unpack("<I", fp.read(4))
    if riff_size + 8 > size:
        raise Refused(
            "truncated",
            f"is truncated: the WEBP says it holds {_n(riff_size + 8)} bytes "
            f"but the file has {_n(size)}",
        )


def _walk_webp(fp: BinaryIO, size: int) -> int:
    """Walk a WEBP's RIFF chunks without decoding: the number of frames (ANMF chunks, or 1).

    Raises Refused when a chunk runs past the end of the file.
    """
    fp.seek(12)
    end = min(size, 8 + struct.unpack("<I", _at(fp, 4, 4))[0])
    pos, frames = 12, 0
    while pos + 8 <= end:
        fp.seek(pos)
        kind, length = struct.unpack("<4sI", fp.read(8))
        if pos + 8 + length > end:
            raise Refused("truncated", "is truncated: a WEBP chunk is cut short")
        frames += kind == b"ANMF"
        pos += 8 + length + (length & 1)
    fp.seek(0)
    return max(frames, 1)


def _at(fp: BinaryIO, offset: int, length: int) -> bytes:
    fp.seek(offset)
    return fp.read(length)


def _check_bmp_length(fp: BinaryIO, size: int) -> None:
    """An uncompressed BMP must hold its whole pixel array: offset + rows x padded row size."""
    header = _at(fp, 0, 34)
    fp.seek(0)
    if len(header) < 34 or struct.unpack_from("<I", header, 14)[0] < 40:
        return  # an OS/2 1.x header: Pillow's decode below checks it (such files are small)
    offset = struct.unpack_from("<I", header, 10)[0]
    width, height = struct.unpack_from("<ii", header, 18)
    bits, compression = struct.unpack_from("<HI", header, 28)
    if compression not in (0, 3, 6):  # RLE and embedded JPEG/PNG have no fixed length
        return
    row = (abs(width) * bits + 31) // 32 * 4
    needed = offset + row * abs(height)
    if needed > size:
        raise Refused(
            "truncated",
            f"is truncated: the BMP header says its pixels end at byte {_n(needed)} "
            f"but the file has {_n(size)}",
        )


def _check_jpeg_end(fp: BinaryIO, size: int) -> None:
    """A JPEG not decoded here must at least end with its end-of-image marker."""
    tail = _at(fp, max(0, size - 2), 2)
    fp.seek(0)
    if tail != b"\xff\xd9":
        raise Refused("truncated", "is truncated: the JPEG data stops before its end marker")


def inspect(fp: BinaryIO) -> Inspection:
    """Check a file against IMM's image requirements; raise Refused with the broken rule."""
    size, sha256 = _size_and_digest(fp)
    if size == 0:
        raise Refused("empty", "is empty (0 bytes)")
    head = fp.read(1024)
    fp.seek(0)
    signature = _signature(head)
    if signature == "WEBP":
        # Before Image.open, which creates libwebp's decoder and with it the whole canvas.
        canvas = _webp_canvas(head)
        if canvas:
            _check_dimensions("WEBP", *canvas)
        _check_webp_length(fp, size)
        fp.seek(0)
        if canvas and canvas[0] * canvas[1] > WEBP_DECODE_MAX_PIXELS:
            frames = _walk_webp(fp, size)
            return _inspection("WEBP", *canvas, frames, size, sha256, previewable=False)
    try:
        # Image.open reads the header only; no pixel is decoded here.
        image = PILImage.open(fp)
    except UnidentifiedImageError:
        if signature is not None:
            raise Refused(
                "corrupt",
                f"is corrupt: it starts like a {signature} image but its header is cut short "
                "or cannot be read",
            ) from None
        raise Refused(
            "format",
            f"is not an image IMM accepts: {_what_it_looks_like(head)}. "
            "IMM accepts PNG, JPEG, BMP, GIF and WEBP",
        ) from None
    except Exception as exc:  # Pillow raises many types for a header it cannot parse
        message = str(exc) or type(exc).__name__
        if "truncated" in message.lower():  # "Truncated File Read": the file ends in its header
            raise Refused(
                "truncated", f"is truncated: its image header is cut short ({message})"
            ) from None
        raise Refused(
            "corrupt", f"is corrupt: its image header cannot be read ({message})"
        ) from None

    with image:
        detected = "JPEG" if image.format == "MPO" else (image.format or "unknown")
        if detected not in ACCEPTED:
            raise Refused(
                "format",
                f"is a {detected} image; IMM accepts only PNG, JPEG, BMP, GIF and WEBP",
            )
        width, height = image.size
        frames = 1
        if detected == "GIF":
            width, height, frames = _walk_gif(fp)
        _check_dimensions(detected, width, height)
        if detected == "PNG":
            _walk_png(fp)  # a WEBP's RIFF length was checked before it was opened
        if detected == "BMP":
            _check_bmp_length(fp, size)
        if detected != "GIF":
            try:
                frames = int(getattr(image, "n_frames", 1))
            except Exception as exc:
                raise Refused("corrupt", f"is corrupt: its frames cannot be read ({exc})") from None
            if detected == "JPEG":
                frames = 1  # an MPO's extra pictures are previews; IMM checks the main picture
        fp.seek(0)
        previewable = _decodes_reduced(image) or width * height <= decode_limit(detected)
        if not previewable:
            if detected == "JPEG":
                _check_jpeg_end(fp, size)
            return _inspection(detected, width, height, frames, size, sha256, previewable=False)
        try:
            image.seek(0)
            if _decodes_reduced(image):
                _draft_for_preview(image)
            image.load()
        except Exception as exc:
            message = str(exc) or type(exc).__name__
            if "truncated" in message or isinstance(exc, EOFError):
                raise Refused("truncated", f"is truncated: {message}") from None
            raise Refused(
                "corrupt", f"is corrupt: its pixels cannot be decoded ({message})"
            ) from None

    return _inspection(detected, width, height, frames, size, sha256, previewable=True)


def _inspection(
    detected: str,
    width: int,
    height: int,
    frames: int,
    size: int,
    sha256: str,
    *,
    previewable: bool,
) -> Inspection:
    warnings = []
    if width < LOW_RESOLUTION_SIDE or height < LOW_RESOLUTION_SIDE:
        warnings.append(
            f"Low resolution ({width} x {height} px): IMM recommends at least 256 x 256, "
            "and detection may be less accurate."
        )
    if not previewable:
        warnings.append(no_preview_reason(detected, width, height))
    return Inspection(
        format=detected,
        width=width,
        height=height,
        frame_count=frames,
        byte_size=size,
        sha256=sha256,
        warnings=warnings,
        previewable=previewable,
    )


def no_preview_reason(format: str, width: int, height: int) -> str:
    """Why an image has no preview, in the words pages show."""
    pixels = width * height
    limit = decode_limit(format)
    if pixels <= limit:
        return "No preview is stored for this image."
    return (
        f"No preview: this image is {_n(width)} x {_n(height)} ({_n(pixels)} pixels), "
        f"more than the {_n(limit)} the server decodes for previews."
    )


@dataclass(frozen=True)
class Derivatives:
    preview: bytes
    thumbnail: bytes


def _encode(image: PILImage.Image, icc_profile: bytes | None) -> bytes:
    out = io.BytesIO()
    # A fresh info dict: no EXIF, XMP, GPS or comments survive into what pages show. The colour
    # profile stays (it describes colours, not the person or place) so wide-gamut photos look right.
    image.info = {}
    image.save(out, format="WEBP", quality=82, method=4, icc_profile=icc_profile or b"")
    return out.getvalue()


def make_derivatives(fp: BinaryIO) -> Derivatives | None:
    """A re-encoded preview and thumbnail (WEBP, first frame, orientation applied, no metadata).

    None when the image cannot be decoded within the budget (see DECODE_MAX_PIXELS): it is
    stored without them. The caller has checked the file with inspect() first.
    """
    fp.seek(0)
    head = fp.read(30)
    fp.seek(0)
    canvas = _webp_canvas(head) if _signature(head) == "WEBP" else None
    if canvas and canvas[0] * canvas[1] > WEBP_DECODE_MAX_PIXELS:
        return None  # not even opened: libwebp would allocate the canvas
    with PILImage.open(fp) as source:
        detected = "JPEG" if source.format == "MPO" else (source.format or "")
        if not _decodes_reduced(source) and source.width * source.height > decode_limit(detected):
            return None
        source.seek(0)
        icc_profile = source.info.get("icc_profile")
        if _decodes_reduced(source):
            # thumbnail() would ask draft mode for twice the size (its reducing gap): ask for
            # the preview's size, which is what keeps a 250-megapixel JPEG to a few megapixels.
            _draft_for_preview(source)
        source.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
        oriented = ImageOps.exif_transpose(source)
        mode = (
            "RGBA"
            if oriented.mode in ("RGBA", "LA", "PA") or "transparency" in oriented.info
            else "RGB"
        )
        preview = oriented.convert(mode)
    thumbnail = preview.copy()
    thumbnail.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    return Derivatives(
        preview=_encode(preview, icc_profile), thumbnail=_encode(thumbnail, icc_profile)
    )


# The blurred rendition keeps this many pixels on its longer side: colours and a rough layout,
# never a shape. It is made from the thumbnail, so it can hold no more than the thumbnail does.
BLURRED_SIDE = 12
_STAGE_GREY = (213, 218, 214)  # the pages' image background (#d5dad6), under transparent parts


def image_size(fp: BinaryIO) -> tuple[int, int]:
    """The pixel size of a stored rendition, from its header."""
    with PILImage.open(fp) as image:
        return image.size


def make_blurred(thumbnail: BinaryIO, *, size: tuple[int, int] | None = None) -> bytes:
    """What pages show until someone reveals the image: the thumbnail shrunk to BLURRED_SIDE
    pixels, then stretched smoothly to `size` (the thumbnail's own when None), as WEBP.

    The same size as the clear rendition it stands for, so revealing swaps one for the other
    without moving anything on the page.
    """
    with PILImage.open(thumbnail) as source:
        source.seek(0)
        rgba = source.convert("RGBA")
    target = size or rgba.size
    flat = PILImage.new("RGBA", rgba.size, (*_STAGE_GREY, 255))
    tiny = PILImage.alpha_composite(flat, rgba).convert("RGB")
    tiny.thumbnail((BLURRED_SIDE, BLURRED_SIDE), PILImage.Resampling.BOX)
    stretched = tiny.resize(target, PILImage.Resampling.BICUBIC)
    out = io.BytesIO()
    stretched.save(out, format="WEBP", quality=60, method=0)
    return out.getvalue()
