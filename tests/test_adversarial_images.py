"""Image bytes, tried as an attacker or a careless reviewer would, over HTTP (issue 9, points 3,
5 and 6): clear pixels reach a browser only as a recorded reveal, originals stay with admins,
a huge image cannot make the server decode gigabytes, and a partial file left at a content
address is never served as the checked bytes.
"""

from __future__ import annotations

import hashlib
import io
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from PIL import Image as PILImage
from PIL import ImageStat

from moderation import intake, services
from moderation.models import AuditEntry, Image
from reviews.models import Reveal

from .factories import jpeg_with_gps
from .test_intake import solid_png
from .test_views import checkerboard_png, served

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent


def upload(client, name: str, data: bytes):
    return client.post(
        reverse("upload"), {"files": [SimpleUploadedFile(name, data, content_type="image/png")]}
    )


def waiting(data: bytes, name: str = "x.png") -> Image:
    result = services.ingest(fp=io.BytesIO(data), filename=name, actor=None)
    assert result.image is not None, result.reason
    Image.objects.filter(pk=result.image.pk).update(status=Image.Status.AWAITING_REVIEW)
    result.image.refresh_from_db()
    return result.image


# --- Point 3: every way pixels reach a browser is a recorded reveal ------------------------------


def test_a_reviewer_who_skips_the_reveal_button_and_fetches_the_preview_is_recorded(
    reviewer_client, reviewer_user
):
    image = waiting(checkerboard_png())

    # What devtools or a bookmarked URL does: no click, no reveal POST, just the bytes.
    response = reviewer_client.get(f"/images/{image.pk}/preview")

    assert response.status_code == 200
    assert response["Cache-Control"] == "private, no-store"
    assert list(Reveal.objects.values_list("image", "reviewer", "variant")) == [
        (image.pk, reviewer_user.pk, "preview")
    ]


def test_a_reviewer_cannot_download_the_original_with_its_camera_and_gps_metadata(
    reviewer_client,
):
    image = waiting(jpeg_with_gps(), "holiday.jpg")

    response = reviewer_client.get(f"/images/{image.pk}/original")

    assert response.status_code == 404
    assert b"SecretCam" not in response.content
    assert not Reveal.objects.exists()


def test_the_pane_sends_a_reviewer_no_clear_pixels_until_they_reveal(
    reviewer_client, reviewer_user
):
    waiting(checkerboard_png())

    pane = reviewer_client.post(reverse("review_next"), follow=True).content.decode()
    sources = re.findall(r'<img src="([^"]+)"', pane)

    assert sources
    for source in sources:
        pixels = PILImage.open(io.BytesIO(served(reviewer_client.get(source)))).convert("L")
        assert ImageStat.Stat(pixels).stddev[0] < 3  # one grey: no square, no edge
    assert not Reveal.objects.exists()
    # Revealing is fetching the clear preview the page names, and that is recorded.
    clear = re.search(r'data-clear-src="([^"]+)"', pane)
    assert clear
    assert reviewer_client.get(clear.group(1)).status_code == 200
    assert Reveal.objects.get().reviewer == reviewer_user


def test_the_old_reveal_post_is_gone_rather_than_a_second_record(reviewer_client):
    image = waiting(checkerboard_png())

    assert reviewer_client.post(f"/reviews/{image.pk}/reveal/").status_code == 404
    assert not Reveal.objects.exists()


# --- Point 5: a small file cannot make the server decode gigabytes ------------------------------

DECODE_UNDER_A_LIMIT = textwrap.dedent(
    """
    import io, os, resource, sys
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django
    django.setup()
    from moderation import intake
    data = open(sys.argv[1], "rb").read()
    # Everything this process has mapped so far, plus what the decode budget allows.
    status = open("/proc/self/status").read()
    data_kb = int(next(l.split()[1] for l in status.splitlines() if l.startswith("VmData:")))
    limit = data_kb * 1024 + int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    info = intake.inspect(io.BytesIO(data))
    made = intake.make_derivatives(io.BytesIO(data)) if info.previewable else None
    print(info.width, info.height, info.previewable, made is not None)
    """
)


def test_the_issues_png_is_checked_and_stored_within_a_300_mb_memory_limit(tmp_path):
    # 12,000 x 12,000 in about 0.45 MB: decoding it whole takes 432 MB or more.
    path = tmp_path / "huge.png"
    path.write_bytes(solid_png(12_000, 12_000))

    done = subprocess.run(
        [sys.executable, "-c", DECODE_UNDER_A_LIMIT, str(path), str(300 * 1024 * 1024)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )

    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["12000", "12000", "False", "False"]


def test_the_memory_limit_does_stop_a_decode_that_exceeds_it(tmp_path):
    # Without this the test above could pass because the limit limits nothing.
    path = tmp_path / "big.png"
    path.write_bytes(solid_png(4_000, 4_000))  # 16 M pixels: decoded for previews

    done = subprocess.run(
        [sys.executable, "-c", DECODE_UNDER_A_LIMIT, str(path), str(20 * 1024 * 1024)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )

    assert done.returncode != 0
    assert "MemoryError" in done.stderr


def test_uploading_the_issues_png_stores_it_for_imm_and_says_why_there_is_no_preview(
    admin_client,
):
    data = solid_png(12_000, 12_000)

    response = upload(admin_client, "huge.png", data)

    assert response.status_code == 200
    image = Image.objects.get()
    assert (image.width, image.height, image.preview.name, image.thumbnail.name) == (
        12_000,
        12_000,
        "",
        "",
    )
    reason = (
        "No preview: this image is 12,000 x 12,000 (144,000,000 pixels), more than the "
        "25,000,000 the server decodes for previews."
    )
    assert reason in response.content.decode()
    assert reason in admin_client.get(reverse("image_detail", args=[image.pk])).content.decode()
    assert served(admin_client.get(f"/images/{image.pk}/original")) == data


# --- Point 6: the stored bytes are the bytes that were checked ----------------------------------


def test_a_partial_original_left_at_its_address_is_replaced_not_served(admin_client, caplog):
    data = checkerboard_png()
    sha256 = hashlib.sha256(data).hexdigest()
    key = services.storage_key(sha256, "png")
    default_storage.save(key, io.BytesIO(data[:100]))  # a crash or a full disk, earlier

    assert upload(admin_client, "board.png", data).status_code == 200

    image = Image.objects.get()
    assert image.file.name == key
    assert served(admin_client.get(f"/images/{image.pk}/original")) == data
    entry = AuditEntry.objects.get(image=image, action="image.uploaded")
    assert entry.detail["replaced_files"] == [
        {"key": key, "found_bytes": 100, "found_sha256": hashlib.sha256(data[:100]).hexdigest()}
    ]
    assert any(
        r.levelname == "WARNING" and f"replacing {key}" in r.getMessage() for r in caplog.records
    )


def test_a_partial_preview_left_at_its_address_is_replaced_not_served(admin_client):
    data = checkerboard_png()
    sha256 = hashlib.sha256(data).hexdigest()
    made = intake.make_derivatives(io.BytesIO(data))
    assert made is not None
    key = services.storage_key(sha256, "webp", "previews")
    default_storage.save(key, io.BytesIO(made.preview[:100]))

    assert upload(admin_client, "board.png", data).status_code == 200

    image = Image.objects.get()
    assert served(admin_client.get(f"/images/{image.pk}/preview")) == made.preview
    entry = AuditEntry.objects.get(image=image, action="image.uploaded")
    assert [r["key"] for r in entry.detail["replaced_files"]] == [key]


class CutShort(io.BytesIO):
    """File content whose reading fails part-way, as a full disk or a killed worker would."""

    def read(self, size: int | None = -1) -> bytes:
        if self.tell() > 0:
            raise OSError(28, "No space left on device")
        return super().read(64)


def test_a_write_cut_short_leaves_nothing_at_the_content_address(db):
    from django.core.files.base import File

    data = checkerboard_png()
    key = services.storage_key(hashlib.sha256(data).hexdigest(), "png")

    with pytest.raises(OSError, match="No space left"):
        services._put(
            default_storage,
            key,
            File(CutShort(data), name="board.png"),
            sha256=hashlib.sha256(data).hexdigest(),
            replaced=[],
        )

    folder = key.rsplit("/", 1)[0]
    assert not default_storage.exists(key)
    assert default_storage.listdir(folder)[1] == []  # nor a temporary file beside it


def test_on_an_object_store_a_partial_object_is_replaced_and_a_whole_one_kept(db):
    from django.core.files.base import ContentFile
    from django.core.files.storage import InMemoryStorage

    store = InMemoryStorage()
    data = checkerboard_png()
    sha256 = hashlib.sha256(data).hexdigest()
    key = services.storage_key(sha256, "png")
    store.save(key, ContentFile(data[:100]))
    replaced: list[dict[str, object]] = []

    assert services._put(store, key, ContentFile(data), sha256=sha256, replaced=replaced) == key
    assert store.open(key).read() == data
    assert [r["found_bytes"] for r in replaced] == [100]
    # Whole already: kept as it is, nothing written under another name.
    assert services._put(store, key, ContentFile(data), sha256=sha256, replaced=replaced) == key
    assert store.listdir(key.rsplit("/", 1)[0])[1] == [key.rsplit("/", 1)[1]]
    assert len(replaced) == 1
