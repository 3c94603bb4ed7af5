"""The emulator's moderation verdicts: deterministic, local, and simple enough to predict.

It is not a classifier. It gives an ordinary mix of pass, review and block so the dashboard can
be exercised end to end, and the same bytes with the same parameters always get the same verdict.

1. Rules first (IMM_EMULATOR_RULES, `--rules`; see rules.example.json beside this module). A
   JSON list of rules; the first whose `match` fits wins, whatever the Scenes:

       {"match": {"key": "images/ab/*"}, "suggestion": "block", "categories": ["porn"],
        "rate": 99.5}
       {"match": {"sha256": "<64 hex digits>"}, "suggestion": "review", "categories": ["ad"]}

   `key` is an fnmatch glob over the object key (case-sensitive; `*` also crosses `/`), `sha256`
   the file's digest; a rule with both needs both. `suggestion` is pass, review or block;
   `categories` (required unless pass) name the labels, the first labelling every sampled frame;
   `rate` (0-100, default 99.0) is the confidence given to each frame; `manual_review` (pass or
   block, review rules only) is what IMM's own manual review concludes (below). "comment" is
   ignored.

2. Otherwise the content. Each sampled frame (below) is flattened onto white, scaled to 64x64
   (box filter) for the colour measures and to 128x128 greyscale (nearest neighbour, which keeps
   hard edges) for the text measure:
   - skin share: pixels passing both the RGB skin rule of Kovac et al. (R>95, G>40, B>20,
     max-min>15, |R-G|>15, R>G, R>B) and the YCbCr rule of Chai and Ngan (77<=Cb<=127,
     133<=Cr<=173);
   - red share: saturated, blood-like red pixels (R>=100, G<=0.45R, B<=0.45R);
   - text edges: the share of neighbouring pixel pairs that differ by 128 or more in brightness,
     counted only when the frame is "print-like": at least 85% of it near black (<64) or near
     white (>192), with at least 2% of each.

   | Scene     | Measure    | From | Full | Label  | Suggestion |
   |-----------|------------|------|------|--------|------------|
   | porn      | skin share | 0.40 | 0.90 | porn   | block      |
   | porn      | skin share | 0.15 | 0.40 | sexy   | review     |
   | terrorism | red share  | 0.25 | 0.75 | bloody | review     |
   | ad        | text edges | 0.06 | 0.30 | ad     | review     |
   | any       | otherwise  |      |      | normal | pass       |

   Only the Scenes asked for are measured (porn, terrorism and ad when Scenes is omitted, as IMM
   documents); porn is checked before sexy, so a frame gets at most one of them. `live` and
   `logo` are accepted and never find anything. Rate = 50 + 49.99 x (measure - From) /
   (Full - From), capped at 99.99 and rounded to two decimals. Typical outcomes: a landscape or
   a screenshot in colour passes; a close-up of a face reviews as sexy; a large area of skin
   tones blocks (so does a beach of sand or a pine table: skin rules are known for that); a red
   rose reviews as bloody; a page of black text or a QR code reviews as ad.

Frames. A GIF or animated WEBP is sampled at frames 0, Interval, 2 x Interval, ... and at most
MaxFrames of them (both default to 1, so only the first frame unless asked); a still image is one
frame. Long images are not split. Frames.TotalCount is the number checked. A frame's Label is its
worst finding (block before review, then the table's order), BlockFrames lists the frames that
are not normal with their Offset (frame index) and Rate, the image's Suggestion is its worst
frame's, and Categories lists every label found in any frame, in the table's order.
Categories is empty when the Suggestion is pass (IMM's documentation does not say whether
"normal" appears there; an empty list is the reading that needs no special case).

IMM's manual review. IMM documents that a `review` verdict is followed by a second notification
once a manual review has finished. With the emulator's manual review switched on
(IMM_EMULATOR_MANUAL_REVIEW, `--manual-review SECONDS`), every review verdict gets that second
word after the given seconds: the matching rule's `manual_review` if it has one, otherwise block
when a frame's rate is at least 75 and pass below. A block keeps the first verdict's Categories
and BlockFrames; a pass has none, as a first pass has none.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image as PILImage

SCENES = ("porn", "terrorism", "ad", "live", "logo")
DEFAULT_SCENES = ("porn", "terrorism", "ad")
SUGGESTIONS = ("pass", "review", "block")
_SEVERITY = {"pass": 0, "review": 1, "block": 2}
DEFAULT_RULE_RATE = 99.0
MANUAL_OUTCOMES = ("pass", "block")
MANUAL_BLOCK_RATE = 75.0  # manual review blocks a review verdict with a frame rated this or more

_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Threshold:
    scene: str
    measure: str
    start: float
    full: float
    label: str
    suggestion: str

    def rate(self, value: float) -> float:
        fraction = min(1.0, (value - self.start) / (self.full - self.start))
        return round(min(99.99, 50 + 49.99 * fraction), 2)


# The table in the module docstring; order matters (first match per scene and measure wins).
THRESHOLDS = (
    Threshold("porn", "skin", 0.40, 0.90, "porn", "block"),
    Threshold("porn", "skin", 0.15, 0.40, "sexy", "review"),
    Threshold("terrorism", "red", 0.25, 0.75, "bloody", "review"),
    Threshold("ad", "text", 0.06, 0.30, "ad", "review"),
)
_LABEL_ORDER = {t.label: i for i, t in enumerate(THRESHOLDS)}

COLOUR_SIDE = 64
TEXT_SIDE = 128
_PRINT_LIKE_SHARE = 0.85
_INK_AND_PAPER_SHARE = 0.02


class RulesError(ValueError):
    pass


@dataclass(frozen=True)
class Rule:
    suggestion: str
    categories: tuple[str, ...]
    rate: float
    key: str | None = None
    sha256: str | None = None
    manual_review: str | None = None

    def matches(self, key: str, sha256: str) -> bool:
        if self.key is not None and not fnmatch.fnmatchcase(key, self.key):
            return False
        return self.sha256 is None or self.sha256 == sha256.lower()


def parse_rules(data: Any, source: str = "rules") -> list[Rule]:
    """Rules from decoded JSON; RulesError naming the rule and the problem."""
    if not isinstance(data, list):
        raise RulesError(f"{source}: expected a JSON list of rules, got {type(data).__name__}")
    return [_parse_rule(item, f"{source}: rule {n}") for n, item in enumerate(data, start=1)]


def _parse_rule(item: Any, where: str) -> Rule:
    if not isinstance(item, dict):
        raise RulesError(f"{where}: expected an object")
    unknown = set(item) - {"match", "suggestion", "categories", "rate", "manual_review", "comment"}
    if unknown:
        raise RulesError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    match = item.get("match")
    if not isinstance(match, dict) or not match or set(match) - {"key", "sha256"}:
        raise RulesError(f'{where}: "match" must be {{"key": glob}} and/or {{"sha256": digest}}')
    key, sha256 = match.get("key"), match.get("sha256")
    if key is not None and (not isinstance(key, str) or not key):
        raise RulesError(f'{where}: "key" must be a non-empty glob')
    if sha256 is not None:
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256.lower()):
            raise RulesError(f'{where}: "sha256" must be 64 hex digits')
        sha256 = sha256.lower()
    suggestion = item.get("suggestion")
    if suggestion not in SUGGESTIONS:
        raise RulesError(f'{where}: "suggestion" must be pass, review or block')
    categories = item.get("categories", [])
    if not isinstance(categories, list) or not all(isinstance(c, str) and c for c in categories):
        raise RulesError(f'{where}: "categories" must be a list of labels')
    if suggestion != "pass" and not categories:
        raise RulesError(f"{where}: a {suggestion} rule needs at least one category")
    rate = item.get("rate", DEFAULT_RULE_RATE)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 100:
        raise RulesError(f'{where}: "rate" must be a number from 0 to 100')
    manual = item.get("manual_review")
    if manual is not None and manual not in MANUAL_OUTCOMES:
        raise RulesError(f'{where}: "manual_review" must be pass or block')
    if manual is not None and suggestion != "review":
        raise RulesError(f'{where}: "manual_review" is for review rules only')
    return Rule(
        suggestion, tuple(categories), float(rate), key=key, sha256=sha256, manual_review=manual
    )


def load_rules(path: str | Path) -> list[Rule]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RulesError(f"{path}: not valid JSON ({exc})") from None
    return parse_rules(data, str(path))


@dataclass(frozen=True)
class Measures:
    skin: float
    red: float
    text: float


@dataclass(frozen=True)
class Finding:
    label: str
    suggestion: str
    rate: float


@dataclass(frozen=True)
class FrameVerdict:
    offset: int
    findings: tuple[Finding, ...]

    @property
    def worst(self) -> Finding | None:
        if not self.findings:
            return None
        return max(
            self.findings,
            key=lambda f: (_SEVERITY[f.suggestion], -_LABEL_ORDER.get(f.label, -1)),
        )


@dataclass(frozen=True)
class Verdict:
    suggestion: str
    categories: list[str]
    frames: list[FrameVerdict]
    rule: int | None = None  # 1-based index of the rule that decided, if one did
    manual_review: str | None = None  # the deciding rule's manual review outcome, if it says

    def moderation_result(self, uri: str) -> dict[str, Any]:
        block_frames = []
        for frame in self.frames:
            if (worst := frame.worst) is not None and worst.suggestion != "pass":
                block_frames.append(
                    {"Label": worst.label, "Offset": frame.offset, "Rate": worst.rate}
                )
        return {
            "URI": uri,
            "Suggestion": self.suggestion,
            "Categories": self.categories,
            "Frames": {"TotalCount": len(self.frames), "BlockFrames": block_frames},
        }


def sample_offsets(frame_count: int, interval: int, max_frames: int) -> list[int]:
    """Frames 0, interval, 2 x interval, ... below frame_count, at most max_frames of them."""
    return list(range(0, max(frame_count, 1), max(interval, 1)))[: max(max_frames, 1)]


def _is_skin(r: int, g: int, b: int) -> bool:
    if not (r > 95 and g > 40 and b > 20 and r > g and r > b and abs(r - g) > 15):
        return False
    if max(r, g, b) - min(r, g, b) <= 15:
        return False
    cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return 77 <= cb <= 127 and 133 <= cr <= 173


def _is_blood_red(r: int, g: int, b: int) -> bool:
    return r >= 100 and g <= 0.45 * r and b <= 0.45 * r


def measure(frame: PILImage.Image) -> Measures:
    """The three measures of one RGB frame (see the module docstring)."""
    colour = frame.resize((COLOUR_SIDE, COLOUR_SIDE), PILImage.Resampling.BOX).tobytes()
    pixels = [(colour[i], colour[i + 1], colour[i + 2]) for i in range(0, len(colour), 3)]
    skin = sum(_is_skin(*p) for p in pixels) / len(pixels)
    red = sum(_is_blood_red(*p) for p in pixels) / len(pixels)

    side = TEXT_SIDE
    grey = frame.convert("L").resize((side, side), PILImage.Resampling.NEAREST).tobytes()
    dark = sum(v < 64 for v in grey) / len(grey)
    light = sum(v > 192 for v in grey) / len(grey)
    text = 0.0
    if dark + light >= _PRINT_LIKE_SHARE and min(dark, light) >= _INK_AND_PAPER_SHARE:
        edges = 0
        for y in range(side):
            row = grey[y * side : (y + 1) * side]
            edges += sum(abs(row[x] - row[x + 1]) >= 128 for x in range(side - 1))
            if y + 1 < side:
                below = grey[(y + 1) * side : (y + 2) * side]
                edges += sum(abs(a - b) >= 128 for a, b in zip(row, below, strict=True))
        text = edges / (2 * side * (side - 1))
    return Measures(skin=skin, red=red, text=text)


def findings(measures: Measures, scenes: Sequence[str]) -> tuple[Finding, ...]:
    found: list[Finding] = []
    decided: set[tuple[str, str]] = set()
    for threshold in THRESHOLDS:
        if threshold.scene not in scenes or (threshold.scene, threshold.measure) in decided:
            continue
        value = getattr(measures, threshold.measure)
        if value >= threshold.start:
            decided.add((threshold.scene, threshold.measure))
            found.append(Finding(threshold.label, threshold.suggestion, threshold.rate(value)))
    return tuple(found)


def _flatten(image: PILImage.Image) -> PILImage.Image:
    """The current frame as RGB, transparent areas shown over white."""
    rgba = image.convert("RGBA")
    canvas = PILImage.new("RGBA", rgba.size, (255, 255, 255, 255))
    canvas.alpha_composite(rgba)
    return canvas.convert("RGB")


def _frames(fp: BinaryIO, offsets: Sequence[int]) -> Iterator[tuple[int, PILImage.Image]]:
    fp.seek(0)
    with PILImage.open(fp) as image:
        if image.format in ("JPEG", "MPO"):
            # Decode at a reduced scale: the measures only look at 128 x 128 pixels.
            image.draft("RGB", (TEXT_SIDE, TEXT_SIDE))
        for offset in offsets:
            image.seek(offset)
            yield offset, _flatten(image)


def _by_rule(rule: Rule, number: int, offsets: Sequence[int]) -> Verdict:
    label = rule.categories[0] if rule.categories else "normal"
    finding = Finding(label, rule.suggestion, rule.rate)
    frames = [FrameVerdict(offset, (finding,)) for offset in offsets]
    return Verdict(
        rule.suggestion,
        list(rule.categories),
        frames,
        rule=number,
        manual_review=rule.manual_review,
    )


def moderate(
    fp: BinaryIO,
    *,
    key: str,
    sha256: str,
    frame_count: int,
    scenes: Sequence[str],
    interval: int = 1,
    max_frames: int = 1,
    rules: Sequence[Rule] = (),
) -> Verdict:
    """The verdict for one image that has already passed IMM's limits (intake.inspect)."""
    offsets = sample_offsets(frame_count, interval, max_frames)
    for number, rule in enumerate(rules, start=1):
        if rule.matches(key, sha256):
            return _by_rule(rule, number, offsets)
    frames = [
        FrameVerdict(offset, findings(measure(f), scenes)) for offset, f in _frames(fp, offsets)
    ]
    suggestion = "pass"
    labels: set[str] = set()
    for frame in frames:
        for finding in frame.findings:
            labels.add(finding.label)
            if _SEVERITY[finding.suggestion] > _SEVERITY[suggestion]:
                suggestion = finding.suggestion
    categories = sorted(labels, key=lambda label: _LABEL_ORDER[label])
    return Verdict(suggestion, categories, frames)


def manual_review_outcome(result: dict[str, Any], ruled: str | None = None) -> str:
    """What IMM's manual review concludes about a review verdict (see the module docstring)."""
    if ruled is not None:
        return ruled
    rates = [float(frame.get("Rate") or 0) for frame in result["Frames"]["BlockFrames"]]
    return "block" if rates and max(rates) >= MANUAL_BLOCK_RATE else "pass"


def reviewed_result(result: dict[str, Any], outcome: str) -> dict[str, Any]:
    """The ModerationResult of the second notification, after IMM's manual review."""
    block = outcome == "block"
    return {
        "URI": result["URI"],
        "Suggestion": outcome,
        "Categories": list(result["Categories"]) if block else [],
        "Frames": {
            "TotalCount": result["Frames"]["TotalCount"],
            "BlockFrames": list(result["Frames"]["BlockFrames"]) if block else [],
        },
    }
