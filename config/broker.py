"""kombu's filesystem transport with atomic message writes (the embedded default broker).

The stock transport creates the message file and then writes into it, so a consumer polling
the folder can pick up an empty file and crash on JSON decoding. Here each message is written
under a name the consumers ignore and renamed into place, which is atomic on POSIX.
"""

from __future__ import annotations

import itertools
import os
import uuid
from time import monotonic_ns
from typing import Any

from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

_SEQUENCE = itertools.count()


class AtomicChannel(filesystem.Channel):
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        # Consumers take messages in name order: a fixed-width time stamp (nanoseconds of the
        # machine-wide monotonic clock) and this process's counter keep the order they were sent
        # in, first in, first out.
        name = f"{monotonic_ns():020d}_{next(_SEQUENCE):09d}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        temporary = final + ".writing"
        try:
            with open(temporary, "wb") as handle:
                handle.write(str_to_bytes(dumps(payload)))
            os.replace(temporary, final)
        except OSError as exc:
            raise filesystem.ChannelError(f"Cannot add file {final!r} to directory") from exc


class AtomicFilesystemTransport(filesystem.Transport):
    Channel = AtomicChannel
