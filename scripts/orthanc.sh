#!/usr/bin/env bash
# Make Debian's Orthanc PACS and its DICOMweb plugin available for the DICOM network tests (needs root and
# the Debian registry). The package's service is not started: the tests run their own Orthanc on free
# loopback ports with a throw-away storage folder.
set -euo pipefail
PLUGIN=/usr/share/orthanc/plugins/libOrthancDicomWeb.so
command -v Orthanc >/dev/null 2>&1 && [ -e "$PLUGIN" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc orthanc-dicomweb >/dev/null) \
    || exit 1
  command -v Orthanc >/dev/null 2>&1 && [ -e "$PLUGIN" ]
else
  exit 1
fi
