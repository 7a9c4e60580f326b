"""Sanity checks for the data files shipped in ppgguf/data."""

import json
import re
from importlib.resources import files

DATA = files("ppgguf") / "data"


def _norm(text: str) -> str:
    text = re.sub(r"[^\w\s]", "", text.lower())
    return " ".join(text.split())


def test_questions_unique_and_varied():
    rows = [
        json.loads(line)
        for line in (DATA / "questions.jsonl").read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    for row in rows:
        assert isinstance(row.get("topic"), str) and row["topic"].strip()
        assert isinstance(row.get("question"), str) and row["question"].strip()
    normalized = [_norm(row["question"]) for row in rows]
    assert len(set(normalized)) == len(normalized), "duplicate questions"
    assert len(set(normalized)) >= 1500
    assert len({row["topic"] for row in rows}) >= 25


def test_reference_personas():
    personas = json.loads((DATA / "reference_personas.json").read_text(encoding="utf-8"))
    assert isinstance(personas, list) and len(personas) >= 12
    for p in personas:
        assert p.get("name", "").strip()
        assert p.get("description", "").strip()
    assert len({p.get("kind") for p in personas}) >= 4


def test_generic_calibration_text():
    text = (DATA / "generic_calibration.txt").read_text(encoding="utf-8")
    assert len(text.split()) >= 5000
