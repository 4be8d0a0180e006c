#!/usr/bin/env bash
# Run in the project root on a machine with the package index, before going to the GPU host: downloads what
# the GPU host needs into .whl/ (an ignored folder, copied over with the tree). See docs/gpu.md.
set -euo pipefail
mkdir -p .whl
grep -qx ".whl/" .gitignore 2>/dev/null || echo "note: add '.whl/' to .gitignore so it is never committed"
PATH=/usr/local/cuda/bin:$PATH python3 -m pip download -q --no-deps --no-binary pycuda -d .whl pycuda==2026.1
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl pytools platformdirs mako markupsafe siphash24 lark xdsl immutabledict ordered-set ml_dtypes \
  typing_extensions safetensors
ls -la .whl
