"""Lays out JSON schemas for kubeconform to validate the Helm chart's manifests offline.

Two sources, both fetched by .ci/helm-check through ordinary package clients:

- `kubernetes`: the Kubernetes schemas that the PyPI package kubernetes-validate ships for each release
  (its `v<version>-local-strict` folders, where every object forbids fields it does not define). Their
  references point at `/api/_definitions.json` under a web `$id`; rewritten here to the sibling file, so a
  validator resolves them on disk and never goes to the network.
- `crds`: CustomResourceDefinitions (Prometheus Operator, KEDA) from their Go modules; each served
  version's openAPIV3Schema becomes `<group>/<kind>_<version>.json`, made strict the same way (an object
  with declared properties and no `additionalProperties` rejects others, unless it preserves unknown fields).

- `values-schema`: the `config` part of the chart's values.schema.json, from the settings model itself
  (streamquant/settings.py): every section the chart passes on, every field but the secrets (they come from
  a Secret) and the per-instance ids (each pod's own host name), so `helm lint`/`install` reject a misspelt
  or out-of-range setting before a pod starts. tests/unit/test_helm_chart.py checks it is current.

Uses the standard library and PyYAML only (and the project, for `values-schema`).
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

WHEEL_ROOT = "kubernetes_validate/kubernetes-json-schema"


def _local_refs(node: Any) -> Any:
    """The schema with its web `$id` dropped and `.../_definitions.json#...` refs made file-relative."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "$id":
                continue
            if key == "$ref" and isinstance(value, str) and "_definitions.json#" in value:
                value = "_definitions.json#" + value.split("#", 1)[1]
            out[key] = _local_refs(value)
        return out
    if isinstance(node, list):
        return [_local_refs(v) for v in node]
    return node


def kubernetes(wheel: Path, out: Path, versions: list[str]) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        for version in versions:
            prefix = f"{WHEEL_ROOT}/v{version}-local-strict/"
            members = [n for n in names if n.startswith(prefix) and n.endswith(".json")]
            if not members:
                available = sorted({n[len(WHEEL_ROOT) + 1:].split("/")[0] for n in names if n.startswith(WHEEL_ROOT)})
                sys.exit(f"{wheel.name} has no schemas for Kubernetes {version}; it has {', '.join(available)}")
            target = out / f"v{version}-strict"
            target.mkdir(parents=True, exist_ok=True)
            for name in members:
                schema = _local_refs(json.loads(zf.read(name)))
                (target / PurePosixPath(name).name).write_text(json.dumps(schema, separators=(",", ":")))
            print(f"kubernetes {version}: {len(members)} schemas in {target}")


def _strict(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _strict(v) for k, v in node.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


def crds(out: Path, files: list[Path]) -> None:
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            group, kind = spec["group"], spec["names"]["kind"]
            for version in spec["versions"]:
                if not version.get("served", True):
                    continue
                schema = _strict(version["schema"]["openAPIV3Schema"])
                # apiVersion and kind are plain strings in a CRD's schema: pin them to this resource.
                props = schema.setdefault("properties", {})
                props["apiVersion"] = {"type": "string", "enum": [f"{group}/{version['name']}"]}
                props["kind"] = {"type": "string", "enum": [kind]}
                target = out / group / f"{kind.lower()}_{version['name']}.json"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(json.dumps(schema, separators=(",", ":")))
                print(f"crd {group}/{version['name']} {kind}: {target}")


# Sections the chart passes to the processors (`dev` is the local stack's), and fields it never puts in the
# ConfigMap: secrets come from a Secret; an instance id shared by every replica would make them fence each
# other's transactions (the default, the pod's host name, is unique).
CHART_SECTIONS = ("kafka", "redis", "topics", "ingest", "metrics", "features", "jobs", "predictions")
NOT_IN_CONFIG = {"sasl_password", "ssl_key_password", "password", "instance_id"}


def config_schema() -> dict[str, Any]:
    """The JSON schema of the chart's `config` values, derived from the settings model."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from streamquant.settings import Settings

    def field(schema: dict[str, Any]) -> dict[str, Any]:
        schema = {k: v for k, v in schema.items() if k not in ("title", "default")}
        if schema.get("type") == "null" or any(s.get("type") == "null" for s in schema.get("anyOf", [])):
            return schema
        return {"anyOf": [schema, {"type": "null"}]}

    sections: dict[str, Any] = {}
    for name in CHART_SECTIONS:
        model = Settings.model_fields[name].annotation
        props = model.model_json_schema()["properties"]  # type: ignore[union-attr]
        sections[name] = {
            "type": ["object", "null"],
            "additionalProperties": False,
            "properties": {f: field(s) for f, s in props.items() if f not in NOT_IN_CONFIG},
        }
    return {"type": "object", "additionalProperties": False, "properties": sections,
            "description": "STREAMQUANT_<SECTION>_<FIELD> settings (streamquant/settings.py); generated by "
                           "`python .ci/helm_schemas.py values-schema`"}


def values_schema(path: Path) -> None:
    schema = json.loads(path.read_text())
    schema["properties"]["config"] = config_schema()
    path.write_text(json.dumps(schema, indent=2) + "\n")
    print(f"{path}: config from streamquant/settings.py")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    k = sub.add_parser("kubernetes", help="Kubernetes schemas from a kubernetes-validate wheel")
    k.add_argument("--wheel", type=Path, required=True)
    k.add_argument("--out", type=Path, required=True)
    k.add_argument("versions", nargs="+", help="e.g. 1.25.0 1.37.0")
    c = sub.add_parser("crds", help="schemas of CustomResourceDefinition files")
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("files", nargs="+", type=Path)
    v = sub.add_parser("values-schema", help="rewrite the config part of the chart's values.schema.json")
    v.add_argument("--file", type=Path, default=Path("helm/streamquant/values.schema.json"))
    args = parser.parse_args()
    if args.what == "kubernetes":
        kubernetes(args.wheel, args.out, args.versions)
    elif args.what == "crds":
        crds(args.out, args.files)
    else:
        values_schema(args.file)


if __name__ == "__main__":
    main()
