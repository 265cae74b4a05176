#!/usr/bin/env bash
# Everything a fresh machine needs to run the archive and its tests:
# Debian packages (when run as root), a Python venv with the project installed.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(dcmtk orthanc orthanc-dicomweb iproute2 postgresql rclone chromium)
# Node.js and npm (for Azurite) from Debian only where the machine has none of its own.
command -v npm >/dev/null || DEBIAN_PACKAGES+=(nodejs npm)

if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    missing=()
    for p in "${DEBIAN_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if ((${#missing[@]})); then
        echo "setup: installing Debian packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >/dev/null
        apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    fi
fi

if [[ ! -x tools/node_modules/.bin/azurite-blob ]]; then
    echo "setup: installing test servers from npm (tools/package.json: azurite)"
    (cd tools && npm ci --no-audit --no-fund --loglevel=error)
fi

OHIF_VERSION=3.13.2
if [[ ! -f tools/ohif/index.html ]]; then
    echo "setup: fetching the OHIF viewer's built files (npm @ohif/app@$OHIF_VERSION, dist/ only)"
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack "@ohif/app@$OHIF_VERSION" --loglevel=error >/dev/null && tar xzf ohif-app-*.tgz package/dist)
    rm -rf tools/ohif && mv "$tmp/package/dist" tools/ohif && rm -rf "$tmp"
fi

PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
    echo "setup: creating .venv"
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
if [[ ! -f $stamp ]]; then
    echo "setup: installing the project and its test dependencies into .venv"
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q -e '.[test]'
    rm -f .venv/.installed-*
    touch "$stamp"
fi

# Byte-code for the project's own packages, as an installed wheel would have: an editable
# install leaves it to the first import to write, and where PYTHONDONTWRITEBYTECODE is set
# every `vna` command would compile them again (about 50 ms each). Stale files are only
# ever skipped by the import system, so this is safe to run on every set-up.
.venv/bin/python -m compileall -q vna replicator viewer_gateway >/dev/null
