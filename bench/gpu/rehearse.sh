#!/usr/bin/env bash
# Rehearse bench/gpu/run_all.sh on this CPU machine, in an environment shaped like the GPU machine's.
#
#   bash bench/gpu/rehearse.sh [DIR]          # default /tmp/gpu-rehearsal; the results in DIR/out
#
# DIR/venv holds only what the GPU machine has preinstalled (bench/gpu/README.md: torch, transformers,
# tokenizers, safetensors, grpcio, protobuf, prometheus-client, peft, pyyaml, jinja2, matplotlib, tqdm) at the
# versions this project's venv has, except protobuf, held below what pyproject requires so that the installer's
# fallback (a carried wheel shadowing the machine's too-old one) is exercised too. The wheels are fetched for
# this machine's Python (3.11; the GPU machine's set is cp312, bench/gpu/wheels) into DIR/wheels, installed by
# run_all.sh into DIR/site, and run_all.sh then runs every step without CUDA: it says what it skips.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DIR=${1:-/tmp/gpu-rehearsal}
mkdir -p "$DIR"
VENV_PY="$REPO/.venv/bin/python"
version() { "$VENV_PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }

if [ ! -x "$DIR/venv/bin/python" ]; then
  python3 -m venv "$DIR/venv"
  # torch first, pinned: the local CPU wheel (an unpinned torch would pull a CUDA build)
  "$DIR/venv/bin/pip" install --quiet "torch==$(version torch | cut -d+ -f1)"
  pins=()
  for p in transformers tokenizers safetensors grpcio prometheus-client peft pyyaml jinja2 matplotlib tqdm; do
    pins+=("$p==$(version "$p")")
  done
  "$DIR/venv/bin/pip" install --quiet "${pins[@]}" "protobuf==6.31.1"
fi
"$VENV_PY" "$REPO/bench/gpu/fetch_wheels.py" --python-version "$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')" \
  --dest "$DIR/wheels"
rm -rf "$DIR/out"
PYTHON="$DIR/venv/bin/python" WHEELS="$DIR/wheels" SITE="$DIR/site" bash "$REPO/bench/gpu/run_all.sh" "$DIR/out"
