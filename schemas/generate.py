"""Writes the JSON Schema and Avro files from the record dataclasses: `python -m schemas.generate`."""

from __future__ import annotations

import json
from pathlib import Path

from schemas.records import RECORD_TYPES
from schemas.registry import CURRENT_VERSION, file_stem
from schemas.spec import avro_schema, json_schema

ROOT = Path(__file__).parent


def rendered() -> dict[Path, str]:
    """Every generated file's path and its exact text."""
    out: dict[Path, str] = {}
    for name, cls in RECORD_TYPES.items():
        version = CURRENT_VERSION[name]
        stem = file_stem(name, version)
        out[ROOT / "json" / f"{stem}.json"] = json.dumps(json_schema(cls, version), indent=2) + "\n"
        out[ROOT / "avro" / f"{stem}.avsc"] = json.dumps(avro_schema(cls), indent=2) + "\n"
    return out


def main() -> None:
    for path, text in rendered().items():
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        print(path.relative_to(ROOT.parent))


if __name__ == "__main__":
    main()
