"""The README shows the exact Orthanc configuration the tests run with."""

from __future__ import annotations

import json
import re
from pathlib import Path

from orthanc_pacs import orthanc_config

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_orthanc_block_is_the_fixture_configuration():
    text = README.read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```json\n(.*?)```", text, re.S) if '"DicomModalities"' in b]
    assert len(blocks) == 1, "the README's Orthanc configuration block is missing or doubled"
    shown = json.loads(re.sub(r'"?<[^>]+>"?', '"?"', blocks[0]))  # placeholders: the temporary folder, ports
    ports = (40001, 40002, 40003)  # the dicom, http and node ports
    actual = orthanc_config(Path("/tmp/x"), *ports)

    def blank(v):
        if isinstance(v, dict):
            return {k: blank(x) for k, x in v.items()}
        if isinstance(v, list):
            return [blank(x) for x in v]
        return "?" if v == "/tmp/x" or (type(v) is int and v in ports) else v

    assert shown == blank(actual)
