"""ACS3-HMAC-SHA256, the signature Alibaba Cloud's OpenAPI gateway checks (signature V3).

Pure functions with no I/O: the IMM client signs with them and the local emulator verifies with
them, so both ends agree byte for byte. REFERENCE.md section 2 is the specification; the test
suite reproduces every request in tests/data/signature_vectors.json, signed by Alibaba's SDK.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

ALGORITHM = "ACS3-HMAC-SHA256"
EMPTY_BODY_SHA256 = hashlib.sha256(b"").hexdigest()


def pct(value: str) -> str:
    """RFC 3986 percent-encoding of UTF-8: only A-Z a-z 0-9 - _ . ~ stay as they are."""
    return quote(value, safe="~")


def to_json(value: Any) -> str:
    """How the SDK serialises JSON-valued parameters: compact, raw UTF-8, key order kept."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def canonical_query(params: Mapping[str, str]) -> str:
    """Sorted key=pct(value) pairs joined with &; the exact query string that is sent."""
    return "&".join(f"{key}={pct(params[key])}" for key in sorted(params))


def canonical_headers(headers: Mapping[str, str], names: Iterable[str]) -> tuple[str, str]:
    """(CanonicalHeaders, SignedHeaders) for the named headers, names lower-cased and sorted."""
    lowered: dict[str, list[str]] = {}
    for name, value in headers.items():
        lowered.setdefault(name.lower(), []).append(value.strip())
    wanted = sorted({name.lower() for name in names})
    lines = "".join(f"{name}:{','.join(sorted(lowered.get(name, [''])))}\n" for name in wanted)
    return lines, ";".join(wanted)


@dataclass(frozen=True)
class Signature:
    canonical_request: str
    string_to_sign: str
    signature: str
    signed_headers: str
    authorization: str


def sign(
    *,
    method: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    signed_header_names: Iterable[str],
    access_key_id: str,
    access_key_secret: str,
    body: bytes = b"",
    pathname: str = "/",
) -> Signature:
    """Sign a request; `headers` must already carry x-acs-content-sha256 for the body."""
    header_lines, signed_headers = canonical_headers(headers, signed_header_names)
    canonical_request = "\n".join(
        [
            method.upper(),
            pathname,
            canonical_query(query),
            header_lines,
            signed_headers,
            hashlib.sha256(body).hexdigest(),
        ]
    )
    string_to_sign = f"{ALGORITHM}\n{hashlib.sha256(canonical_request.encode()).hexdigest()}"
    signature = hmac.new(
        access_key_secret.encode(), string_to_sign.encode(), hashlib.sha256
    ).hexdigest()
    authorization = (
        f"{ALGORITHM} Credential={access_key_id},SignedHeaders={signed_headers},"
        f"Signature={signature}"
    )
    return Signature(canonical_request, string_to_sign, signature, signed_headers, authorization)


@dataclass(frozen=True)
class Authorization:
    access_key_id: str
    signed_headers: list[str]
    signature: str


def parse_authorization(value: str) -> Authorization:
    """Split an ACS3 Authorization header; ValueError when it is not one."""
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise ValueError(f"unsupported signature algorithm {algorithm!r}")
    parts: dict[str, str] = {}
    for item in rest.split(","):
        key, sep, val = item.strip().partition("=")
        if not sep:
            raise ValueError(f"malformed Authorization element {item!r}")
        parts[key] = val
    try:
        return Authorization(
            access_key_id=parts["Credential"],
            signed_headers=[h for h in parts["SignedHeaders"].split(";") if h],
            signature=parts["Signature"],
        )
    except KeyError as missing:
        raise ValueError(f"Authorization lacks {missing.args[0]}") from None


def signatures_match(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected.encode(), given.encode())
