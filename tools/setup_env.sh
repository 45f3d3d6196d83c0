#!/usr/bin/env bash
# Creates the project's environment from the repo's own files: a Python 3.12 venv in .venv with
# this package (editable) and espnet 202611, plus Debian's espeak-ng, sox, sctk and chromium (the
# voice demo's browser test) where apt works.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv

find_python312() {
    local cand
    if command -v pyenv >/dev/null 2>&1; then
        cand="$(pyenv root)/versions/3.12.1/bin/python"
        [ -x "$cand" ] && { echo "$cand"; return 0; }
        for cand in "$(pyenv root)"/versions/3.12*/bin/python; do
            [ -x "$cand" ] && { echo "$cand"; return 0; }
        done
    fi
    for cand in python3.12 python3; do
        if command -v "$cand" >/dev/null 2>&1 &&
            "$cand" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 12) else 1)' 2>/dev/null; then
            command -v "$cand"; return 0
        fi
    done
    return 1
}

missing_debs=()
for tool in espeak-ng sox; do command -v "$tool" >/dev/null 2>&1 || missing_debs+=("$tool"); done
[ -x /usr/lib/sctk/bin/sclite ] || command -v sclite >/dev/null 2>&1 || missing_debs+=(sctk)
# chromium: only the browser test of the voice demo needs it (it is skipped without)
want_chromium=0
command -v chromium >/dev/null 2>&1 || want_chromium=1
can_apt=0
command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && can_apt=1
if [ ${#missing_debs[@]} -gt 0 ] || { [ "$want_chromium" = 1 ] && [ "$can_apt" = 1 ]; }; then
    if [ "$can_apt" = 1 ]; then
        echo "[setup] installing Debian packages: espeak-ng sox libsox-fmt-all sctk chromium"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng sox libsox-fmt-all sctk \
            chromium >/dev/null
    else
        echo "[setup] ERROR: missing system tools: ${missing_debs[*]}." >&2
        echo "[setup] Install the Debian/Ubuntu packages espeak-ng, sox, libsox-fmt-all and sctk" >&2
        echo "[setup] (apt-get is not available or you are not root)." >&2
        exit 1
    fi
fi

if [ ! -x "$venv/bin/python" ]; then
    py=$(find_python312) || {
        echo "[setup] ERROR: Python 3.12 not found (espnet 202611 needs >= 3.12)." >&2
        echo "[setup] Install it (e.g. 'pyenv install 3.12.1') or put python3.12 on PATH." >&2
        exit 1
    }
    echo "[setup] creating $venv with $py"
    "$py" -m venv "$venv"
fi
if [ ! -f "$venv/.installed" ] || [ setup.py -nt "$venv/.installed" ]; then
    echo "[setup] pip install -e .[test] (espnet[train]==202611, torch, transformers, ...)"
    "$venv/bin/pip" install -q --disable-pip-version-check -e ".[test]"
    touch "$venv/.installed"
fi
echo "[setup] environment ready: $venv"
