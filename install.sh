#!/bin/sh
# The one install step, shared by CI, both Dockerfiles and the README: into the active Python.
#   ./install.sh            dependencies, then the package
#   ./install.sh deps       the pinned dependencies only (a container layer of its own)
#   ./install.sh package    the package only, without touching the dependencies
set -eu
cd "$(dirname "$0")"
stage="${1:-all}"
if [ "$stage" = all ] || [ "$stage" = deps ]; then
    python -m pip install --no-cache-dir --upgrade pip
    python -m pip install --no-cache-dir -r requirements.txt
fi
if [ "$stage" = all ] || [ "$stage" = package ]; then
    python -m pip install --no-cache-dir --no-deps .
fi
