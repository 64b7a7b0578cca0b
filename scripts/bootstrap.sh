#!/usr/bin/env bash
# Create .venv and install the package with its test extra: `pip install -e '.[test,docs]'`.
# The install runs again only when pyproject.toml (or the Python) changed, so a
# repeated run costs a few milliseconds. Installs Debian's python3-venv when
# `python3 -m venv` cannot make a venv (a fresh Debian).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
STAMP="$VENV/.bootstrap-stamp"

log() { printf 'bootstrap: %s\n' "$*" >&2; }

apt_install() {
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo -n)
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq "$@" >/dev/null
}

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    log "no $PYTHON: installing Debian's python3 and python3-venv"
    apt_install python3 python3-venv
fi

venv_ok() { [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -m pip --version >/dev/null 2>&1; }

make_venv() {
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV" >/dev/null 2>&1 && venv_ok
}

stamp_of() { { cat pyproject.toml; "$VENV/bin/python" -VV; } | sha256sum | cut -d' ' -f1; }

# fast path: venv there and installed from this very pyproject.toml
if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(stamp_of)" = "$(cat "$STAMP")" ]; then
    exit 0
fi

if ! venv_ok; then
    log "creating $VENV with $($PYTHON --version 2>&1)"
    if ! make_venv; then
        log "'$PYTHON -m venv' failed: installing python3-venv"
        # python3.X-venv matches the interpreter; python3-venv is the Debian default
        ver="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
        apt_install python3-venv "python$ver-venv" 2>/dev/null || apt_install python3-venv
        make_venv || { log "cannot create $VENV"; exit 1; }
    fi
fi

want="$(stamp_of)"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [ "$want" != "$have" ]; then
    log "installing the package and its test extra into $VENV"
    # (pip's notes about this machine's unused find-links folders are noise: filtered)
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test,docs]' 2>&1 \
        | { grep -v "^WARNING: Location '.*' is ignored" || true; }
    printf '%s\n' "$want" > "$STAMP"
fi
