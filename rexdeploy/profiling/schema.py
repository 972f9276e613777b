"""The profile result as a versioned JSON document (what `rexdeploy profile --json FILE` writes
and `--baseline FILE` reads).

    {"schema": "rexdeploy.profile", "schema_version": 1, "rexdeploy_version", "created" (UTC),
     "settings": {...}, "device": {...devinfo.device_info()},
     "artifact" (the first artifact's path), "artifacts": [paths],
     "variants": [{"label", "kind" ("artifact" | "float"), "artifact", "precision" (asked for),
                   "info" (what the runtime reports: inference_precision, streams, threads, ...),
                   "latency_ms": {min, median, mean, p90, p95, p99, max, std}, "cov",
                   "iterations", "cpu_ms", "throughput_fps", "throughput": {...} | None,
                   "layers": {"rows": [...], "sum_ms", "wall_ms", "sum_vs_wall", ...} | None,
                   "rounds": [...], "ratio_vs": {...}, "warnings": [...], "times_ms"?}]}

Version 1 keeps every key the earlier unversioned `--save` file had (variants[].label,
variants[].latency_ms.median, variants[].info.inference_precision), so readers of that file keep
working; `load_profile` accepts such a file as version 0.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone

from rexdeploy.errors import UserError

SCHEMA = "rexdeploy.profile"
SCHEMA_VERSION = 1
LATENCY_KEYS = ("min", "median", "mean", "p90", "p95", "p99", "max", "std")
VARIANT_KEYS = ("label", "kind", "info", "latency_ms", "cov", "iterations", "throughput_fps",
                "throughput", "layers", "warnings")


def to_document(variants: list[dict], *, device: dict, settings: dict,
                artifacts: list[str]) -> dict:
    """Results of profiler.profile_variants (with "kind", "artifact", "layers" added per
    variant) -> the schema's document. cov moves out of latency_ms (it has no unit)."""
    from rexdeploy import __version__

    out = []
    for v in variants:
        lat = dict(v["latency_ms"])
        cov = v.get("cov", lat.pop("cov", None))
        lat.pop("cov", None)
        tput = v.get("throughput")
        out.append({**v, "latency_ms": lat, "cov": cov,
                    "throughput_fps": None if tput is None else tput["fps"],
                    "kind": v.get("kind", "artifact"), "layers": v.get("layers")})
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "rexdeploy_version": __version__,
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "settings": settings, "device": device,
            "artifact": artifacts[0] if artifacts else None, "artifacts": list(artifacts),
            "variants": out}


def validate(doc, where: str = "profile document") -> dict:
    """Check a document's schema and the keys every reader relies on; UserError if wrong.
    An unversioned file of the earlier `--save` (variants with latency_ms.median) passes as
    version 0. Returns the document."""
    if not isinstance(doc, dict) or not isinstance(doc.get("variants"), list):
        raise UserError(f"{where} is not a rexdeploy profile (no variants list)",
                        "write one with `rexdeploy profile ARTIFACT --json FILE`")
    schema, version = doc.get("schema"), doc.get("schema_version", 0)
    if schema is not None and schema != SCHEMA:
        raise UserError(f"{where} has schema {schema!r}, not {SCHEMA!r}")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise UserError(f"{where} has schema version {version!r}; this rexdeploy reads up to "
                        f"{SCHEMA_VERSION}", "upgrade rexdeploy or re-run the profile")
    if not doc["variants"]:
        raise UserError(f"{where} holds no variants")
    needed = VARIANT_KEYS if schema == SCHEMA else ("label", "latency_ms")
    for i, v in enumerate(doc["variants"]):
        missing = [k for k in needed if not isinstance(v, dict) or k not in v]
        lat = v.get("latency_ms") if isinstance(v, dict) else None
        if not missing and schema == SCHEMA:
            missing = [f"latency_ms.{k}" for k in LATENCY_KEYS if k not in lat]
        elif not missing and not isinstance((lat or {}).get("median"), (int, float)):
            missing = ["latency_ms.median"]
        if missing:
            raise UserError(f"{where}: variant {i} lacks {', '.join(missing)}",
                            "re-run the profile with this rexdeploy")
    return doc


def save_profile(doc: dict, path: str) -> None:
    """Write atomically (a temporary file renamed over the target)."""
    from rexdeploy.artifact import write_json_atomic

    write_json_atomic(path, doc)


def load_profile(path: str) -> dict:
    """Read and validate a profile document; UserError when missing, unreadable or not one."""
    if not os.path.isfile(path):
        raise UserError(f"baseline {path} does not exist",
                        "write one first: rexdeploy profile ARTIFACT --json base.json")
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {path} as JSON: {exc}") from None
    return validate(doc, path)
