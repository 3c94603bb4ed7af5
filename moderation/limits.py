"""One length limit per kind of free text, shared by the form (maxlength), the service that
refuses longer text, the column that stores it and the audit entry that records it.

A person's words are never cut: a service refuses text over its limit with a message saying so.
Text the system writes (IMM's error messages, for example) is clipped with `clip` where it is
stored: audit.record does it for every audit reason.
"""

from __future__ import annotations

# What a person writes in their own words: a reject reason, an escalation note, the bulk reason.
WORDS_MAX = 500
# One category label: IMM's (e.g. "sexy"), a routing rule's, the category picked to reject.
CATEGORY_MAX = 64
# A routing rule's note ("why this category goes to a person").
RULE_NOTE_MAX = 200
# A reject reason is the picked category and the person's words, joined by this.
REASON_JOINER = " — "
# Any stored reason: a decision's, an audit entry's. The longest a person can give (a category
# and their words) fits whole, so nothing a person wrote is ever clipped on its way to the log.
REASON_MAX = CATEGORY_MAX + len(REASON_JOINER) + WORDS_MAX
ELLIPSIS = "…"
# The largest id or count a request may name: the database's 64-bit integers.
WHOLE_NUMBER_MAX = 2**63 - 1


def is_category(text: str) -> bool:
    """One category label, as IMM writes them: a single word of 1 to CATEGORY_MAX characters."""
    return 0 < len(text) <= CATEGORY_MAX and not any(c.isspace() for c in text)


def category_refused(example: str) -> str:
    """What a person is told when a category they typed is not one (`example`: a label to show)."""
    return f"A category is one word of at most {CATEGORY_MAX} characters, e.g. {example}."


class TooLong(ValueError):
    """Text over its limit, with a message that says which text and by how much."""

    def __init__(self, what: str, length: int, limit: int) -> None:
        super().__init__(
            f"The {what} is {length:,} characters long; it can be at most {limit:,}. "
            "Nothing was saved: shorten it and try again."
        )
        self.what, self.length, self.limit = what, length, limit


def check(text: str, *, limit: int, what: str) -> str:
    """`text` if it fits in `limit` characters; TooLong (never a cut) if it does not."""
    if len(text) > limit:
        raise TooLong(what, len(text), limit)
    return text


def clip(text: str, limit: int = REASON_MAX) -> str:
    """System-written text cut to `limit` characters, marked with an ellipsis when cut.

    Only for text no person typed (an IMM error message, a task status): a person's words go
    through `check` and are refused whole instead.
    """
    if len(text) <= limit:
        return text
    return text[: limit - len(ELLIPSIS)] + ELLIPSIS


def whole_number(raw: str) -> int | None:
    """`raw` as an id or count if it is ASCII digits that fit the database's integers, else None.

    Not str.isdigit() alone: it accepts "²", which int() refuses; the length first, because int()
    refuses more than 4,300 digits; and an id past 2**63 makes the database refuse the query.
    """
    longest = len(str(WHOLE_NUMBER_MAX))
    if raw.isascii() and raw.isdigit() and len(raw) <= longest and int(raw) <= WHOLE_NUMBER_MAX:
        return int(raw)
    return None
