"""The node's pieces that need no network: destinations, file names for UIDs, the spool's fingerprint."""

from __future__ import annotations

import pytest

from spinegrade.cli import main
from spinegrade.node.send import Destination, NodeError, parse_destination
from spinegrade.node.spool import Spool, safe_name


def test_destination_is_parsed_or_refused_in_words(capsys):
    assert parse_destination("ORTHANC@127.0.0.1:4242") == Destination("ORTHANC", "127.0.0.1", 4242)
    assert str(parse_destination("PACS_1@pacs.example.org:104")) == "PACS_1@pacs.example.org:104"
    for bad in ("ORTHANC@127.0.0.1", "127.0.0.1:4242", "A@h:0", "A@h:70000", "SEVENTEEN_LETTERS@h:1"):
        with pytest.raises(NodeError, match="expected AET@HOST:PORT"):
            parse_destination(bad)
    rc = main(["listen", "--model", "nowhere", "--port", "11112", "--destination", "PACS"])
    err = capsys.readouterr().err
    assert rc == 2 and "expected AET@HOST:PORT" in err and "Traceback" not in err


def test_uids_become_safe_file_names():
    assert safe_name("1.2.840.113619.2.55") == "1.2.840.113619.2.55"
    assert safe_name("100206310.1.1\x00") == "100206310.1.1"  # DICOM pads UIDs with NUL
    for hostile in ("../../etc/passwd", "1..2", "a b", "1.2/3", ""):
        name = safe_name(hostile)
        assert name.startswith("h") and len(name) == 21 and "/" not in name and "." not in name
    assert safe_name("../x") != safe_name("../y")


def test_fingerprint_follows_bytes_and_names(tmp_path):
    spool = Spool(tmp_path)
    assert spool.write_instance("s", "1.2", "1.2.3", b"abc") == 3
    fp1, n = spool.fingerprint("s")
    assert n == 1
    assert spool.write_instance("s", "1.2", "1.2.3", b"abc") == 0  # the same instance again
    assert spool.fingerprint("s") == (fp1, 1)
    spool.write_instance("s", "1.2", "1.2.3", b"abd")  # corrected
    assert spool.fingerprint("s")[0] != fp1
    spool.write_instance("s", "1.2", "1.2.3", b"abc")
    spool.write_instance("s", "1.3", "1.2.3", b"abc")  # the same SOP UID in another series is another file
    assert spool.fingerprint("s")[1] == 2
    (spool.images("s") / "1.2" / ".1.2.4.dcm.123-abcd.tmp.dcm").write_bytes(b"half")  # a killed write
    again = Spool(tmp_path)
    assert not list(again.images("s").rglob(".*")) and again.bytes_used == 6
