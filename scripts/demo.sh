#!/usr/bin/env bash
# Set up (if needed) and run the main job on built-in synthetic data. Extra arguments go to `spinegrade demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec spinegrade demo "$@"
