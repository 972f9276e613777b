"""The CI regression gate of `rexdeploy profile --baseline base.json --max-regression 10%`.

Two figures per variant: the median sync latency (worse when higher) and the async throughput
(worse when lower). A figure regresses when it is worse than the baseline's by more than the
bound, relative to the baseline: latency > base * (1 + bound), throughput < base * (1 - bound).
Variants pair up by label; if no label matches and each side holds exactly one artifact variant,
those two pair up (a rebuilt artifact may be labelled differently).
"""

from __future__ import annotations

from dataclasses import dataclass

from rexdeploy.errors import UserError

EXIT_REGRESSION = 3  # the CLI's exit status when the gate fails (1: user error, 2: usage)


@dataclass(frozen=True)
class Finding:
    """One figure of one variant compared with the baseline."""

    label: str
    figure: str            # "median latency" | "throughput"
    unit: str              # "ms" | "fps"
    current: float
    baseline: float
    change: float          # relative, signed so that positive is worse
    regressed: bool

    def describe(self) -> str:
        how = f"{self.change:+.1%} worse" if self.change > 0 else f"{-self.change:.1%} better"
        return (f"{self.label}: {self.figure} {self.current:.3f} {self.unit} vs baseline "
                f"{self.baseline:.3f} {self.unit} ({how})")


def parse_bound(text: str | float) -> float:
    """"10%", "10" (percent) or 10.0 -> 0.10. UserError unless 0 <= bound < 100 %."""
    raw = str(text).strip()
    try:
        value = float(raw[:-1] if raw.endswith("%") else raw) / 100.0
    except ValueError:
        raise UserError(f"--max-regression {text!r}: give a percentage such as 10%") from None
    if not 0.0 <= value < 1.0:
        raise UserError(f"--max-regression {text!r}: must be at least 0% and below 100%")
    return value


def pair_variants(current: list[dict], baseline: list[dict]) -> list[tuple[dict, dict]]:
    """(current, baseline) variant pairs, by label; UserError when nothing pairs."""
    base_by = {v["label"]: v for v in baseline}
    pairs = [(v, base_by[v["label"]]) for v in current if v["label"] in base_by]
    if pairs:
        return pairs
    cur_art = [v for v in current if v.get("kind", "artifact") == "artifact"]
    base_art = [v for v in baseline if v.get("kind", "artifact") == "artifact"]
    if len(cur_art) == 1 and len(base_art) == 1:
        return [(cur_art[0], base_art[0])]
    raise UserError("no variant of this profile matches one of the baseline ("
                    f"this run: {', '.join(v['label'] for v in current)}; baseline: "
                    f"{', '.join(v['label'] for v in baseline)})",
                    "profile the same artifacts as the baseline did")


def check_regression(current: dict, baseline: dict, bound: float) -> list[Finding]:
    """Every compared figure of every paired variant (documents of profile_schema)."""
    findings = []
    for cur, base in pair_variants(current["variants"], baseline["variants"]):
        c, b = cur["latency_ms"]["median"], base["latency_ms"]["median"]
        if b > 0:
            change = (c - b) / b
            findings.append(Finding(cur["label"], "median latency", "ms", c, b, change,
                                    change > bound))
        c, b = _fps(cur), _fps(base)
        if c is not None and b:
            change = (b - c) / b
            findings.append(Finding(cur["label"], "throughput", "fps", c, b, change,
                                    change > bound))
    return findings


def _fps(variant: dict) -> float | None:
    if variant.get("throughput_fps") is not None:
        return float(variant["throughput_fps"])
    tput = variant.get("throughput") or {}
    return float(tput["fps"]) if tput.get("fps") is not None else None
