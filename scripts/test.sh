#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite; the 15 slowest tests are listed at the end (the suite should
# stay under about 15 min on 2 cores). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
bash scripts/browser.sh || echo "warning: headless chromium not available; browser tests will skip"
bash scripts/orthanc.sh || echo "warning: Orthanc (Debian orthanc, orthanc-dicomweb) not available; PACS tests will skip"
exec python -m pytest -q --durations=15 "$@"
