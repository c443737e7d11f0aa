"""Wait until the Django ``default`` database accepts connections (used by docker/entrypoint.sh).

The connection comes from the settings (DATABASE_URL), so a malformed deployment variable stops
the container at once with the settings' own message instead of being retried.
Exit status 0 when connected, 1 after DB_WAIT_TIMEOUT seconds (default 60).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


def main() -> int:
    import django
    from django.db import connections
    from django.db.utils import OperationalError

    django.setup()
    timeout = float(os.environ.get("DB_WAIT_TIMEOUT", "60"))
    deadline = time.monotonic() + timeout
    connection = connections["default"]
    while True:
        try:
            connection.ensure_connection()
        except OperationalError as exc:
            if time.monotonic() >= deadline:
                print(f"wait_for_db: database not reachable after {timeout:.0f}s: {exc}", file=sys.stderr)
                return 1
            print(f"wait_for_db: waiting for the database ({exc.__class__.__name__})", file=sys.stderr)
            time.sleep(1)
        else:
            connection.close()
            print("wait_for_db: database is up", file=sys.stderr)
            return 0


if __name__ == "__main__":
    sys.exit(main())
