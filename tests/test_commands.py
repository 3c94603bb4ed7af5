from __future__ import annotations

import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from moderation.accounts import role_of
from moderation.models import AuditEntry, Image

from .factories import animated_bytes, image_bytes

pytestmark = pytest.mark.django_db


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "incoming"
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / "a.png").write_bytes(image_bytes("PNG", color=(1, 1, 1)))
    (root / "nested" / "b.jpg").write_bytes(image_bytes("JPEG", color=(250, 1, 1)))
    (root / "nested" / "deeper" / "c.gif").write_bytes(animated_bytes("GIF"))
    (root / "nested" / "copy-of-a.png").write_bytes(image_bytes("PNG", color=(1, 1, 1)))
    (root / "nested" / "notes.jpg").write_text("meeting notes, not a photo")
    (root / "nested" / "cut.png").write_bytes(image_bytes("PNG", color=(3, 3, 3))[:-40])
    return root


def test_import_images_walks_folders_and_summarises(folder):
    out, _ = run("import_images", str(folder), "--no-progress")
    assert "6 file(s): 3 stored, 1 duplicate(s), 2 refused." in out
    assert f"refused {folder / 'nested' / 'notes.jpg'}: is not an image IMM accepts" in out
    assert f"refused {folder / 'nested' / 'cut.png'}: is truncated" in out
    assert sorted(Image.objects.values_list("original_filename", flat=True)) == [
        "a.png",
        "b.jpg",
        "c.gif",
    ]
    assert Image.objects.get(original_filename="c.gif").frame_count == 3


def test_import_images_records_the_system_as_the_uploader_by_default(folder):
    run("import_images", str(folder / "a.png"), "--no-progress")
    image = Image.objects.get()
    assert image.uploaded_by is None
    entry = AuditEntry.objects.get(action="image.uploaded")
    assert entry.actor is None
    assert entry.actor_label == "system"
    assert entry.detail["via"] == "import_images"


def test_import_images_can_record_a_named_uploader(folder, admin_user):
    run("import_images", str(folder / "a.png"), "--as", "ada", "--no-progress")
    assert Image.objects.get().uploaded_by == admin_user


def test_import_images_refuses_an_unknown_uploader(folder):
    with pytest.raises(CommandError, match="no user named 'ghost'"):
        run("import_images", str(folder), "--as", "ghost")


def test_import_images_names_a_missing_path_and_goes_on(folder, tmp_path):
    missing = tmp_path / "nope.png"
    out, _ = run("import_images", str(missing), str(folder / "a.png"), "--no-progress")
    assert "1 stored" in out
    assert f"refused {missing}: cannot be read" in out


def test_import_images_shows_a_progress_bar(folder):
    _, err = run("import_images", str(folder))
    assert "6/6" in err
    assert "file/s" in err


def test_import_images_twice_stores_nothing_new(folder):
    run("import_images", str(folder), "--no-progress")
    out, _ = run("import_images", str(folder), "--no-progress")
    assert "0 stored, 4 duplicate(s), 2 refused." in out
    assert Image.objects.count() == 3


def test_create_user_reads_the_password_from_the_named_variable(monkeypatch):
    monkeypatch.setenv("NEW_PASSWORD", "a-long-enough-passphrase")
    out, _ = run("create_user", "carol", "--role", "reviewer", "--password-env", "NEW_PASSWORD")
    assert "Created reviewer 'carol'" in out
    user = get_user_model().objects.get(username="carol")
    assert user.check_password("a-long-enough-passphrase")
    assert role_of(user) == "reviewer"
    assert not user.is_staff
    assert user.has_perm("moderation.review_image")
    assert not user.has_perm("moderation.add_image")
    entry = AuditEntry.objects.get(action="user.created")
    assert entry.detail == {"username": "carol", "role": "reviewer"}


def test_create_user_makes_admins_staff_with_upload_rights(monkeypatch):
    monkeypatch.setenv("NEW_PASSWORD", "a-long-enough-passphrase")
    run("create_user", "dora", "--role", "admin", "--password-env", "NEW_PASSWORD")
    user = get_user_model().objects.get(username="dora")
    assert user.is_staff
    assert not user.is_superuser
    assert user.has_perm("moderation.add_image")
    assert user.has_perm("moderation.view_auditentry")
    assert not user.has_perm("moderation.change_auditentry")


def test_create_user_prompts_when_no_variable_is_named(monkeypatch):
    answers = iter(["a-long-enough-passphrase", "a-long-enough-passphrase"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    run("create_user", "erin", "--role", "reviewer")
    assert get_user_model().objects.get(username="erin").check_password("a-long-enough-passphrase")


def test_create_user_refuses_mismatched_prompts(monkeypatch):
    answers = iter(["a-long-enough-passphrase", "something else"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    with pytest.raises(CommandError, match="differ"):
        run("create_user", "erin", "--role", "reviewer")


def test_create_user_refuses_an_empty_variable_a_weak_password_and_a_taken_name(monkeypatch):
    with pytest.raises(CommandError, match="UNSET_VARIABLE is not set"):
        run("create_user", "fay", "--role", "admin", "--password-env", "UNSET_VARIABLE")
    monkeypatch.setenv("WEAK", "password")
    with pytest.raises(CommandError, match="password refused"):
        run("create_user", "fay", "--role", "admin", "--password-env", "WEAK")
    monkeypatch.setenv("GOOD", "a-long-enough-passphrase")
    run("create_user", "fay", "--role", "admin", "--password-env", "GOOD")
    with pytest.raises(CommandError, match="already exists"):
        run("create_user", "fay", "--role", "admin", "--password-env", "GOOD")


def test_create_user_refuses_an_unknown_role():
    with pytest.raises(CommandError):
        run("create_user", "gus", "--role", "overlord", "--password-env", "X")


def test_demo_users_generates_passwords_and_prints_them_once(monkeypatch):
    monkeypatch.delenv("DEMO_ADMIN_PASSWORD", raising=False)
    monkeypatch.delenv("DEMO_REVIEWER_PASSWORD", raising=False)
    out, _ = run("demo_users")
    users = get_user_model().objects
    for username in ("admin", "reviewer"):
        line = next(line for line in out.splitlines() if f"'{username}'" in line)
        password = line.split("with password ")[1].split(" ")[0]
        assert users.get(username=username).check_password(password)
    assert role_of(users.get(username="admin")) == "admin"
    assert role_of(users.get(username="reviewer")) == "reviewer"
    again, _ = run("demo_users")
    assert "password" not in again


def test_demo_users_take_passwords_from_the_environment(monkeypatch):
    monkeypatch.setenv("DEMO_ADMIN_PASSWORD", "admin-demo-pass")
    monkeypatch.setenv("DEMO_REVIEWER_PASSWORD", "reviewer-demo-pass")
    out, _ = run("demo_users")
    assert "admin-demo-pass" not in out
    users = get_user_model().objects
    assert users.get(username="admin").check_password("admin-demo-pass")
    assert users.get(username="reviewer").check_password("reviewer-demo-pass")
    monkeypatch.setenv("DEMO_ADMIN_PASSWORD", "changed-demo-pass")
    run("demo_users")
    assert users.get(username="admin").check_password("changed-demo-pass")


@pytest.mark.parametrize(
    ("password", "refusal"),
    [
        ("short1!", "too short"),
        ("password123", "too common"),
        ("8675309123", "entirely numeric"),
        ("gretchen-1", "too similar to the username"),
    ],
)
def test_create_user_applies_every_password_validator(monkeypatch, password, refusal):
    monkeypatch.setenv("NEW_PASSWORD", password)
    with pytest.raises(CommandError, match=refusal):
        run("create_user", "gretchen-1", "--role", "reviewer", "--password-env", "NEW_PASSWORD")
    assert not get_user_model().objects.filter(username="gretchen-1").exists()
