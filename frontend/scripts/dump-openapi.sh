#!/usr/bin/env bash
# Writes the OpenAPI schema the server publishes (/api/v1/schema) to the file given, with
# drf-spectacular's management command: `manage.py spectacular --format openapi-json`.
#
# PYTHON: the repository's virtual-environment python (default: python, as on bin/test's PATH).
#
# The dump is pinned to what the deployed server (PostgreSQL, docker-compose.yml) publishes,
# wherever it runs: drf-spectacular takes the integer bounds of model fields from the database
# backend (SQLite and PostgreSQL differ), so DATABASE_URL is set to a PostgreSQL URL that is
# never connected to (the dump makes no query). Without DJANGO_SECRET_KEY it runs with
# DJANGO_DEBUG=true; the schema does not depend on either.
set -euo pipefail
out="$(realpath -m "${1:?usage: dump-openapi.sh OUT.json}")"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-python}"
if [ -z "${DJANGO_SECRET_KEY:-}" ]; then export DJANGO_DEBUG="${DJANGO_DEBUG:-true}"; fi
export DATABASE_URL="postgres://schema-dump@127.0.0.1:1/schema-dump"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if ! (cd "$root" && "$PYTHON" manage.py spectacular --format openapi-json --file "$out") >"$log" 2>&1; then
  cat "$log" >&2
  echo "dump-openapi: '$PYTHON manage.py spectacular' failed; set PYTHON to the repository's venv python (e.g. PYTHON=\$PWD/.venv/bin/python)." >&2
  exit 1
fi
