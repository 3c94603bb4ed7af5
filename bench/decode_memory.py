"""Peak memory of checking an image and making its previews: `python bench/decode_memory.py`.

Makes a few images in a temporary folder (among them the issue's 12,000 x 12,000 PNG of about
0.6 MB, built row by row so that making it costs no memory), then, for each, starts a fresh
Python that sets Django up, reads its peak resident size (getrusage ru_maxrss), runs what an
upload runs on the bytes (intake.inspect, then intake.make_derivatives when a preview is made)
and reads the peak again. The difference is what the decoding cost at its worst.

    .venv/bin/python bench/decode_memory.py            # every case
    .venv/bin/python bench/decode_memory.py --keep DIR # keep (or reuse) the images in DIR

It measures the moderation/intake.py of the checkout it is run from (the current folder), so the
same script can measure another commit: `cd ../base && python /path/to/bench/decode_memory.py`.
Each image is made in a process of its own too: Linux carries a parent's peak resident size over
into a child it starts, so the parent stays small.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def solid_png(width: int, height: int, pixel: bytes) -> bytes:
    """A valid PNG of one colour (8-bit RGB or RGBA by len(pixel)), compressed row by row."""
    colour_type = {3: 2, 4: 6}[len(pixel)]
    row = b"\x00" + pixel * width
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(row) for _ in range(height)]
    parts.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", b"".join(parts))
        + _chunk(b"IEND", b"")
    )


def _pillow(fmt: str, size: tuple[int, int], mode: str = "RGB", **save: object) -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new(mode, size, (200, 120, 90))
    draw = ImageDraw.Draw(image)
    for i in range(0, size[0], max(1, size[0] // 40)):  # some structure, so encoders work
        draw.line([(i, 0), (size[0] - i, size[1])], fill=(i % 256, 60, 200), width=3)
    out = io.BytesIO()
    image.save(out, format=fmt, **save)
    return out.getvalue()


CASES = {
    "png-12000x12000-rgb (the issue's file)": lambda: solid_png(12_000, 12_000, b"\x80\x40\x20"),
    "png-12000x12000-rgba": lambda: solid_png(12_000, 12_000, b"\x80\x40\x20\xff"),
    "webp-9000x9000": lambda: _pillow("WEBP", (9_000, 9_000), quality=50),
    "jpeg-12000x12000-baseline": lambda: _pillow("JPEG", (12_000, 12_000), quality=80),
    "jpeg-12000x12000-progressive": lambda: _pillow(
        "JPEG", (12_000, 12_000), quality=80, progressive=True
    ),
    "png-5000x5000-rgba (at the budget)": lambda: solid_png(5_000, 5_000, b"\x80\x40\x20\xff"),
    "webp-3400x3400 (at the WEBP budget)": lambda: _pillow("WEBP", (3_400, 3_400), quality=50),
    "jpeg-6000x4000-progressive": lambda: _pillow(
        "JPEG", (6_000, 4_000), quality=80, progressive=True
    ),
    "jpeg-4000x3000 (a photo)": lambda: _pillow("JPEG", (4_000, 3_000), quality=85),
    "png-1600x1200 (a screenshot)": lambda: _pillow("PNG", (1_600, 1_200)),
    "gif-800x600": lambda: _pillow("GIF", (800, 600)),
}

CHILD = r"""
import io, json, os, resource, sys
sys.path.insert(0, os.getcwd())
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "moderation.settings")
os.environ.setdefault("SECRET_KEY", "bench-only-not-a-secret")
import django
django.setup()
from moderation import intake
data = open(sys.argv[1], "rb").read()
fp = io.BytesIO(data)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
outcome = "stored"
try:
    info = intake.inspect(fp)
except intake.Refused as refused:
    outcome = "refused: " + refused.reason
else:
    if getattr(info, "previewable", True):
        made = intake.make_derivatives(fp)
        outcome = f"stored with a preview of {len(made.preview):,} bytes"
    else:
        outcome = "stored without a preview (over the decode budget)"
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before_kb": before, "after_kb": after, "outcome": outcome}))
"""


def measure(path: Path) -> dict[str, object]:
    done = subprocess.run(  # noqa: S603 - this interpreter, our own code
        [sys.executable, "-c", CHILD, str(path)],
        cwd=Path.cwd(),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]}
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--keep", type=Path, help="make (or reuse) the images in this folder")
    parser.add_argument("--only", help="run only the cases whose name contains this")
    parser.add_argument("--make", nargs=2, metavar=("CASE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make:
        Path(args.make[1]).write_bytes(CASES[args.make[0]]())
        return
    folder = args.keep or Path(tempfile.mkdtemp(prefix="decode-memory-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"checkout: {Path.cwd()}  python: {sys.version.split()[0]}")
    print(f"{'image':40} {'file':>10} {'peak before':>12} {'peak after':>11} {'cost':>9}  outcome")
    for name in CASES:
        if args.only and args.only not in name:
            continue
        path = folder / (re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") + ".bin")
        if not path.exists():
            make = [sys.executable, __file__, "--make", name, str(path)]
            subprocess.run(make, check=True)  # noqa: S603 - this script, in a process of its own
        result = measure(path)
        size = f"{path.stat().st_size / 1e6:.2f} MB"
        if "error" in result:
            print(f"{name:40} {size:>10}  failed: {result['error']}")
            continue
        before, after = int(result["before_kb"]), int(result["after_kb"])  # type: ignore[call-overload]
        print(
            f"{name:40} {size:>10} {before / 1024:>9.0f} MB {after / 1024:>8.0f} MB "
            f"{(after - before) / 1024:>6.0f} MB  {result['outcome']}"
        )
    if not args.keep:
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()


if __name__ == "__main__":
    main()
