"""`rexdeploy compare --min-sqnr [OUTPUT:]DB --min-cosine [OUTPUT:]VALUE`: fidelity floors a CI
job can gate on, as `profile --baseline` gates latency.

    parse_floor("logits:25", "sqnr_db") -> Floor      OUTPUT may hold ":" (read from the right);
                                                      without it the floor holds every output
    check_floors(result, floors) -> list[Finding]     one per floor and output, against
                                                      api.compare's result
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rexdeploy.errors import UserError

EXIT_FLOOR = 3  # the CLI's exit status when a floor is missed (1: user error, 2: usage)
OPTIONS = {"sqnr_db": "--min-sqnr", "cosine_mean": "--min-cosine"}
_UNITS = {"sqnr_db": " dB", "cosine_mean": ""}


@dataclass(frozen=True)
class Floor:
    metric: str          # a key of compare's per-output metrics: sqnr_db | cosine_mean
    value: float
    output: str | None   # None: every output row (slices included)

    def __str__(self) -> str:
        return f"{OPTIONS[self.metric]} {self.output + ':' if self.output else ''}{self.value:g}"


@dataclass(frozen=True)
class Finding:
    floor: Floor
    output: str
    measured: float | None

    @property
    def missed(self) -> bool:
        return self.measured is None or not self.measured >= self.floor.value  # NaN misses

    def describe(self) -> str:
        what = "mean cosine" if self.floor.metric == "cosine_mean" else "SQNR"
        unit = _UNITS[self.floor.metric]
        got = "not measured" if self.measured is None else f"{self.measured:.4g}{unit}"
        return f"{self.output}: {what} {got} (floor {self.floor.value:g}{unit})"


def parse_floor(text: str, metric: str) -> Floor:
    name, sep, value = text.rpartition(":")
    try:
        number = float(value)
    except ValueError:
        raise UserError(f"bad {OPTIONS[metric]} {text!r}: expected [OUTPUT:]VALUE",
                        f"e.g. {OPTIONS[metric]} "
                        f"{'25' if metric == 'sqnr_db' else '0.99'} for every output, or "
                        f"logits:{'25' if metric == 'sqnr_db' else '0.99'} for one") from None
    if not math.isfinite(number):
        raise UserError(f"bad {OPTIONS[metric]} {text!r}: the floor must be a finite number")
    return Floor(metric, number, name if sep else None)


def check_floors(result: dict, floors: tuple[Floor, ...]) -> list[Finding]:
    """Every floor against the rows of compare's result (its outputs and output slices)."""
    rows = result.get("outputs", {})
    findings = []
    for floor in floors:
        if floor.output is not None and floor.output not in rows:
            raise UserError(f"{floor}: the compared outputs are {', '.join(rows) or 'none'}",
                            "name one of them, or leave OUTPUT: out to hold every output")
        for name in [floor.output] if floor.output is not None else list(rows):
            findings.append(Finding(floor, name, rows[name].get(floor.metric)))
    return findings
