import json

import pytest

from spinegrade import vocab
from spinegrade.cli import main


def test_targets_and_row_ids():
    assert len(vocab.TARGETS) == 25
    assert vocab.TARGETS[0] == "spinal_canal_stenosis_l1_l2"
    assert vocab.row_id(123, "Spinal Canal Stenosis", "L4/L5") == "123_spinal_canal_stenosis_l4_l5"
    assert vocab.parse_row_id("44036939_left_subarticular_stenosis_l5_s1") == (
        "44036939", "left_subarticular_stenosis", "l5_s1")
    with pytest.raises(ValueError):
        vocab.parse_row_id("44036939_left_subarticular_stenosis_l5_l6")
    assert vocab.SUBMISSION_TARGETS[0] == "left_neural_foraminal_narrowing_l1_l2"
    assert vocab.SUBMISSION_TARGETS[-1] == "spinal_canal_stenosis_l5_s1"


def test_parsers_accept_both_spellings():
    assert vocab.parse_condition("Left Neural Foraminal Narrowing") == "left_neural_foraminal_narrowing"
    assert vocab.parse_level("L5/S1") == "l5_s1"
    assert vocab.parse_severity("Normal/Mild") == 0
    assert vocab.parse_severity("normal") == 0
    assert vocab.parse_severity("Severe") == 2
    assert vocab.parse_role("Sagittal T2/STIR") == vocab.SAGITTAL_T2
    for bad, fn in (("Lateral Stenosis", vocab.parse_condition), ("L6/L7", vocab.parse_level),
                    ("Awful", vocab.parse_severity)):
        with pytest.raises(ValueError, match="unknown"):
            fn(bad)


def test_mirror_swaps_sides():
    assert vocab.mirror_condition("left_subarticular_stenosis") == "right_subarticular_stenosis"
    assert vocab.mirror_condition("right_neural_foraminal_narrowing") == "left_neural_foraminal_narrowing"
    assert vocab.mirror_condition("spinal_canal_stenosis") == "spinal_canal_stenosis"


def test_vocab_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, spinegrade.vocab, spinegrade.cli; assert 'torch' not in sys.modules and 'numpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_info_json(capsys):
    assert main(["info", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert [c["key"] for c in d["conditions"]] == list(vocab.CONDITIONS)
    assert d["severities"][2] == {"name": "Severe", "key": "severe", "weight": 4.0}
    assert len(d["targets"]) == 25


def test_no_module_but_vocab_spells_a_condition_key():
    """The task's words live in vocab.py: a condition key written out elsewhere drifts the day one changes."""
    import ast
    from pathlib import Path

    import spinegrade

    words = set(vocab.CONDITIONS) | set(vocab.FAMILY_TERMS.values())
    root = Path(spinegrade.__file__).parent
    found = []
    for path in root.rglob("*.py"):
        if path.name == "vocab.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                      and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                if node.value in words:
                    found.append(f"{path.relative_to(root)}:{node.lineno} {node.value!r}")
    assert not found, "spelled outside vocab.py: " + "; ".join(found)
