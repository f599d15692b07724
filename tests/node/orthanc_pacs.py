"""A real PACS for the tests: Debian's Orthanc with its DICOMweb plugin, on free loopback ports, with a
throw-away storage folder, driven through its REST API. `bash scripts/orthanc.sh` installs it (as root)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import requests

ORTHANC_BIN = "Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
NODE_NAME = "spinegrade"  # the node's entry in Orthanc's DicomModalities


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _end_with_parent() -> None:
    """In the Orthanc child, before exec: Linux kills it (SIGKILL) when the process that started it ends, however
    that ends (kill -9 of pytest included); the setting survives exec. The fixtures start it from the main thread,
    which lives as long as the test process."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG


def missing() -> str:
    """Why Orthanc cannot run here ('' when it can)."""
    if not shutil.which(ORTHANC_BIN):
        return "Orthanc is not installed (as root: bash scripts/orthanc.sh, which apt-installs orthanc)"
    if not DICOMWEB_PLUGIN.exists():
        return f"the Orthanc DICOMweb plugin is not installed ({DICOMWEB_PLUGIN}; Debian package orthanc-dicomweb)"
    return ""


def orthanc_config(storage: Path, dicom_port: int, http_port: int, node_port: int,
                   node_ae: str = "SPINEGRADE") -> dict:
    """The configuration the tests run Orthanc with (the README shows it)."""
    return {
        "Name": "spinegrade-test-pacs",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,  # HTTP from this machine only
        "AuthenticationEnabled": False,
        # only the known modalities (the node, from its address) may store into this PACS
        "DicomAlwaysAllowStore": False,
        "DicomCheckModalityHost": True,
        "DicomModalities": {NODE_NAME: [node_ae, "127.0.0.1", node_port]},
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "ConcurrentJobs": 4,
        "DicomScuTimeout": 120,  # a busy test machine answers slowly; the default is 10 s
        "StableAge": 1,
    }


class Orthanc:
    """One Orthanc process and a small REST client for it."""

    def __init__(self, root: Path, node_port: int):
        self.root = Path(root)
        self.dicom_port, self.http_port, self.node_port = free_port(), free_port(), node_port
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb = f"{self.url}/dicom-web"
        self.ae_title = "ORTHANC"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> Orthanc:
        storage = self.root / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        cfg = self.root / "orthanc.json"
        cfg.write_text(json.dumps(orthanc_config(storage, self.dicom_port, self.http_port, self.node_port), indent=1))
        self.log = open(self.root / "orthanc.log", "wb")
        self.proc = subprocess.Popen([ORTHANC_BIN, str(cfg)], stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=self.root, env={**os.environ, "LC_ALL": "C"},
                                     preexec_fn=_end_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}: see {self.root / 'orthanc.log'}")
            try:
                if requests.get(self.url + "/system", timeout=1).ok:
                    return self
            except requests.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError(f"Orthanc did not answer within {timeout} s: see {self.root / 'orthanc.log'}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    # --- REST ---------------------------------------------------------------------------------------------
    def get(self, path: str):
        r = requests.get(self.url + path, timeout=60)
        r.raise_for_status()
        return r.json() if "json" in r.headers.get("content-type", "") else r.content

    def post(self, path: str, body=None, data: bytes | None = None):
        r = requests.post(self.url + path, json=body if data is None else None, data=data, timeout=300)
        r.raise_for_status()
        return r.json() if "json" in r.headers.get("content-type", "") else r.content

    def upload(self, files) -> list[str]:
        """Upload DICOM files; their Orthanc instance ids."""
        return [self.post("/instances", data=Path(f).read_bytes())["ID"] for f in files]

    def upload_datasets(self, datasets) -> list[str]:
        """Upload pydicom datasets (written to memory as DICOM files); their Orthanc instance ids."""
        from io import BytesIO

        ids = []
        for ds in datasets:
            buf = BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            ids.append(self.post("/instances", data=buf.getvalue())["ID"])
        return ids

    def add_modality(self, name: str, ae_title: str, port: int, host: str = "127.0.0.1") -> None:
        r = requests.put(f"{self.url}/modalities/{name}", json={"AET": ae_title, "Host": host, "Port": port},
                         timeout=30)
        r.raise_for_status()

    def study_id(self, study_uid: str) -> str | None:
        hits = self.post("/tools/lookup", data=study_uid.encode())
        ids = [h["ID"] for h in hits if h["Type"] == "Study"]
        return ids[0] if ids else None

    def send_study(self, study_uid: str, modality: str = NODE_NAME, asynchronous: bool = False):
        """Have Orthanc C-STORE a whole study to a modality (REST /modalities/<name>/store)."""
        return self.post(f"/modalities/{modality}/store",
                         {"Resources": [self.study_id(study_uid)], "Asynchronous": asynchronous})

    def instances(self, study_uid: str) -> list[dict]:
        """[{SOPInstanceUID, Modality, SeriesInstanceUID, ID}] of a study as Orthanc holds it."""
        sid = self.study_id(study_uid)
        if sid is None:
            return []
        out = []
        for series in self.get(f"/studies/{sid}/series"):
            for inst in self.get(f"/series/{series['ID']}/instances"):
                out.append({"SOPInstanceUID": inst["MainDicomTags"]["SOPInstanceUID"],
                            "Modality": series["MainDicomTags"].get("Modality", ""),
                            "SeriesInstanceUID": series["MainDicomTags"]["SeriesInstanceUID"], "ID": inst["ID"]})
        return out

    def srs(self, study_uid: str) -> list[dict]:
        return [i for i in self.instances(study_uid) if i["Modality"] == "SR"]

    def wait_for_srs(self, study_uids, timeout: float = 60.0, n: int = 1) -> dict[str, list[dict]]:
        """Wait until each study holds `n` SR instances; {study uid: its SR instances} (what there is at the end)."""
        deadline = time.monotonic() + timeout
        while True:
            got = {u: self.srs(u) for u in study_uids}
            if all(len(v) >= n for v in got.values()) or time.monotonic() > deadline:
                return got
            time.sleep(0.3)

    def file(self, instance_id: str) -> bytes:
        return self.get(f"/instances/{instance_id}/file")
