#!/bin/sh
# Container entrypoint for every role (web, the workers, beat):
#   1. wait until the database configured by the Django settings (DATABASE_URL) accepts
#      connections (at most DB_WAIT_TIMEOUT seconds, default 60);
#   2. when STORAGE_INIT is true (the web service only), make the default storage ready: with
#      STORAGE_URL=s3://... create the bucket if it is missing and keep it private, waiting up to
#      STORAGE_INIT_TIMEOUT seconds (default 60) for the object store (`manage.py storage_init`);
#      before the migrations, which may write to the bucket;
#   3. when RUN_MIGRATIONS is true (the web service only), apply migrations;
#   4. exec the command, so that it runs as PID 1's child and receives signals directly.
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

if is_true "${STORAGE_INIT:-false}"; then
    echo "entrypoint: preparing the file storage"
    python "$APP_ROOT/manage.py" storage_init --timeout "${STORAGE_INIT_TIMEOUT:-60}"
fi

if is_true "${RUN_MIGRATIONS:-false}"; then
    echo "entrypoint: applying migrations"
    python "$APP_ROOT/manage.py" migrate --noinput
fi

exec "$@"
