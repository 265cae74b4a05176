#!/usr/bin/env bash
# Run the archive on its embedded default: SQLite index, local folders under
# var/, two PACS drop folders filled with generated sample studies.
# Ctrl-C stops it; `vna --config etc/vna.demo.toml status` shows what it holds.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export VNA_CONFIG=etc/vna.demo.toml
mkdir -p var/drop/pacs-a var/drop/pacs-b
if [[ -z $(ls -A var/drop/pacs-a) && ! -d var/archive/studies ]]; then
    .venv/bin/vna sample --out var/drop/pacs-a --instances 200 --per-series 50 --seed 1
    .venv/bin/vna sample --out var/drop/pacs-b --instances 100 --per-series 50 --seed 2
fi
exec .venv/bin/vna run "$@"
