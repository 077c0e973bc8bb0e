#!/usr/bin/env bash
# Fetch, on this (CPU) machine, the wheels the GPU machine lacks into .whl/ (git-ignored):
# the device image has Python 3.12 with torch, numpy, scikit-learn, pandas, click, rich
# and PyYAML, but not Optuna and its database stack. Then run benchmarks/gpu/check.sh
# there with .whl carried (see that script's header).
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    optuna==5.0.0 sqlalchemy==2.1.9 alembic==1.20.1 mako==1.4.3 colorlog==6.12.0 greenlet==3.5.6
ls .whl
