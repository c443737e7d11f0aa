"""What the imports (COCO, GeoJSON) share: their error collector and reading a JSON upload."""

from __future__ import annotations

import json
from typing import Any

from annotations.services.images import UploadLike
from core.errors import ServiceValidationError

IMPORT_MAX_ERRORS = 100


class ImportErrors(dict[str, str]):
    """Error messages by key, at most IMPORT_MAX_ERRORS of them."""

    dropped = 0

    def add(self, key: str, message: str) -> None:
        if key in self:
            self[key] += f"; {message}"
        elif len(self) < IMPORT_MAX_ERRORS:
            self[key] = message
        else:
            self.dropped += 1

    def raise_if_any(self, detail: str) -> None:
        if self:
            errors = dict(self)
            if self.dropped:
                errors["more"] = f"{self.dropped} more problem(s) not listed"
            raise ServiceValidationError(detail, errors)


def json_upload_load(upload: UploadLike, *, what: str, limit: int) -> Any:
    """The JSON document in an uploaded file; ServiceValidationError keyed ``file`` when it is
    over ``limit`` bytes, not UTF-8 or not JSON (``what`` names it: "The COCO file")."""
    if upload.size is not None and upload.size > limit:
        raise ServiceValidationError(
            f"{what} is too large.", {"file": f"{upload.size} bytes exceeds the limit of {limit} bytes"}
        )
    data = upload.read(limit + 1)
    if len(data) > limit:
        raise ServiceValidationError(f"{what} is too large.", {"file": f"exceeds the limit of {limit} bytes"})
    try:
        return json.loads(data)
    except UnicodeDecodeError as exc:
        raise ServiceValidationError(f"{what} is not JSON.", {"file": f"not UTF-8 text ({exc.reason})"}) from exc
    except json.JSONDecodeError as exc:
        raise ServiceValidationError(
            f"{what} is not JSON.", {"file": f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"}
        ) from exc
