"""DICOM out: C-STORE files to a destination AE (the PACS, usually), with a few retries."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import SpinegradeError

log = logging.getLogger("spinegrade.node")
_DEST = re.compile(r"(?P<aet>[^@]{1,16})@(?P<host>[^:@]+):(?P<port>\d{1,5})")


class NodeError(SpinegradeError):
    """A DICOM network problem explained in words (a destination that does not answer or refuses)."""


@dataclass(frozen=True)
class Destination:
    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def parse_destination(text: str) -> Destination:
    """'AET@HOST:PORT' -> Destination; raises NodeError with the expected form otherwise."""
    m = _DEST.fullmatch(str(text).strip())
    if not m or not 0 < int(m["port"]) < 65536:
        raise NodeError(f"destination {text!r}: expected AET@HOST:PORT, e.g. ORTHANC@127.0.0.1:4242")
    return Destination(m["aet"].strip(), m["host"], int(m["port"]))


def send_files(paths: list[Path], dest: Destination, calling_ae: str = "SPINEGRADE", attempts: int = 3,
               wait: float = 1.0, timeout: float = 30.0) -> None:
    """C-STORE every file to `dest` in one association; retried `attempts` times, waiting longer each time.

    Raises NodeError naming the destination and the last problem when it never succeeds.
    """
    import pydicom

    datasets = [pydicom.dcmread(p) for p in paths]
    problem = ""
    for attempt in range(1, attempts + 1):
        problem = _send_once(datasets, dest, calling_ae, timeout)
        if not problem:
            return
        log.warning("sending to %s failed (attempt %d of %d): %s", dest, attempt, attempts, problem)
        if attempt < attempts:
            time.sleep(wait * attempt)
    raise NodeError(f"could not send to {dest}: {problem}")


def _send_once(datasets, dest: Destination, calling_ae: str, timeout: float) -> str:
    """One association; '' on success, else what went wrong."""
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE

    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for cls in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(cls, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
    if not assoc.is_established:
        return "association rejected or the destination does not answer"
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            if code is None:
                return "no answer to C-STORE (connection lost or timed out)"
            if code != 0x0000 and not 0xB000 <= code <= 0xBFFF:  # 0xB... are warnings: stored
                return f"C-STORE status 0x{code:04X}"
        return ""
    finally:
        if assoc.is_established:
            assoc.release()
