#!/usr/bin/env bash
# The reference implementation of TerraMind-1.0 (terratorch, IBM's) for the conversion tests
# (tests/eo_models/convert/): terratorch's source unpacked into .terratorch/, which the tests put on PYTHONPATH of a
# subprocess of the project's own Python (they skip, saying why, when it is absent; in CI they fail instead).
#
# Why only the source: terratorch 1.2.13 requires torchgeo>=0.9,<0.10, which needs Python >= 3.12 (this project runs
# on 3.11 and pins torchgeo 0.8.1). TerraMind's modules (terratorch.models.backbones.terramind) need only torch,
# einops, diffusers, huggingface_hub, timm, tqdm and numpy, all in the project's `models` extra; the tests import
# TerraMind's module files without terratorch's package __init__ (which imports every dataset and model family).
# Seconds, a few MB; idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
if [ -f .terratorch/terratorch/__init__.py ]; then
  echo "terratorch.sh: .terratorch ready"; exit 0
fi
tmp=$(mktemp -d)
pip=(python3 -m pip)
if ! python3 -m pip --version >/dev/null 2>&1; then  # a Python without pip: a throw-away venv has one
  python3 -m venv "$tmp/venv" && pip=("$tmp/venv/bin/python" -m pip)
fi
"${pip[@]}" download -q --no-deps --only-binary=:all: terratorch==1.2.13 -d "$tmp"
rm -rf .terratorch.partial && mkdir .terratorch.partial
python3 -m zipfile -e "$tmp"/terratorch-1.2.13-*.whl .terratorch.partial
rm -rf "$tmp" .terratorch && mv .terratorch.partial .terratorch
echo "terratorch.sh: terratorch 1.2.13's source ready in .terratorch"
