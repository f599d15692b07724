"""Associations that end abnormally: the node says which side ended them, and aborts a silent one itself."""

from __future__ import annotations

import logging

from dicom_net import send_direct, synthetic_studies, wait_until
from orthanc_pacs import free_port

from spinegrade.node.listen import Node, NodeConfig
from spinegrade.node.send import Destination


def test_a_silent_association_is_aborted_and_a_peer_abort_is_named(tiny_run, synth_cohort, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="spinegrade.node")
    port = free_port()
    nowhere = Destination("NOWHERE", "127.0.0.1", free_port())  # nothing is graded, so nothing is sent
    node = Node(NodeConfig(model=tiny_run, destination=nowhere, store=tmp_path / "store", port=port,
                           quiet_seconds=60.0, idle_timeout=2.0))
    node.start()
    try:
        a, b = synthetic_studies(synth_cohort, 2)
        ua, ub = str(a[0].StudyInstanceUID), str(b[0].StudyInstanceUID)
        # the sender aborts half-way: the study waits for its resend, the log names the peer
        statuses, assoc = send_direct(a[:2], port, release=False)
        assert set(statuses) == {0} and node.state(ua).state == "receiving"
        assoc.abort()
        assert wait_until(lambda: node.state(ua).state == "interrupted", timeout=30)
        assert wait_until(lambda: "was aborted by the peer or lost" in caplog.text, timeout=10)
        assert "the node aborted it" not in caplog.text
        # the sender goes silent with the association open: after idle_timeout the node aborts it
        statuses, assoc = send_direct(b[:2], port, release=False)
        assert set(statuses) == {0} and node.state(ub).state == "receiving"
        assert wait_until(lambda: not assoc.is_established, timeout=30)
        assert wait_until(lambda: node.state(ub).state == "interrupted", timeout=10)
        assert "silent for 2 s; the node aborted it" in caplog.text
        assert node.gradings == 0
    finally:
        node.stop()
