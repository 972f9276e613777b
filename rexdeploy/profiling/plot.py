"""`rexdeploy profile --plot FILE.png`: the latency distribution of every variant and the
per-layer bars of each, in one figure. matplotlib is optional (the `examples` extra) and is
imported only here, only when a plot is asked for."""

from __future__ import annotations

import os

from rexdeploy.errors import UserError


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise UserError("--plot needs matplotlib, which is not installed",
                        "pip install matplotlib (or the extra: pip install 'rexdeploy[examples]')"
                        ) from None
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def plot_profile(doc: dict, path: str, top: int = 15) -> str:
    """Write the figure to `path` (format from the extension, e.g. .png); returns the path.
    Needs each variant's "times_ms" (profile with keep_times) for the distribution."""
    plt = _pyplot()
    variants = doc["variants"]
    with_layers = [v for v in variants if v.get("layers")]
    fig, axes = plt.subplots(1 + len(with_layers), 1, squeeze=False,
                             figsize=(10, 3.5 + 0.25 * top * len(with_layers)))
    ax = axes[0][0]
    data = [v.get("times_ms") or [v["latency_ms"]["median"]] for v in variants]
    ax.boxplot(data, vert=False, showfliers=True, whis=(1, 99))
    ax.set_yticks(range(1, len(variants) + 1), [v["label"] for v in variants])
    ax.set_xlabel("sync latency per inference (ms); whiskers p1-p99")
    ax.set_title("latency distribution (1 request, sync)")
    for row, v in enumerate(with_layers, start=1):
        ax = axes[row][0]
        rows = sorted(v["layers"]["rows"], key=lambda r: r["time_ms"], reverse=True)[:top]
        names = [f"{r['name'][:40]} [{r['kernel']}, {r['precision']}]" for r in rows][::-1]
        ax.barh(names, [r["time_ms"] for r in rows][::-1])
        ax.set_xlabel("mean ms per inference (PERF_COUNT)")
        ax.set_title(f"{v['label']}: top {len(rows)} of {len(v['layers']['rows'])} layers")
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.savefig(path, dpi=100)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot write the plot {path}: {exc}") from None
    finally:
        plt.close(fig)
    return path
