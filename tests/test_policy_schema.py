"""Tests for auto_resume.policy.schema: the committed JSON Schema is the models' own."""

from __future__ import annotations

import json
from pathlib import Path

from auto_resume.policy.schema import policy_json_schema

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_committed_schema_matches_models() -> None:
    committed = (REPO_ROOT / "policy.schema.json").read_text()
    expected = json.dumps(policy_json_schema(), indent=2) + "\n"
    assert committed == expected, (
        "policy.schema.json is stale; regenerate it with "
        "`python -m auto_resume.policy.schema > policy.schema.json`"
    )
    schema = policy_json_schema()
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["title"] == "auto-resume policy"
