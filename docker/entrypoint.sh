#!/bin/sh
# Container entrypoint for every role (web, worker-cpu, worker-gpu, beat):
#   1. wait until the database configured by the Django settings (DATABASE_URL) accepts
#      connections (at most DB_WAIT_TIMEOUT seconds, default 60);
#   2. when RUN_MIGRATIONS is true (the web service only), apply migrations;
#   3. exec the command, so that it runs as PID 1's child and receives signals directly.
# Set WAIT_FOR_DB=false to skip step 1 (e.g. for `docker compose run --rm web python -c ...`).
set -eu

APP_ROOT="$(cd "$(dirname "$0")/.." && pwd)"

is_true() {
    case "$(printf '%s' "${1:-}" | tr '[:upper:]' '[:lower:]')" in
        1 | true | yes | on) return 0 ;;
        *) return 1 ;;
    esac
}

if is_true "${WAIT_FOR_DB:-true}"; then
    python "$APP_ROOT/docker/wait_for_db.py"
fi

if is_true "${RUN_MIGRATIONS:-false}"; then
    echo "entrypoint: applying migrations"
    python "$APP_ROOT/manage.py" migrate --noinput
fi

exec "$@"
