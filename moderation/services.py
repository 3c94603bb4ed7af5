"""Workflows that change images, each with its audit entry in the same transaction."""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO, Literal

from django.core.files.base import ContentFile, File
from django.core.files.storage import FileSystemStorage, Storage, default_storage
from django.db import IntegrityError, transaction

from . import intake
from .audit import log as audit
from .imm import pipeline
from .models import Image

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IntakeResult:
    """What happened to one file: stored, duplicate (of `image`) or refused (with `reason`)."""

    outcome: Literal["stored", "duplicate", "refused"]
    filename: str
    image: Image | None = None
    reason: str = ""
    rule: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def message(self) -> str:
        if self.outcome == "refused":
            return f"{self.filename} {self.reason}"
        return f"{self.filename}: {self.outcome}"


def storage_key(sha256: str, extension: str, folder: str = "images") -> str:
    return f"{folder}/{sha256[:2]}/{sha256}.{extension}"


def _stored_digest(storage: Storage, key: str) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with storage.open(key, "rb") as stored:
        while chunk := stored.read(1024 * 1024):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _put(
    storage: Storage,
    key: str,
    content: File[bytes] | ContentFile[bytes],
    *,
    sha256: str,
    replaced: list[dict[str, object]],
) -> str:
    """Store `content` (whose SHA-256 is `sha256`) at `key`, reusing a file only if it matches.

    Keys are content addresses, so a file already there (an earlier attempt whose transaction
    rolled back, say) should hold these very bytes; but a crash or a full disk can leave part of
    a file, which would then be served and sent to IMM for ever. It is hashed first: reused if it
    matches, otherwise replaced, logged, and noted in `replaced` for the audit entry.
    """
    if storage.exists(key):
        found, size = _stored_digest(storage, key)
        if found == sha256:
            return key
        logger.warning(
            "replacing %s: it held %d bytes with SHA-256 %s, not the %s expected",
            key,
            size,
            found[:12],
            sha256[:12],
        )
        replaced.append({"key": key, "found_bytes": size, "found_sha256": found})
        _write_whole(storage, key, content, replacing=True)
    else:
        _write_whole(storage, key, content, replacing=False)
    return key


def _write_whole(
    storage: Storage, key: str, content: File[bytes] | ContentFile[bytes], *, replacing: bool
) -> None:
    """Write `content` at `key` so that no reader (a concurrent upload of the same bytes, IMM)
    ever finds part of it there.

    Local files are written under a temporary name beside the key and renamed over it (atomic on
    one filesystem); a crash leaves only the temporary file (`*.partial-*`, never served). Other
    storages (OSS, S3) write an object whole or not at all: the object is deleted first only when
    it is being replaced, and a concurrent writer of the same bytes that got there first wins.
    """
    if not isinstance(storage, FileSystemStorage):
        if replacing:
            storage.delete(key)
        saved = storage.save(key, content)
        if saved != key:  # a concurrent writer of the same content got there first
            storage.delete(saved)
        return
    temporary = f"{key}.partial-{uuid.uuid4().hex}"
    try:
        temporary = storage.save(temporary, content)
        os.replace(storage.path(temporary), storage.path(key))
    except BaseException:
        if storage.exists(temporary):  # a write cut short (a full disk) leaves nothing behind
            storage.delete(temporary)
        raise


def _clean_filename(name: str) -> str:
    base = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    return (base or "unnamed")[:255]


def ingest(
    *,
    fp: BinaryIO,
    filename: str,
    actor: User | AnonymousUser | None,
    context: audit.AuditContext = audit.SYSTEM_CONTEXT,
    via: str = "upload",
) -> IntakeResult:
    """Validate one file and store it once by content, writing the audit entry with it.

    Never raises for bad input: a refused file comes back as a "refused" result (and is audited,
    so an admin can see who tried to upload what). `actor=None` means the system imported it.
    """
    filename = _clean_filename(filename)
    uploader = actor if actor is not None and actor.is_authenticated else None
    try:
        info = intake.inspect(fp)
    except intake.Refused as refusal:
        with transaction.atomic():
            audit.record(
                action="image.refused",
                actor=uploader,
                reason=refusal.reason,
                detail={"filename": filename, "rule": refusal.rule, "via": via},
                context=context,
            )
        return IntakeResult("refused", filename, reason=refusal.reason, rule=refusal.rule)

    existing = Image.objects.filter(sha256=info.sha256).first()
    if existing is not None:
        return _record_duplicate(existing, filename, uploader, context, via)

    derivatives = intake.make_derivatives(fp) if info.previewable else None
    key = storage_key(info.sha256, info.extension)
    replaced: list[dict[str, object]] = []

    def put_derivative(folder: str, data: bytes) -> str:
        # Keyed by the original's hash, so checked against the bytes just made from it.
        return _put(
            default_storage,
            storage_key(info.sha256, "webp", folder),
            ContentFile(data),
            sha256=hashlib.sha256(data).hexdigest(),
            replaced=replaced,
        )

    try:
        with transaction.atomic():
            fp.seek(0)
            image = Image.objects.create(
                file=_put(default_storage, key, File(fp), sha256=info.sha256, replaced=replaced),
                preview=put_derivative("previews", derivatives.preview) if derivatives else "",
                thumbnail=(
                    put_derivative("thumbnails", derivatives.thumbnail) if derivatives else ""
                ),
                sha256=info.sha256,
                format=info.format,
                width=info.width,
                height=info.height,
                frame_count=info.frame_count,
                byte_size=info.byte_size,
                original_filename=filename,
                uploaded_by=uploader,
            )
            audit.record(
                action="image.uploaded",
                actor=uploader,
                image=image,
                state_after=image.status,
                detail={
                    "filename": filename,
                    "sha256": info.sha256,
                    "format": info.format,
                    "width": info.width,
                    "height": info.height,
                    "frames": info.frame_count,
                    "bytes": info.byte_size,
                    "via": via,
                    "warnings": info.warnings,
                    **({"replaced_files": replaced} if replaced else {}),
                },
                context=context,
            )
            pipeline.enqueue_submission(image.pk)
    except IntegrityError:
        # Someone stored the same content between our check and our insert; theirs stands.
        existing = Image.objects.filter(sha256=info.sha256).first()
        if existing is None:
            raise
        return _record_duplicate(existing, filename, uploader, context, via)
    logger.info("stored image %s (%s) from %s", image.pk, info.sha256[:12], via)
    return IntakeResult("stored", filename, image=image, warnings=info.warnings)


def _record_duplicate(
    image: Image,
    filename: str,
    uploader: User | AnonymousUser | None,
    context: audit.AuditContext,
    via: str,
) -> IntakeResult:
    with transaction.atomic():
        audit.record(
            action="image.duplicate",
            actor=uploader,
            image=image,
            state_before=image.status,
            state_after=image.status,
            detail={"filename": filename, "sha256": image.sha256, "via": via},
            context=context,
        )
    warnings = [] if not image.low_resolution else ["Low resolution (stored earlier)."]
    return IntakeResult("duplicate", filename, image=image, warnings=warnings)
