"""The JSON Schema of the policy file, for editors and validation tools.

Regenerate the committed copy with: python -m auto_resume.policy.schema > policy.schema.json
"""

from __future__ import annotations

import json
import sys
from typing import Any

from auto_resume.policy.model import Policy


def policy_json_schema() -> dict[str, Any]:
    """Returns the JSON Schema of the policy file, for editors and validation tools.

    Returns:
        `Policy.model_json_schema()` with `$schema` and `title` set.
    """
    schema = Policy.model_json_schema()
    schema["title"] = "auto-resume policy"
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


if __name__ == "__main__":
    sys.stdout.write(json.dumps(policy_json_schema(), indent=2) + "\n")
