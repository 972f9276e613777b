"""The device state recorded with every benchmark: CPU model, cores, governor, load, runtimes.

Cheap (file reads, one OpenVINO property query); every field is None where unreadable. On a
Jetson board (/etc/nv_tegra_release) also: the nvpmodel power mode, whether clocks are locked,
L4T/JetPack and TensorRT versions, and board power from jtop (jetson-stats) if installed. Off a
Jetson, `jetson` is {"present": False} with every field None: nothing is guessed.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess

# ISA extensions that decide which int8/bf16 kernels a CPU runtime can pick.
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8",
             "amx_bf16", "asimddp", "i8mm", "bf16")


def device_info() -> dict:
    """{"cpu_model", "logical_cores", "usable_cores", "isa", "governor", "loadavg", "platform",
    "python", "openvino": {"version", "devices", "cpu_name", "cpu_capabilities"} or None}."""
    cpu = _cpuinfo()
    return {
        "cpu_model": cpu_model(cpu),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "isa": [f for f in ISA_FLAGS if f in cpu.get("flags", cpu.get("Features", "")).split()],
        "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "cpu_mhz": _cpu_mhz(cpu),
        "loadavg": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "openvino": _openvino(),
        "jetson": jetson_info(),
    }


JETSON_FIELDS = ("l4t", "jetpack", "nvpmodel_mode", "clocks_locked", "tensorrt", "power_mw")


def jetson_info(root: str = "/") -> dict:
    """{"present", "l4t" ("35.4.1"), "jetpack" (the nvidia-jetpack package version),
    "nvpmodel_mode" ("MAXN" or the mode id), "clocks_locked" (every CPU's and the GPU's min
    frequency equals its max, as after `jetson_clocks`), "tensorrt", "power_mw" (jtop's total)}.
    Every field is None where it cannot be read; off a Jetson nothing is read at all."""
    info = dict.fromkeys(JETSON_FIELDS)
    release = _read(os.path.join(root, "etc/nv_tegra_release"))
    info["present"] = release is not None
    if release is None:
        return info
    info["l4t"] = parse_l4t(release)
    info["jetpack"] = _command(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"])
    info["nvpmodel_mode"] = parse_nvpmodel(_command(["nvpmodel", "-q"]) or "")
    info["clocks_locked"] = clocks_locked(root)
    info["tensorrt"] = _tensorrt_version()
    info["power_mw"] = _jtop_power()
    return info


def parse_l4t(release: str) -> str | None:
    """"# R35 (release), REVISION: 4.1, GCID: ..." -> "35.4.1"."""
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", release)
    return f"{m.group(1)}.{m.group(2).rstrip('.')}" if m else None


def parse_nvpmodel(text: str) -> str | None:
    """`nvpmodel -q` output ("NV Power Mode: MAXN\n0") -> "MAXN"."""
    m = re.search(r"NV Power Mode:\s*(\S+)", text)
    return m.group(1) if m else None


def clocks_locked(root: str = "/") -> bool | None:
    """True when every CPU's (and the GPU's, where its devfreq is readable) scaling minimum equals
    its maximum; None when no CPU frequency limits are readable."""
    pairs = []
    cpu_dir = os.path.join(root, "sys/devices/system/cpu")
    for name in sorted(os.listdir(cpu_dir)) if os.path.isdir(cpu_dir) else []:
        if re.fullmatch(r"cpu\d+", name):
            base = os.path.join(cpu_dir, name, "cpufreq")
            pairs.append((_read(f"{base}/scaling_min_freq"), _read(f"{base}/scaling_max_freq")))
    for gpu in ("sys/devices/gpu.0/devfreq", "sys/devices/platform/gpu.0/devfreq"):
        base = os.path.join(root, gpu)
        for dev in sorted(os.listdir(base)) if os.path.isdir(base) else []:
            pairs.append((_read(f"{base}/{dev}/min_freq"), _read(f"{base}/{dev}/max_freq")))
    pairs = [(lo, hi) for lo, hi in pairs if lo is not None and hi is not None]
    return all(lo == hi for lo, hi in pairs) if pairs else None


def _command(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _tensorrt_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    for pkg in ("tensorrt", "tensorrt-cu12", "tensorrt_lean"):
        try:
            return version(pkg)
        except PackageNotFoundError:
            continue
    return _command(["dpkg-query", "-W", "-f=${Version}", "libnvinfer-bin"])


def _jtop_power() -> float | None:
    """Total board power (mW) from jtop, if jetson-stats is installed and its service runs."""
    try:
        from jtop import jtop
    except ImportError:
        return None
    try:
        with jtop() as jetson:
            if jetson.ok():
                return float(jetson.power["tot"]["power"])
    except Exception:  # noqa: BLE001 - jtop raises its own errors when its service is down
        return None
    return None


def _cpu_mhz(cpu: dict[str, str]) -> float | None:
    """Current frequency of cpu0 (cpufreq, else /proc/cpuinfo's "cpu MHz")."""
    khz = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq")
    try:
        return round(int(khz) / 1e3, 1) if khz else round(float(cpu["cpu MHz"]), 1)
    except (KeyError, ValueError):
        return None


def cpu_model(cpu: dict[str, str] | None = None) -> str | None:
    """The CPU's model name (from /proc/cpuinfo where there is one), without device_info's
    probing of runtimes and boards."""
    cpu = _cpuinfo() if cpu is None else cpu
    return cpu.get("model name") or cpu.get("Model") or platform.processor() or None


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields from /proc/cpuinfo (empty elsewhere)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    if fields:
                        break
                    continue
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip() or None
    except OSError:
        return None


def _openvino() -> dict | None:
    try:
        from backends.openvino import shared_core, version

        core = shared_core()
        info = {"version": version(), "devices": list(core.available_devices)}
        if "CPU" in info["devices"]:
            info["cpu_name"] = core.get_property("CPU", "FULL_DEVICE_NAME")
            info["cpu_capabilities"] = list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        return info
    except ImportError:
        return None
