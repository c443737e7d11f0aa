# Shared by bin/run and bin/test: the cached virtual environment and the frontend build.
# The venv lives outside the clone, keyed by a hash of requirements.txt, so a fresh clone (and
# every CI run) reuses it instead of reinstalling torch, nnU-Net and Cellpose.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON_BIN="${PYTHON_BIN:-python3.11}"
command -v "$PYTHON_BIN" >/dev/null 2>&1 || PYTHON_BIN=python3
REQ_HASH="$( (cat requirements.txt; "$PYTHON_BIN" -c 'import sys; print(sys.version_info[:2])') | sha256sum | cut -c1-16)"
CACHE_DIR="${CYTO_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cytoplatform}"
VENV="$CACHE_DIR/venv-$REQ_HASH"

log() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }

ensure_venv() {
  if [ ! -f "$VENV/.complete" ]; then
    log "Creating the virtual environment in $VENV (first run only; a few minutes)"
    rm -rf "$VENV"
    mkdir -p "$CACHE_DIR"
    "$PYTHON_BIN" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip wheel
    # torch first and alone: with the exact pin pip takes the local CPU wheel here (or the CUDA
    # build on a GPU machine) instead of resolving a different build for nnunetv2's range.
    "$VENV/bin/pip" install --quiet "$(grep -E '^torch==' requirements.txt)"
    "$VENV/bin/pip" install --quiet -r requirements.txt
    touch "$VENV/.complete"
  fi
  ln -sfn "$VENV" "$ROOT/.venv"
  export PATH="$VENV/bin:$PATH"
  export PYTHONUNBUFFERED=1
  ensure_client
}

ensure_client() {
  # The Python client and `cyto` (client/), installed editable so that this clone's code is the
  # one imported; reinstalled only when another clone installed it or its pyproject changed
  # (entry points). --no-deps: httpx is already in the venv; no build isolation: no download;
  # PYTHONWARNINGS: setuptools' notice that an editable install is one, on every install.
  local stamp="$VENV/.cytoclient" want
  want="$ROOT $(sha256sum client/pyproject.toml | cut -c1-16)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    log "Installing the Python client (client/, the cyto command)"
    PYTHONWARNINGS=ignore "$VENV/bin/pip" install --quiet --no-deps --no-build-isolation -e ./client
    echo "$want" > "$stamp"
  fi
}

ensure_frontend() {
  [ -f frontend/package.json ] || return 0
  local stamp="frontend/node_modules/.lock-hash" lock_hash
  lock_hash="$(sha256sum frontend/package-lock.json | cut -c1-16)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$lock_hash" ]; then
    log "Installing frontend packages"
    (cd frontend && npm ci --no-audit --no-fund --loglevel=error)
    echo "$lock_hash" > "$stamp"
  fi
  log "Building the frontend"
  (cd frontend && npm run --silent build >/dev/null)
}

ensure_chromium() {
  # Browser tests drive Debian's Chromium (test tools cannot download their own browsers here).
  [ -x /usr/bin/chromium ] && return 0
  log "Installing Debian's chromium for the browser tests"
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq >/dev/null && $sudo apt-get install -y -qq chromium >/dev/null
}
