"""What every group of calls shares: an object-or-id reference and the paging of lists."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from cytoclient import endpoints as ep
from cytoclient._transport import Transport
from cytoclient.errors import ProtocolError
from cytoclient.models import JSON, Model

Ref = int | Model  # an object or its id


def _id(ref: Ref) -> int:
    if isinstance(ref, Model):
        value = getattr(ref, "id", None)
        if not isinstance(value, int):
            raise TypeError(f"{type(ref).__name__} has no id")
        return value
    if isinstance(ref, bool) or not isinstance(ref, int):
        raise TypeError(f"expected an id or an object with one, got {ref!r}")
    return ref


class _Api:
    def __init__(self, transport: Transport) -> None:
        self.t = transport

    def _pages(
        self, endpoint: ep.Endpoint, path: Mapping[str, Any], query: Mapping[str, Any] | None = None
    ) -> Iterator[JSON]:
        """Every item of a paginated list, page by page (500 a page, the server's most)."""
        page = 1
        while True:
            body = self.t.json(endpoint, path, query={**(query or {}), "page": page, "page_size": 500})
            if not isinstance(body, Mapping) or not isinstance(body.get("results"), list):
                raise ProtocolError(f"{endpoint}: expected a page of results")
            yield from body["results"]
            if not body.get("next"):
                return
            page += 1
