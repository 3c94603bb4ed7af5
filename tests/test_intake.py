"""Intake against IMM's image rules, on real files generated in memory.

Each limit is tried at the limit (accepted) and one past it (refused with the rule's code, and a
reason that states the limit in plain words). Bombs are refused from their headers: the proof is
that Pillow's own allocator counts no new image and libwebp's decoder is never created.
tracemalloc is measured too, but it only sees Python's allocator, not Pillow's or libwebp's
(a 64 MB Image.new() is invisible to it), so on its own it would prove nothing about pixels.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import struct
import tracemalloc
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from PIL import Image, WebPImagePlugin

from moderation import intake, services

from .factories import (
    animated_bytes,
    gif_with_frame_at,
    gif_with_screen,
    image_bytes,
    jpeg_with_gps,
    jpeg_with_orientation,
    mpo_bytes,
    png_bomb,
    png_padded_to,
    webp_bomb,
)

MB = 1024 * 1024


def inspect(data: bytes) -> intake.Inspection:
    return intake.inspect(io.BytesIO(data))


def refusal(data: bytes) -> intake.Refused:
    with pytest.raises(intake.Refused) as caught:
        intake.inspect(io.BytesIO(data))
    return caught.value


def noisy(fmt: str, size: tuple[int, int] = (300, 260), seed: int = 1) -> bytes:
    """An image of random pixels, so that most of its bytes are pixel data, not header."""
    pixels = random.Random(seed).randbytes(size[0] * size[1] * 3)
    image = Image.frombytes("RGB", size, pixels)
    if fmt == "GIF":
        image = image.convert("P")
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def one_bit_png(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("1", size).save(out, format="PNG")
    return out.getvalue()


# --- Every accepted format ----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "GIF", "WEBP"])
def test_it_accepts_every_format_imm_reads_with_its_size_and_digest(fmt):
    data = image_bytes(fmt, size=(300, 260))

    info = inspect(data)

    assert info.format == fmt
    assert (info.width, info.height) == (300, 260)
    assert info.frame_count == 1
    assert info.byte_size == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert info.warnings == []


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_it_accepts_an_animated_image_and_counts_its_frames(fmt):
    info = inspect(animated_bytes(fmt, size=(64, 48), frames=3))

    assert info.format == fmt
    assert (info.width, info.height, info.frame_count) == (64, 48, 3)


def test_it_accepts_a_multi_picture_jpeg_from_a_phone_as_a_jpeg():
    try:
        data = mpo_bytes(size=(320, 260), pictures=2)
    except (KeyError, OSError, ValueError) as exc:
        pytest.skip(f"this Pillow cannot write MPO: {exc}")
    with Image.open(io.BytesIO(data)) as written:
        assert written.format == "MPO"  # it really is a multi-picture file

    info = inspect(data)

    assert info.format == "JPEG"
    assert info.extension == "jpg"
    assert (info.width, info.height) == (320, 260)
    assert info.frame_count == 1  # the extra pictures are previews; IMM checks the main one


# --- 20 MB --------------------------------------------------------------------------------------


def test_it_accepts_a_png_of_exactly_20_mb():
    data = png_padded_to(20 * MB)
    assert len(data) == 20 * MB

    info = inspect(data)

    assert info.format == "PNG"
    assert info.byte_size == 20 * MB


def test_it_refuses_a_png_one_byte_over_20_mb():
    data = png_padded_to(20 * MB + 1)

    refused = refusal(data)

    assert refused.rule == "max_bytes"
    assert "at most 20 MB" in refused.reason


def test_it_refuses_an_empty_file():
    refused = refusal(b"")

    assert refused.rule == "empty"
    assert "empty" in refused.reason


# --- 30,000 px a side ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(30_000, 1), (1, 30_000)])
def test_it_accepts_an_image_30000_px_on_a_side(size):
    info = inspect(one_bit_png(size))

    assert (info.width, info.height) == size


@pytest.mark.parametrize("size", [(30_001, 1), (1, 30_001)])
def test_it_refuses_an_image_one_pixel_over_30000_px_on_a_side(size):
    refused = refusal(one_bit_png(size))

    assert refused.rule == "max_side"
    assert "30,001" in refused.reason
    assert "at most 30,000 px on a side" in refused.reason


# --- 250,000,000 pixels -------------------------------------------------------------------------


def test_it_accepts_an_image_of_exactly_250_million_pixels():
    info = inspect(one_bit_png((25_000, 10_000)))

    assert info.width * info.height == 250_000_000


def test_it_refuses_the_smallest_image_over_250_million_pixels():
    # 250,000,001 has no factor pair within 30,000 px a side; 10,521 x 23,762 is the next size.
    refused = refusal(png_bomb(10_521, 23_762))

    assert refused.rule == "max_pixels"
    assert "250,000,002 pixels" in refused.reason
    assert "at most 250,000,000" in refused.reason


# --- GIF: 4,194,304 pixels of canvas ------------------------------------------------------------


@pytest.mark.parametrize("size", [(2048, 2048), (4096, 1024)])
def test_it_accepts_a_gif_of_exactly_the_gif_pixel_limit(size):
    info = inspect(image_bytes("GIF", size=size))

    assert (info.width, info.height) == size
    assert info.width * info.height == 4_194_304


def test_it_refuses_a_gif_one_column_over_the_gif_pixel_limit():
    refused = refusal(image_bytes("GIF", size=(2049, 2048)))

    assert refused.rule == "gif_pixels"
    assert "4,196,352 pixels" in refused.reason
    assert "at most 4,194,304 pixels" in refused.reason


def test_it_measures_a_gif_whose_frame_sticks_out_by_the_enlarged_canvas():
    data = gif_with_frame_at(screen=(100, 100), frame=(20, 10), offset=(90, 0))

    info = inspect(data)

    assert (info.width, info.height) == (110, 100)


def test_it_refuses_a_gif_whose_frame_pushes_its_canvas_over_the_gif_pixel_limit():
    data = gif_with_frame_at(screen=(2048, 2048), frame=(2048, 2048), offset=(1, 0))

    refused = refusal(data)

    assert refused.rule == "gif_pixels"
    assert "2,049 x 2,048" in refused.reason


def test_it_refuses_a_gif_over_30000_px_on_a_side_by_the_side_rule():
    refused = refusal(gif_with_screen(30_001, 1))

    assert refused.rule == "max_side"


# --- Decompression bombs ------------------------------------------------------------------------


@dataclass
class Allocations:
    python_peak: int = 0  # bytes, as tracemalloc sees them
    pillow_images: int = 0  # images created by Pillow's C allocator (each decode needs one)
    webp_decoders: int = 0  # libwebp decoders created (each allocates the whole canvas)


@contextmanager
def allocations(monkeypatch) -> Iterator[Allocations]:
    seen = Allocations()
    real_decoder = WebPImagePlugin._webp.WebPAnimDecoder

    def counting_decoder(data):
        seen.webp_decoders += 1
        return real_decoder(data)

    monkeypatch.setattr(WebPImagePlugin._webp, "WebPAnimDecoder", counting_decoder)
    images_before = Image.core.get_stats()["new_count"]
    already_tracing = tracemalloc.is_tracing()
    if not already_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        yield seen
    finally:
        seen.python_peak = tracemalloc.get_traced_memory()[1]
        if not already_tracing:
            tracemalloc.stop()
        seen.pillow_images = Image.core.get_stats()["new_count"] - images_before


BOMBS = {
    "png 100,000 x 100,000": (lambda: png_bomb(100_000, 100_000), "max_side"),
    "png 30,000 x 30,000": (lambda: png_bomb(30_000, 30_000), "max_pixels"),
    "gif screen 65,535 x 65,535": (lambda: gif_with_screen(65_535, 65_535), "max_side"),
    "webp canvas 16,383 x 16,383": (lambda: webp_bomb(16_383, 16_383), "max_pixels"),
}


@pytest.mark.parametrize("name", list(BOMBS))
def test_it_refuses_a_decompression_bomb_from_its_header_without_allocating_pixels(
    name, monkeypatch
):
    make, rule = BOMBS[name]
    data = make()
    assert len(data) < 1024  # a few hundred bytes that claim gigabytes of pixels

    with allocations(monkeypatch) as seen:
        refused = refusal(data)

    assert refused.rule == rule
    assert seen.pillow_images == 0
    assert seen.webp_decoders == 0
    assert seen.python_peak < 2 * MB


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_the_allocation_probes_do_see_an_ordinary_decode(fmt, monkeypatch):
    # Without this, "no allocation seen" above could mean the probes see nothing at all.
    with allocations(monkeypatch) as seen:
        inspect(image_bytes(fmt, size=(300, 260)))

    assert seen.pillow_images >= 1
    assert seen.webp_decoders == (1 if fmt == "WEBP" else 0)


# --- Files that are not an accepted image -------------------------------------------------------


def _zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("photo.jpg", "not really")
    return out.getvalue()


NOT_IMAGES = {
    "text": (b"Holiday notes\nDay 1: beach\n", "it looks like a text file"),
    "html": (
        b"<!DOCTYPE html>\n<html><head><title>x</title></head><body>hi</body></html>",
        "it looks like an HTML page",
    ),
    "pdf": (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n", "PDF"),
    "svg": (
        b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect/></svg>',
        "SVG drawing",
    ),
    "svg with an xml prolog": (
        b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"></svg>',
        "SVG drawing",
    ),
    "zip": (_zip(), "ZIP archive"),
    # 2 bytes, then 3-byte characters: the first 1024 bytes end inside a character.
    "utf-8 text over 1 KB": (b"ab" + "\u4f60\u597d".encode() * 400, "it looks like a text file"),
}


@pytest.mark.parametrize("kind", list(NOT_IMAGES))
def test_it_refuses_a_file_that_is_not_an_image_and_says_what_it_looks_like(kind):
    data, looks_like = NOT_IMAGES[kind]

    refused = refusal(data)

    assert refused.rule == "format"
    assert looks_like in refused.reason
    assert "IMM accepts PNG, JPEG, BMP, GIF and WEBP" in refused.reason


def test_it_refuses_a_tiff_image_by_name():
    refused = refusal(image_bytes("TIFF", size=(300, 260)))

    assert refused.rule == "format"
    assert refused.reason.startswith("is a TIFF image")


def test_a_text_file_named_jpg_is_refused_whatever_its_name(admin_user):
    result = services.ingest(
        fp=io.BytesIO(b"just some words\n"), filename="holiday.jpg", actor=admin_user
    )

    assert result.outcome == "refused"
    assert result.rule == "format"
    assert result.message.startswith("holiday.jpg is not an image IMM accepts: it looks like a")


# --- Truncated and corrupt files ----------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP", "BMP"])
def test_it_refuses_a_file_cut_short_in_its_pixel_data_as_truncated(fmt):
    data = noisy(fmt)

    refused = refusal(data[: len(data) * 3 // 4])

    assert refused.rule == "truncated"
    assert refused.reason.startswith("is truncated")


@pytest.mark.parametrize(
    ("fmt", "keep"), [("PNG", 12), ("PNG", 20), ("JPEG", 4), ("GIF", 10), ("WEBP", 14)]
)
def test_it_refuses_a_file_cut_inside_its_header_as_damaged_not_as_another_format(fmt, keep):
    refused = refusal(image_bytes(fmt, size=(300, 260))[:keep])

    assert refused.rule in {"truncated", "corrupt"}


def test_it_refuses_a_gif_that_holds_no_image_as_corrupt():
    header = gif_with_screen(10, 10)[:19]  # signature, screen and its 2-colour palette

    refused = refusal(header + b"\x3b")

    assert refused.rule == "corrupt"


def test_it_refuses_a_png_with_a_flipped_byte_in_its_pixel_data_as_corrupt():
    data = bytearray(noisy("PNG"))
    idat = data.index(b"IDAT")
    (length,) = struct.unpack(">I", data[idat - 4 : idat])
    data[idat + 4 + length // 2] ^= 0xFF

    refused = refusal(bytes(data))

    assert refused.rule == "corrupt"
    assert "IDAT" in refused.reason
    assert "checksum" in refused.reason


# --- Low resolution -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(1, 1), (255, 256), (256, 255)])
def test_it_accepts_an_image_under_256_px_with_a_low_resolution_warning(size):
    info = inspect(image_bytes("PNG", size=size))

    assert (info.width, info.height) == size
    assert len(info.warnings) == 1
    assert "Low resolution" in info.warnings[0]
    assert "256 x 256" in info.warnings[0]


def test_it_accepts_a_256_by_256_image_without_a_warning():
    assert inspect(image_bytes("PNG", size=(256, 256))).warnings == []


# --- Derivatives --------------------------------------------------------------------------------


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize(
    ("size", "preview", "thumbnail"),
    [((2000, 1000), (1600, 800), (320, 160)), ((100, 50), (100, 50), (100, 50))],
)
def test_derivatives_are_webp_and_fit_their_bounds_without_being_enlarged(size, preview, thumbnail):
    made = intake.make_derivatives(io.BytesIO(image_bytes("PNG", size=size)))

    assert (_open(made.preview).format, _open(made.preview).size) == ("WEBP", preview)
    assert (_open(made.thumbnail).format, _open(made.thumbnail).size) == ("WEBP", thumbnail)


def _jpeg_with_xmp() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (400, 300), (1, 2, 3)).save(
        out, format="JPEG", xmp=b'<x:xmpmeta xmlns:x="adobe:ns:meta/">secret</x:xmpmeta>'
    )
    return out.getvalue()


@pytest.mark.parametrize("source", [jpeg_with_gps, _jpeg_with_xmp])
def test_derivatives_carry_no_exif_gps_or_xmp(source):
    data = source()
    with Image.open(io.BytesIO(data)) as original:  # the source really carries metadata
        assert original.getexif() or "xmp" in original.info

    made = intake.make_derivatives(io.BytesIO(data))

    for derivative in (made.preview, made.thumbnail):
        image = _open(derivative)
        assert dict(image.getexif()) == {}
        assert not image.getexif().get_ifd(0x8825)  # GPSInfo
        assert "exif" not in image.info
        assert "xmp" not in image.info
        assert b"SecretCam" not in derivative
        assert b"secret" not in derivative


@pytest.mark.parametrize(
    ("size", "preview", "thumbnail"),
    [((400, 300), (300, 400), (240, 320)), ((4000, 3000), (1200, 1600), (240, 320))],
)
def test_derivatives_of_an_exif_rotated_jpeg_come_out_upright(size, preview, thumbnail):
    made = intake.make_derivatives(io.BytesIO(jpeg_with_orientation(size, orientation=6)))

    assert _open(made.preview).size == preview
    assert _open(made.thumbnail).size == thumbnail


def test_derivatives_keep_the_colour_profile_but_nothing_else():
    from PIL import ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    source = io.BytesIO()
    Image.new("RGB", (300, 300), (10, 200, 30)).save(source, format="JPEG", icc_profile=profile)
    derivatives = intake.make_derivatives(source)
    with Image.open(io.BytesIO(derivatives.preview)) as preview:
        assert preview.info.get("icc_profile") == profile
        assert not preview.getexif()


def test_the_size_refusal_gives_the_exact_byte_count():
    oversized = io.BytesIO(b"\x89PNG" + b"\0" * (intake.MAX_BYTES - 3))
    with pytest.raises(intake.Refused) as refused:
        intake.inspect(oversized)
    assert refused.value.reason == (
        "is 20,971,521 bytes (20.0 MB); IMM accepts at most 20 MB (20,971,520 bytes)"
    )


# --- Decoding is bounded in memory --------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def solid_png(width: int, height: int, pixel: bytes = b"\x80\x40\x20") -> bytes:
    """A valid PNG of one colour, compressed row by row: big in pixels, tiny in bytes and memory."""
    row = b"\x00" + pixel * width
    compressor = zlib.compressobj(4)  # about 0.45 MB for the issue's file, in under 2 s
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, {3: 2, 4: 6}[len(pixel)], 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def test_the_issues_12000_px_png_is_accepted_without_decoding_a_pixel(monkeypatch):
    data = solid_png(12_000, 12_000)
    assert len(data) < 1 * MB

    with allocations(monkeypatch) as seen:
        info = inspect(data)
        made = intake.make_derivatives(io.BytesIO(data))

    assert (info.width, info.height, info.previewable) == (12_000, 12_000, False)
    assert made is None
    assert seen.pillow_images == 0
    assert info.warnings == [
        "No preview: this image is 12,000 x 12,000 (144,000,000 pixels), more than the "
        "25,000,000 the server decodes for previews."
    ]


def test_an_image_at_the_decode_budget_is_decoded_and_one_over_it_is_not(monkeypatch):
    monkeypatch.setattr(intake, "DECODE_MAX_PIXELS", 20_000)
    at_budget = inspect(image_bytes("PNG", size=(200, 100)))
    over_budget = image_bytes("PNG", size=(201, 100))
    with allocations(monkeypatch) as seen:
        over = inspect(over_budget)

    assert at_budget.previewable
    assert not over.previewable
    assert seen.pillow_images == 0
    assert over.warnings[-1] == (
        "No preview: this image is 201 x 100 (20,100 pixels), more than the 20,000 the server "
        "decodes for previews."
    )


@pytest.mark.parametrize(
    ("name", "cut", "rule"),
    [("png without its end", 12, "truncated"), ("png with a bad checksum", -1, "corrupt")],
)
def test_a_png_over_the_budget_keeps_its_structural_checks(name, cut, rule, monkeypatch):
    monkeypatch.setattr(intake, "DECODE_MAX_PIXELS", 1_000)
    data = bytearray(image_bytes("PNG", size=(200, 100)))
    if cut == -1:
        data[-20] ^= 0xFF  # a byte of the last IDAT chunk
    else:
        del data[-cut:]

    with allocations(monkeypatch) as seen:
        refused = refusal(bytes(data))

    assert refused.rule == rule
    assert seen.pillow_images == 0


def test_a_bmp_over_the_budget_must_hold_the_pixels_its_header_promises(monkeypatch):
    monkeypatch.setattr(intake, "DECODE_MAX_PIXELS", 1_000)
    whole = image_bytes("BMP", size=(200, 100))

    with allocations(monkeypatch) as seen:
        assert not inspect(whole).previewable
        refused = refusal(whole[:-100])

    assert refused.rule == "truncated"
    assert refused.reason == (
        "is truncated: the BMP header says its pixels end at byte 60,054 but the file has 59,954"
    )
    assert seen.pillow_images == 0


def test_a_webp_over_its_budget_is_never_opened_and_its_frames_are_counted(monkeypatch):
    monkeypatch.setattr(intake, "WEBP_DECODE_MAX_PIXELS", 1_000)
    still = image_bytes("WEBP", size=(200, 100), lossless=True)
    animated = animated_bytes("WEBP", size=(64, 48), frames=3)

    with allocations(monkeypatch) as seen:
        one, three = inspect(still), inspect(animated)
        assert intake.make_derivatives(io.BytesIO(still)) is None

    assert (one.width, one.height, one.frame_count, one.previewable) == (200, 100, 1, False)
    assert (three.frame_count, three.previewable) == (3, False)
    assert seen.webp_decoders == 0
    assert seen.pillow_images == 0


def test_a_baseline_jpeg_over_the_budget_is_decoded_reduced_and_gets_its_preview(monkeypatch):
    monkeypatch.setattr(intake, "DECODE_MAX_PIXELS", 1_000)
    data = image_bytes("JPEG", size=(3_400, 1_700))
    decoded: list[tuple[int, int]] = []
    real_load = Image.Image.load

    def spy(self):
        if self.format == "JPEG":
            decoded.append(self.size)
        return real_load(self)

    monkeypatch.setattr(Image.Image, "load", spy)
    info = inspect(data)
    made = intake.make_derivatives(io.BytesIO(data))

    assert info.previewable
    assert made is not None
    assert _open(made.preview).size == (1600, 800)
    # libjpeg's DCT scaling: the JPEG is decoded at half size (1,700 x 850), never 3,400 x 1,700.
    assert decoded
    assert max(w * h for w, h in decoded) <= 1_700 * 850


def test_a_progressive_jpeg_over_the_budget_is_stored_without_a_preview_if_whole(monkeypatch):
    monkeypatch.setattr(intake, "DECODE_MAX_PIXELS", 1_000)
    data = image_bytes("JPEG", size=(200, 100), progressive=True)

    with allocations(monkeypatch) as seen:
        assert not inspect(data).previewable
        refused = refusal(data[:-50])

    assert refused.rule == "truncated"
    assert seen.pillow_images == 0


def test_a_stored_file_that_is_not_the_checked_bytes_is_replaced_and_logged(db, caplog):
    from django.core.files.storage import default_storage

    data = noisy("PNG")
    sha256 = hashlib.sha256(data).hexdigest()
    key = services.storage_key(sha256, "png")
    default_storage.save(key, io.BytesIO(data[:100]))  # what a crash mid-write leaves

    result = services.ingest(fp=io.BytesIO(data), filename="a.png", actor=None)

    assert result.outcome == "stored"
    with default_storage.open(key, "rb") as stored:
        assert stored.read() == data
    assert f"replacing {key}: it held 100 bytes" in caplog.text


def test_a_stored_file_that_matches_is_reused_without_a_rewrite(db):
    from django.core.files.storage import default_storage

    data = noisy("PNG", seed=7)
    sha256 = hashlib.sha256(data).hexdigest()
    key = services.storage_key(sha256, "png")
    default_storage.save(key, io.BytesIO(data))
    before = os.stat(default_storage.path(key))

    result = services.ingest(fp=io.BytesIO(data), filename="a.png", actor=None)

    after = os.stat(default_storage.path(key))
    assert result.outcome == "stored"
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert "replaced_files" not in result.image.audit_entries.get().detail
