#!/usr/bin/env bash
# Make Debian's headless chromium available for the browser tests (needs root and the Debian registry).
set -euo pipefail
command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || exit 1
  command -v chromium >/dev/null 2>&1
else
  exit 1
fi
