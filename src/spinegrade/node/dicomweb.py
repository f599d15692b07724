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


# dicomweb-client retries a request that fails with a busy server's status (429, 408, 503, 504) and, through the
# `retrying` package's default, one that raises (a refused connection) alike: 5 attempts waiting 2, 4, 8 and 16 s,
# so an unreachable server was reported after 30 s (and the web page that lists its studies took as long to open).
# Three attempts waiting 0.5 and 1 s still ride out a moment's overload.
RETRY_ATTEMPTS = 3
RETRY_WAIT_MS = 250  # the first wait is twice this


def client(url: str):
    """A dicomweb-client for a DICOMweb root URL (e.g. http://127.0.0.1:8042/dicom-web)."""
    from dicomweb_client.api import DICOMwebClient

    c = DICOMwebClient(url=url.rstrip("/"))
    c.set_http_retry_params(retry=True, max_attempts=RETRY_ATTEMPTS, wait_exponential_multiplier=RETRY_WAIT_MS)
    return c


def fetch_study(url: str, study_uid: str, folder: Path, max_bytes: int | None = None) -> int:
    """Retrieve the MR images of a study into `folder` (as stored on the server); returns how many.

    Instances of other classes (an SR, key images, a presentation state a PACS keeps beside the images) are
    left out, so a study graded before is read as its images alone. DataError when the study is unknown, has
    no MR image, or holds more than `max_bytes`.
    """
    import requests

    from .listen import MR_CLASSES

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n = others = size = 0
    try:
        for ds in client(url).iter_study(study_uid):
            cls = str(ds.get("SOPClassUID", "") or "")
            if cls and cls not in MR_CLASSES:
                others += 1
                continue
            path = folder / f"{safe_name(ds.SOPInstanceUID)}.dcm"
            ds.save_as(path, enforce_file_format=True)
            n += 1
            size += path.stat().st_size
            if max_bytes is not None and size > max_bytes:
                raise DataError(f"{url}: study {study_uid} is larger than the limit of {max_bytes / 2**20:.0f} MB")
    except requests.HTTPError as e:
        code = e.response.status_code if e.response is not None else "?"
        if code == 404:
            raise DataError(f"{url}: no study {study_uid} on this DICOMweb server") from None
        raise NodeError(f"{url}: WADO-RS retrieve of study {study_uid} failed (HTTP {code})") from None
    except requests.RequestException as e:
        raise NodeError(f"{url}: DICOMweb server not reachable ({type(e).__name__})") from None
    if not n:
        what = f"only {others} instances that are not MR images" if others else "no instances retrieved"
        raise DataError(f"{url}: no MR images of study {study_uid} on this DICOMweb server ({what})")
    if others:
        log.info("study %s: left out %d instances that are not MR images", study_uid, others)
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


def list_studies(url: str, limit: int = 200) -> list[dict]:
    """QIDO-RS: the server's studies as {study_uid, date, description, series, modalities}, newest first.

    Patient identifiers are not asked for and not passed on: a study is named by its Study Instance UID.
    """
    import requests

    fields = ["StudyInstanceUID", "StudyDate", "StudyDescription", "ModalitiesInStudy",
              "NumberOfStudyRelatedSeries"]
    try:
        found = client(url).search_for_studies(limit=limit, fields=fields)
    except requests.HTTPError as e:
        code = e.response.status_code if e.response is not None else "?"
        raise NodeError(f"{url}: QIDO-RS study search failed (HTTP {code})") from None
    except requests.RequestException as e:
        raise NodeError(f"{url}: DICOMweb server not reachable ({type(e).__name__})") from None

    def value(d, tag, default=""):
        v = d.get(tag, {}).get("Value") or [default]
        return v if tag == "00080061" else v[0]

    studies = [{"study_uid": str(value(d, "0020000D")), "date": str(value(d, "00080020")),
                "description": str(value(d, "00081030")), "series": int(value(d, "00201206", 0) or 0),
                "modalities": [str(m) for m in value(d, "00080061")]} for d in found]
    return sorted(studies, key=lambda s: (s["date"], s["study_uid"]), reverse=True)


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
