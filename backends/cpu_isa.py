"""The int8 instruction set an x86 CPU target runs, and whether its int8 kernels saturate.

OpenVINO's CPU plugin runs int8 layers through oneDNN, which picks its kernels for the best
instruction set the CPU has, capped by the environment variable ONEDNN_MAX_CPU_ISA (read once per
process). The names here are oneDNN's (lower case). Before VNNI (`vpdpbusd`), int8 products are
added in pairs into a saturating int16 (`pmaddubsw`), so full-range weights against full-range
activations overflow (calib_free.weights.saturation): on those ISAs the build limits weight-code
pairs.

Pure Python (no openvino import): the build's config validation and the CLI use it; the
OpenVINO backend confirms a detection by running a probe layer (backends.openvino.int8_probe).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

# oneDNN's x86 ISA names, each with the /proc/cpuinfo flags it needs, weakest first.
ISA_FLAGS = {
    "sse41": ("sse4_1",),
    "avx": ("avx",),
    "avx2": ("avx2",),
    "avx2_vnni": ("avx2", "avx_vnni"),
    "avx512_core": ("avx512f", "avx512bw", "avx512vl", "avx512dq"),
    "avx512_core_vnni": ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"),
    "avx512_core_bf16": ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni",
                         "avx512_bf16"),
    "avx512_core_amx": ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni",
                        "avx512_bf16", "amx_tile", "amx_int8"),
}
ISAS = tuple(ISA_FLAGS)
# int8 kernels that add pairs of u8 x s8 products in a saturating int16 (no VNNI, no AMX)
SATURATING = ("sse41", "avx", "avx2", "avx512_core")
CHOICES = ("auto",) + ISAS  # --int8-isa
RESOLVED = ISAS + ("gpu", "reference", "unknown")  # what a build records
ENV = "ONEDNN_MAX_CPU_ISA"


@dataclass(frozen=True)
class Int8Isa:
    """The target's int8 instruction set as the plan records it.

    name: an ISAS name, or "gpu" / "unknown" off x86 CPUs; saturates: its int8 kernels add
    pairs of products in int16 (pre-VNNI); source: how it was decided ("detected on this host
    ...", "--int8-isa", "target"); kernel: the probe layer's kernel where one ran."""

    name: str
    saturates: bool
    source: str
    kernel: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        how = "pre-VNNI: int8 pairs saturate in int16" if self.saturates else \
            "int32 accumulation" if self.name != "unknown" else "not known"
        return f"{self.name} ({how}; {self.source})"


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags (empty where unreadable, e.g. off Linux)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def supported(isa: str, flags: frozenset[str]) -> bool:
    return all(f in flags for f in ISA_FLAGS[isa])


def host_isa(flags: frozenset[str] | None = None, cap: str | None = None) -> str | None:
    """The best ISAS name this host's CPU supports under ONEDNN_MAX_CPU_ISA (`cap`; default:
    the environment's), None off x86 or where the flags are unreadable."""
    flags = cpu_flags() if flags is None else flags
    cap = (os.environ.get(ENV, "") if cap is None else cap).strip().lower()
    best = None
    for isa in ISAS:
        if not supported(isa, flags):
            continue
        if cap and cap != "all" and cap in ISA_FLAGS and not _within(isa, cap):
            continue
        best = isa
    return best


def _within(isa: str, cap: str) -> bool:
    """Whether `isa` is allowed under the cap: every flag it needs, the cap's ISA needs too."""
    return set(ISA_FLAGS[isa]) <= set(ISA_FLAGS[cap])


def saturates(isa: str) -> bool:
    return isa in SATURATING


def emulation_env(isa: str, flags: frozenset[str] | None = None) -> dict[str, str] | None:
    """The environment that makes this host run `isa`'s kernels (a cross-build's device check:
    oneDNN falls back to an older ISA on request), None where the host lacks the ISA."""
    flags = cpu_flags() if flags is None else flags
    if isa not in ISA_FLAGS or not supported(isa, flags):
        return None
    return {ENV: isa.upper()}


def check_choice(choice: str) -> None:
    from rexdeploy.errors import UserError

    if choice not in CHOICES:
        raise UserError(f"--int8-isa {choice}: use auto or one of {', '.join(ISAS)}",
                        "auto detects it from the OpenVINO runtime on this host; name the "
                        "target's ISA when it is another CPU (e.g. avx2 for a Core i7 of "
                        "the Skylake to Comet Lake generations)")


def check_environment(isa: Int8Isa) -> tuple[dict[str, str] | None, str | None]:
    """Where the device check of a build for `isa` runs: ({}, None) in this process (the ISA
    was detected here, or is this host's), ({ONEDNN_MAX_CPU_ISA: ...}, None) in a child process
    that runs the target's older kernels, (None, why) where this host cannot run them."""
    if isa.source != "--int8-isa":
        return {}, None
    host = host_isa()
    if host == isa.name:
        return {}, None
    env = emulation_env(isa.name)
    if env is None:
        return None, (f"this host ({host or 'no x86 ISA known'}) cannot run {isa.name} kernels: "
                      "run `rexdeploy compare ART --synthetic 8` on the target to check it there")
    return env, None


def capped_precision(precision: str | None) -> str | None:
    """The inference precision a real CPU of the capped ISA would give, under
    ONEDNN_MAX_CPU_ISA: OpenVINO picks bf16 (its default on a CPU with AVX512_BF16 or AMX) and
    its f16 fallback from the CPU's own features, which the cap does not hide, and oneDNN then
    refuses those kernels ("object is not initialized"); a CPU without bf16 runs f32. None or
    unchanged where no cap is set or the capped ISA has bf16."""
    cap = os.environ.get(ENV, "").strip().lower()
    if not cap or cap == "all":
        return precision
    isa = host_isa()
    if isa is None or "avx512_bf16" in ISA_FLAGS[isa] or precision == "f32":
        return precision
    return "f32"


def cap_note() -> str:
    """What to say when OpenVINO fails under ONEDNN_MAX_CPU_ISA ("" without a cap)."""
    cap = os.environ.get(ENV, "").strip()
    if not cap:
        return ""
    return (f"; {ENV}={cap} is set: OpenVINO's CPU plugin chooses some kernels (bf16, "
            "compressed int4/int8 weights) by this CPU's own features, which the cap does not "
            "hide, and oneDNN then refuses them. A real CPU of that ISA runs them; unset "
            f"{ENV} to run here")
