#!/bin/sh
# The one install step, shared by CI, both Dockerfiles and the README: into the active Python.
set -eu
cd "$(dirname "$0")"
python -m pip install --no-cache-dir --upgrade pip
python -m pip install --no-cache-dir -r requirements.txt
python -m pip install --no-cache-dir --no-deps .
