"""What the fidelity benchmark adds to every row for issue 6: the graph's bit-operations, the
OpenVINO latency of every artifact (rexdeploy's and the peers', one interleaved pass), the extra
table columns, and the Pareto plot (fidelity vs bit-operations and vs latency) as a PNG."""

from __future__ import annotations

import glob
import os

import numpy as np

PANELS: list[dict] = []  # one per model that ran: {"title", "metric", "rows"}


def model_files(row: dict) -> list[str]:
    """The model files OpenVINO reads for a row: its artifact's IR(s) (every ensemble member),
    or the peer's file."""
    if "art" in row:
        art = row["art"]
        found = sorted(glob.glob(os.path.join(art.path, "**", "*.xml"), recursive=True))
        return found or [os.path.join(art.path, art.files["onnx"])]
    if "dir" in row:
        return [os.path.join(row["dir"], f) for f in row["files"].values()]
    return []


def attach_bops(console, rows: list[dict], float_onnx: str) -> None:
    """row["bops_float"] = the deployed graph's BOPs / the float graph's at 32 x 32 bits."""
    from graph_bops import graph_bops

    base = graph_bops([float_onnx])["macs"]
    for row in rows:
        files = model_files(row)
        if row.get("float"):
            row["bops_float"] = 1.0
        elif files:
            try:
                row["bops_float"] = graph_bops(files, base)["ratio"]
            except Exception as e:  # a graph OpenVINO reads but we cannot walk: say so
                console.print(f"  [yellow]BOPs of {row['label']}: {e}[/]")


def runner_factory(row: dict):
    from rexdeploy.api import artifact_runner

    if "art" in row:
        return lambda a=row["art"]: artifact_runner(a)
    if "dir" in row:
        import backends
        from backends.base import RunOptions

        precision = row.get("precision", "f32")
        return lambda: backends.get("openvino").runner(row["dir"], row["files"],
                                                       RunOptions(precision=precision))
    return None


def attach_latency(console, rows: list[dict], feeds: dict, duration_s: float,
                   rounds: int) -> None:
    """row["latency_ms"]: median sync batch-1 latency on OpenVINO CPU (f32 pinned for float
    parts), every artifact of the model in one interleaved pass (rexdeploy.profiling.timing)."""
    from rexdeploy.profiling.timing import profile_variants

    todo = [(r["label"], runner_factory(r)) for r in rows if runner_factory(r) is not None]
    if not todo or duration_s <= 0:
        return
    console.print(f"  latency: {len(todo)} artifacts, {rounds} interleaved rounds x "
                  f"{duration_s:g} s each ...")
    results = profile_variants(todo, feeds, duration_s=duration_s, rounds=rounds)
    by = {r["label"]: r["latency_ms"]["median"] for r in results}
    for row in rows:
        if row["label"] in by:
            row["latency_ms"] = by[row["label"]]


def finish(console, args, rows: list[dict], float_onnx: str, feeds: dict, title: str,
           metric: str) -> None:
    """BOPs and (with --latency) latency for every row, and the model's panel for the plot."""
    attach_bops(console, rows, float_onnx)
    if args.latency:
        attach_latency(console, rows, feeds, args.latency, rounds=3)
    record(title, metric, rows)


# issue 6's comparisons: per model, the metric, which peers count ("all", or "data-free": not the
# ones calibrated on real data), and per class of peer the rexdeploy row it is compared with
TARGETS = {
    "effnet": ("sqnr", "all", {"W8A8": "rexdeploy W8A8 (default)",
                               "W8": "rexdeploy W8 weight-only"}),
    "minilm": ("cos_mean", "data-free", {"W8A8": "rexdeploy W8A8 data-free (default)",
                                         "W8": "rexdeploy W8 weight-only",
                                         "W4": "rexdeploy W4 weight-only, REx K=2"}),
    "fashion": ("acc", "data-free", {"W8A8": "rexdeploy W8A8 (default)",
                                     "W8": "rexdeploy W8 weight-only"}),
}


def peer_verdicts(model: str, rows: list[dict]) -> list[str]:
    """Does rexdeploy's data-free build beat each peer of the same kind (W8A8 / weight-only W8 /
    weight-only W4) on the model's headline metric? Peers calibrated on real data count on
    EfficientNet-Lite0 only. One line per peer."""
    metric, which, ours_by_cls = TARGETS[model]
    by = {r["label"]: r for r in rows if not r.get("skipped")}
    out = []
    for r in rows:
        if not r.get("peer"):
            continue
        if r.get("skipped"):
            out.append(f"{r['label']}: {r['skipped']} (no comparison)")
            continue
        if r.get("data") == "real" and which != "all":
            continue
        ours = by.get(ours_by_cls.get(r.get("cls", "W8A8"), ""))
        if ours is None:
            continue
        ok = ours[metric] > r[metric]
        out.append(f"issue 6 target, {ours['label']} {metric} {ours[metric]:.4g} > "
                   f"{r['label']} {r[metric]:.4g}: {'met' if ok else 'missed'}")
    return out


EXTRA_HEADERS = ["BOPs / float", "latency ms"]


def extra_cells(row: dict) -> list[str]:
    b, lat = row.get("bops_float"), row.get("latency_ms")
    torch_lat = row.get("torch_latency_ms")
    return ["" if b is None else f"{b:.3f}",
            f"{lat:.2f}" if lat is not None else
            (f"{torch_lat:.2f} (torch)" if torch_lat is not None else "")]


def skipped_cells(row: dict, n: int) -> list[str]:
    """A skipped or failed peer: its label, the reason, blanks."""
    return [row["label"], row["skipped"]] + [""] * (n - 2)


def record(title: str, metric: str, rows: list[dict]) -> None:
    PANELS.append({"title": title, "metric": metric, "rows": rows})


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats (lower or equal x AND higher or equal y, one
    of them strictly), sorted by x: the cost (x) vs fidelity (y) frontier."""
    front = []
    for i, (x, y) in enumerate(points):
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        dominated = any(
            (x2 <= x and y2 >= y and (x2 < x or y2 > y))
            for j, (x2, y2) in enumerate(points) if j != i and np.isfinite(x2) and np.isfinite(y2))
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


METRIC_NAMES = {"sqnr": "output SQNR (dB)", "cos_mean": "mean cosine", "acc": "top-1 accuracy"}


def plot(path: str, panels: list[dict] | None = None) -> str:
    """Fidelity vs bit-operations (left) and vs OpenVINO latency (right), one row per model;
    rexdeploy's configurations as circles, the peers as triangles, the Pareto frontier drawn.
    Labelled: the frontier, the peers and the defaults, placed where they overlap nothing (a
    point without a label is in the benchmark's table). The panels are also written beside the
    PNG as JSON (`pareto.py --replot FILE.json` draws them again)."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = PANELS if panels is None else panels
    if not panels:
        raise ValueError("nothing to plot: no model ran")
    fig, axes = plt.subplots(len(panels), 2, figsize=(13, 4.6 * len(panels)), squeeze=False,
                             dpi=DPI)
    labels = []  # (axes, [((x, y), text)]): placed once the layout is final
    for (ax_b, ax_l), panel in zip(axes, panels):
        rows = [r for r in panel["rows"] if not r.get("skipped") and not r.get("float")
                and np.isfinite(_value(r.get(panel["metric"])))]
        labels.append((ax_b, _panel(ax_b, rows, panel, "bops_float",
                                    "bit-operations / float (log)")))
        labels.append((ax_l, _panel(ax_l, rows, panel, "latency_ms",
                                    "OpenVINO CPU latency, batch 1 (ms)")))
    fig.legend(handles=[plt.Line2D([], [], marker="o", ls="", c="tab:blue", label="rexdeploy"),
                        plt.Line2D([], [], marker="^", ls="", c="tab:orange", label="peer"),
                        plt.Line2D([], [], ls="--", c="k", label="Pareto frontier")],
               loc="upper center", ncol=3)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.canvas.draw()  # the axes' limits and transforms are final: labels are placed in pixels
    for ax, items in labels:
        _place_labels(ax, items)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    with open(os.path.splitext(path)[0] + ".json", "w") as f:
        json.dump(panels, f, indent=1, default=float)
    return path


DPI = 80


def _value(v) -> float:
    return np.nan if v is None else float(v)


def _panel(ax, rows: list[dict], panel: dict, key: str, xlabel: str) -> list:
    """One panel's points, frontier and axes; returns the labels to place on it."""
    metric = panel["metric"]
    pts = [(_value(r.get(key)), float(r[metric])) for r in rows]
    front = pareto_front(pts)
    items = []
    for i, (r, (x, y)) in enumerate(zip(rows, pts)):
        if not np.isfinite(x):
            continue
        peer = r.get("peer", False)
        ax.scatter([x], [y], marker="^" if peer else "o", c="tab:orange" if peer else "tab:blue",
                   s=36, zorder=3)
        if i in front or peer or "(default)" in r["label"]:
            items.append(((x, y), _short(r["label"])))
    if front:
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "k--", lw=0.8, zorder=2)
    if key == "bops_float":
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(METRIC_NAMES.get(metric, metric))
    ax.set_title(panel["title"], fontsize=9)
    ax.grid(alpha=0.3)
    return items


def _place_labels(ax, items: list, fontsize: float = 6.0) -> None:
    """Each label beside its point, right or left, moved up or down by whole lines (with a
    leader) until it overlaps no label placed before and stays inside the axes; a label with
    no such place within 6 lines is left out. Highest points first."""
    scale = ax.figure.dpi / 72.0  # pixels per point
    char_w, line_h = 0.6 * fontsize * scale, 1.25 * fontsize * scale
    x_min, y_min, x_max, y_max = ax.bbox.extents
    placed: list[tuple[float, float, float, float]] = []
    for (x, y), text in sorted(items, key=lambda it: -it[0][1]):
        px, py = ax.transData.transform((x, y))
        width = char_w * len(text)
        spot = None
        for step in (0, 1, -1, 2, -2, 3, -3, 4, -4, 5, -5, 6, -6):
            for left in (False, True):
                x0 = px - 5 * scale - width if left else px + 4 * scale
                mid = py + step * line_h
                box = (x0, mid - line_h / 2, x0 + width, mid + line_h / 2)
                inside = x_min <= box[0] and box[2] <= x_max and y_min <= box[1] and box[3] <= y_max
                if inside and not any(_overlap(box, b) for b in placed):
                    spot = box
                    break
            if spot is not None:
                break
        if spot is None:
            continue
        placed.append(spot)
        dx, dy = (spot[0] - px) / scale, ((spot[1] + spot[3]) / 2 - py) / scale
        ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                    ha="left", va="center",
                    arrowprops=dict(arrowstyle="-", lw=0.4, color="0.55") if abs(dy) > 1 else None)


def _overlap(a: tuple, b: tuple) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _short(label: str) -> str:
    return label.replace("rexdeploy ", "").replace("(data-free)", "").replace("compress_weights",
                                                                              "WC")[:38]


def main(argv: list[str] | None = None) -> int:
    """`pareto.py --replot FILE.json --plot OUT.png`: draw a saved plot's panels again."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--replot", required=True, metavar="FILE.json",
                        help="panels written beside an earlier plot")
    parser.add_argument("--plot", required=True, metavar="OUT.png")
    args = parser.parse_args(argv)
    with open(args.replot) as f:
        print(plot(args.plot, json.load(f)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
