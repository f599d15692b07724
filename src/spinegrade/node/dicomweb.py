"""DICOMweb: pull a study from a server by WADO-RS, grade it with `predict`, store the SR back by STOW-RS.

`predict_dicomweb` is what `spinegrade predict --dicomweb URL --study UID [--stow URL]` runs. Instances are
written to a temporary study folder one by one as they arrive (never the whole study in memory) and the
folder is deleted afterwards; the outputs are those of `predict` on a study folder.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from ..errors import DataError
from .send import NodeError
from .spool import safe_name

log = logging.getLogger("spinegrade.node")


def client(url: str):
    """A dicomweb-client for a DICOMweb root URL (e.g. http://127.0.0.1:8042/dicom-web)."""
    from dicomweb_client.api import DICOMwebClient

    return DICOMwebClient(url=url.rstrip("/"))


def fetch_study(url: str, study_uid: str, folder: Path) -> int:
    """Retrieve every instance of a study into `folder` (as stored on the server); returns how many."""
    import requests

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    try:
        for ds in client(url).iter_study(study_uid):
            ds.save_as(folder / f"{safe_name(ds.SOPInstanceUID)}.dcm", enforce_file_format=True)
            n += 1
    except requests.HTTPError as e:
        code = e.response.status_code if e.response is not None else "?"
        if code == 404:
            raise DataError(f"{url}: no study {study_uid} on this DICOMweb server") from None
        raise NodeError(f"{url}: WADO-RS retrieve of study {study_uid} failed (HTTP {code})") from None
    except requests.RequestException as e:
        raise NodeError(f"{url}: DICOMweb server not reachable ({type(e).__name__})") from None
    if not n:
        raise DataError(f"{url}: no study {study_uid} on this DICOMweb server (no instances retrieved)")
    return n


def stow(url: str, paths: list[Path]) -> None:
    """Store files on a DICOMweb server by STOW-RS."""
    import pydicom
    import requests

    try:
        client(url).store_instances([pydicom.dcmread(p) for p in paths])
    except requests.HTTPError as e:
        code = e.response.status_code if e.response is not None else "?"
        raise NodeError(f"{url}: STOW-RS refused the SR (HTTP {code})") from None
    except requests.RequestException as e:
        raise NodeError(f"{url}: DICOMweb server not reachable ({type(e).__name__})") from None


def list_studies(url: str, limit: int = 100) -> list[dict]:
    """QIDO-RS: the server's studies as {study_uid, date, description, modalities} (no patient identifiers)."""
    import requests

    try:
        found = client(url).search_for_studies(limit=limit)
    except requests.RequestException as e:
        raise NodeError(f"{url}: QIDO-RS study search failed ({type(e).__name__})") from None

    def value(d, tag):
        v = d.get(tag, {}).get("Value") or [""]
        return v if tag == "00080061" else v[0]

    return [{"study_uid": value(d, "0020000D"), "date": value(d, "00080020"),
             "description": value(d, "00081030"), "modalities": value(d, "00080061")} for d in found]


def predict_dicomweb(url: str, study_uid: str, model: Path, out: Path, stow_url: str | None = None,
                     device: str = "cpu", report: bool = False, dicom_sr: bool = False, log=print,
                     foramina: Path | str | None = None) -> dict:
    """Pull one study by WADO-RS, grade it like `predict` (outputs in `out`), STOW the SR to `stow_url` if given.

    Returns `predict`'s summary with "instances" (how many were retrieved) and "stowed" (SR files sent).
    """
    from ..predict import predict

    with tempfile.TemporaryDirectory(prefix="spinegrade-wado-") as tmp:
        folder = Path(tmp) / safe_name(study_uid)
        n = fetch_study(url, study_uid, folder)
        log(f"retrieved {n} instances of study {study_uid} from {url}")
        summary = predict(folder, model, out, device=device, strict=True, report=report,
                          dicom_sr=dicom_sr or bool(stow_url), log=log, foramina=foramina)
    summary["instances"] = n
    summary["stowed"] = []
    if stow_url:
        srs = [Path(out) / f"{safe_name(study_uid)}_sr.dcm"]  # predict names it after the study folder
        stow(stow_url, srs)
        summary["stowed"] = [p.name for p in srs]
        log(f"stored {len(srs)} SR(s) on {stow_url}")
    return summary
