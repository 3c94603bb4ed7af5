"""What the API tests share: clients with keys, and the multipart submission."""

from __future__ import annotations

from typing import Any

from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from moderation.api import keys

from .factories import image_bytes


class ApiCaller:
    """A Django test client that sends one key as a bearer token."""

    def __init__(self, key: str | None) -> None:
        self.key = key
        self.client = Client()

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        if self.key is not None:
            headers.setdefault("Authorization", f"Bearer {self.key}")
        return headers

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.client.get(path, headers=self.headers(kwargs.pop("headers", None)), **kwargs)

    def submit(
        self,
        data: bytes | None = None,
        *,
        name: str = "photo.png",
        headers: dict[str, str] | None = None,
        **fields: Any,
    ) -> Any:
        body: dict[str, Any] = {k: v for k, v in fields.items() if v is not None}
        if data is not None:
            body["file"] = SimpleUploadedFile(name, data)
        return self.client.post("/api/v1/images", body, headers=self.headers(headers))


def make_key(name: str = "shop", scopes: tuple[str, ...] = ("submit", "read")) -> str:
    return keys.create_key(client_name=name, scopes=list(scopes), created_by=None).key


def png(n: int = 1, size: tuple[int, int] = (320, 240)) -> bytes:
    return image_bytes("PNG", size=size, color=(n % 256, (n // 256) % 256, 33))
