#!/usr/bin/env bash
# Fails (exit 1) when the frontend's API types drifted from the server:
#   1. frontend/openapi.json is not the schema the server publishes now
#      (drf-spectacular, see dump-openapi.sh), or
#   2. frontend/src/core/schema.gen.ts is not what openapi-typescript makes of openapi.json.
# PYTHON: the repository's virtual-environment python (default: python).
set -euo pipefail
frontend="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

bash "$frontend/scripts/dump-openapi.sh" "$tmp/openapi.json"
if ! cmp -s "$tmp/openapi.json" "$frontend/openapi.json"; then
  diff -u "$frontend/openapi.json" "$tmp/openapi.json" --label committed --label server | head -40 >&2 || true
  echo "check-api-types: frontend/openapi.json differs from the schema the server publishes." >&2
  echo "  Run: cd frontend && npm run api:schema && npm run api:types   (then fix src/core/types.ts if needed, and commit)" >&2
  exit 1
fi

(cd "$frontend" && node scripts/openapi-typescript.mjs openapi.json "$tmp/schema.gen.ts" >"$tmp/generate.log" 2>&1) || {
  cat "$tmp/generate.log" >&2
  echo "check-api-types: openapi-typescript failed on frontend/openapi.json" >&2
  exit 1
}
if ! cmp -s "$tmp/schema.gen.ts" "$frontend/src/core/schema.gen.ts"; then
  diff -u "$frontend/src/core/schema.gen.ts" "$tmp/schema.gen.ts" --label committed --label generated | head -40 >&2 || true
  echo "check-api-types: frontend/src/core/schema.gen.ts differs from what openapi-typescript generates from openapi.json." >&2
  echo "  Run: cd frontend && npm run api:types   (and commit the result)" >&2
  exit 1
fi
echo "check-api-types: openapi.json and src/core/schema.gen.ts match the server"
