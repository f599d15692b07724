#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
bash scripts/browser.sh || echo "warning: headless chromium not available; browser tests will skip"
bash scripts/orthanc.sh || echo "warning: Orthanc (Debian orthanc, orthanc-dicomweb) not available; PACS tests will skip"
exec python -m pytest -q "$@"
