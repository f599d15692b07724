"""Fixtures of the DICOM network tests: an Orthanc PACS, a running node, studies to send."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pydicom
import pytest
from dicom_net import repaired_copy
from orthanc_pacs import Orthanc, free_port, missing


def need_orthanc() -> None:
    """Skip with the reason when Orthanc cannot run here (fail instead under CI's SPINEGRADE_REQUIRE_ORTHANC)."""
    why = missing()
    if why:
        if os.environ.get("SPINEGRADE_REQUIRE_ORTHANC"):
            pytest.fail(why)
        pytest.skip(why)


@pytest.fixture(scope="session")
def node_port() -> int:
    """The port of the in-process node, known before Orthanc starts (its config names the node)."""
    return free_port()


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory, node_port):
    need_orthanc()
    pacs = Orthanc(tmp_path_factory.mktemp("orthanc"), node_port).start()
    yield pacs
    pacs.stop()


@pytest.fixture(scope="session")
def predictor(tiny_run):
    from spinegrade.predict import Predictor

    return Predictor(tiny_run, "cpu")


# With a 1 s quiet period a loaded machine (load 12 on 2 cores) once graded one of ten studies Orthanc sent
# before the rest of it had arrived (the node then graded it again and sent one SR, but the first grading was
# wasted). A quiet period longer than Orthanc's DicomAssociationCloseDelay (5 s) spans a pause between two
# associations carrying one study.
QUIET_SECONDS = 6.0


@pytest.fixture(scope="module")
def node(orthanc, tiny_run, node_port, tmp_path_factory):
    """A node graded with the one-epoch run, sending its SRs to the Orthanc fixture."""
    from spinegrade.node.listen import Node, NodeConfig
    from spinegrade.node.send import Destination

    logging.getLogger("spinegrade.node").setLevel(logging.INFO)
    dest = Destination(orthanc.ae_title, "127.0.0.1", orthanc.dicom_port)
    cfg = NodeConfig(model=tiny_run, destination=dest, store=tmp_path_factory.mktemp("node_store"), port=node_port,
                     quiet_seconds=QUIET_SECONDS)
    n = Node(cfg)
    n.start()
    yield n
    n.stop()


@pytest.fixture(scope="session")
def real_copies(two_studies, tmp_path_factory) -> dict[str, Path]:
    """{StudyInstanceUID: folder of the repaired copy} for the two real studies."""
    root = tmp_path_factory.mktemp("real_copies")
    out = {}
    for d in sorted((two_studies / "train_images").iterdir()):
        files = repaired_copy(d, root / d.name)
        out[str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)] = root / d.name
    return out
