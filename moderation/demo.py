# ruff: noqa: S311 - seeded drawing randomness, not security
"""A dozen sample images, drawn locally, that the emulator's detector sorts into pass, review and
block (see moderation/imm/emulator/detector.py): calm landscapes pass; large skin-tone areas block,
medium ones go to review as "sexy"; a blood-red splash reviews as "bloody"; a printed flyer
reviews as "ad"; an animated GIF with one skin-tone frame blocks on that frame."""

from __future__ import annotations

import io
import random

from PIL import Image, ImageDraw, ImageFilter

SKIN = (224, 172, 140)
BLOOD = (150, 18, 22)
SIZE = (640, 480)


def _landscape(seed: int) -> Image.Image:
    rng = random.Random(seed)
    sky = (rng.randint(90, 140), rng.randint(140, 180), rng.randint(190, 230))
    ground = (rng.randint(40, 90), rng.randint(100, 140), rng.randint(50, 90))
    image = Image.new("RGB", SIZE, sky)
    draw = ImageDraw.Draw(image)
    horizon = rng.randint(250, 330)
    draw.rectangle((0, horizon, SIZE[0], SIZE[1]), fill=ground)
    for _ in range(rng.randint(2, 5)):  # hills
        x = rng.randint(-100, SIZE[0])
        r = rng.randint(80, 200)
        shade = tuple(max(0, c - rng.randint(5, 25)) for c in ground)
        draw.ellipse((x, horizon - r // 2, x + 2 * r, horizon + r), fill=shade)
    sun = rng.randint(40, SIZE[0] - 80)
    draw.ellipse((sun, 40, sun + 50, 90), fill=(250, 240, 200))
    return image.filter(ImageFilter.GaussianBlur(1.5))


def _figure(share: float, seed: int) -> Image.Image:
    """A grey-blue room with one skin-tone shape covering about `share` of the picture."""
    rng = random.Random(seed)
    image = Image.new("RGB", SIZE, (88, 96, 112))
    draw = ImageDraw.Draw(image)
    area = share * SIZE[0] * SIZE[1]
    width = int((area * 0.75) ** 0.5)
    height = int(area / width / 0.785)  # an ellipse fills pi/4 of its box
    left = rng.randint(0, max(0, SIZE[0] - width))
    top = max(0, (SIZE[1] - height) // 2)
    draw.ellipse((left, top, left + width, top + height), fill=SKIN)
    return image


def _splash(seed: int) -> Image.Image:
    rng = random.Random(seed)
    image = Image.new("RGB", SIZE, (120, 120, 118))
    draw = ImageDraw.Draw(image)
    for _ in range(14):
        x, y, r = rng.randint(80, 560), rng.randint(80, 400), rng.randint(50, 110)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=BLOOD)
    return image


def _flyer() -> Image.Image:
    image = Image.new("RGB", SIZE, (252, 252, 250))
    draw = ImageDraw.Draw(image)
    rng = random.Random(7)
    y = 30
    while y < SIZE[1] - 30:
        x = 30
        while x < SIZE[0] - 60:
            word = rng.randint(12, 60)
            draw.rectangle((x, y, x + word, y + 9), fill=(10, 10, 10))
            for cut in range(x + 3, x + word, 6):
                draw.line((cut, y, cut, y + 9), fill=(252, 252, 250))
            x += word + 10
        y += 22
    return image


def _animated(seed: int) -> bytes:
    frames = [_landscape(seed + i).convert("P", palette=Image.Palette.ADAPTIVE) for i in range(4)]
    frames[2] = _figure(0.6, seed).convert("P", palette=Image.Palette.ADAPTIVE)
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=400)
    return out.getvalue()


def _encode(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **({"quality": 88} if fmt == "JPEG" else {}))
    return out.getvalue()


def samples() -> list[tuple[str, bytes]]:
    """(file name, bytes) for each sample, in upload order; the name says what to expect."""
    return [
        ("demo-01-meadow-pass.jpg", _encode(_landscape(1), "JPEG")),
        ("demo-02-valley-pass.png", _encode(_landscape(2), "PNG")),
        ("demo-03-figure-review.jpg", _encode(_figure(0.25, 3), "JPEG")),
        ("demo-04-hills-pass.webp", _encode(_landscape(4), "WEBP")),
        ("demo-05-figure-block.jpg", _encode(_figure(0.6, 5), "JPEG")),
        ("demo-06-splash-review.png", _encode(_splash(6), "PNG")),
        ("demo-07-coast-pass.jpg", _encode(_landscape(7), "JPEG")),
        ("demo-08-flyer-review.png", _encode(_flyer(), "PNG")),
        ("demo-09-figure-review.webp", _encode(_figure(0.3, 9), "WEBP")),
        ("demo-10-animation-block.gif", _animated(10)),
        ("demo-11-lake-pass.bmp", _encode(_landscape(11), "BMP")),
        ("demo-12-figure-block.png", _encode(_figure(0.7, 12), "PNG")),
    ]
