#!/bin/sh
# The one install step, shared by CI, both Dockerfiles and the README: into the active Python.
#   ./install.sh            the pinned dependencies with every extra, then the package (the command line, CI)
#   ./install.sh deps       the pinned dependencies with every extra only
#   ./install.sh serving    the pinned dependencies that serving needs, no extra (the images' layer of their own)
#   ./install.sh package    the package only, without touching the dependencies
set -eu
cd "$(dirname "$0")"
stage="${1:-all}"
case "$stage" in
    all | deps | serving | package) ;;
    *) echo "usage: ./install.sh [all|deps|serving|package]" >&2; exit 2 ;;
esac
if [ "$stage" != package ]; then
    python -m pip install --no-cache-dir --upgrade pip
    if [ "$stage" = serving ]; then
        python -m pip install --no-cache-dir -r requirements.txt
    else
        python -m pip install --no-cache-dir -r requirements.txt -r requirements-extras.txt
    fi
fi
if [ "$stage" = all ] || [ "$stage" = package ]; then
    python -m pip install --no-cache-dir --no-deps .
fi
