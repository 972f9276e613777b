"""Terminal and markdown views of a profile document (profile_schema): the per-layer top-N
table, the device line, markdown tables. The main rich table is profiler.render_profile_table."""

from __future__ import annotations


def top_layers(layers: dict, top: int | None) -> list[dict]:
    """The `top` slowest rows of a variant's layers (all of them when top is None or <= 0)."""
    rows = sorted(layers["rows"], key=lambda r: r["time_ms"], reverse=True)
    return rows if not top or top <= 0 else rows[:top]


def layer_caption(v: dict) -> str:
    lay = v["layers"]
    return (f"{len(lay['rows'])} executed layers; their sum {lay['sum_ms']:.3f} ms = "
            f"{lay['sum_vs_wall']:.0%} of the wall time of the same inferences "
            f"({lay['wall_ms']:.3f} ms median, per-layer counters on); sync median without "
            f"counters {v['latency_ms']['median']:.3f} ms")


def render_layer_table(v: dict, top: int | None = 10):
    """A rich Table of one variant's slowest layers: type, executed kernel, runtime precision,
    mean ms and share of the layers' sum."""
    from rich.table import Table

    rows = top_layers(v["layers"], top)
    shown = f"top {len(rows)} of {len(v['layers']['rows'])}" if top else "all"
    table = Table(title=f"{v['label']}: per-layer time ({shown} layers, OpenVINO PERF_COUNT)",
                  caption=layer_caption(v))
    for col in ("layer", "type", "kernel", "precision", "ms", "share"):
        table.add_column(col, justify="right" if col in ("ms", "share") else "left",
                         overflow="fold")
    for r in rows:
        table.add_row(r["name"], r["type"], r["kernel"], r["precision"], f"{r['time_ms']:.3f}",
                      f"{r['share']:.1%}")
    return table


def device_line(doc: dict) -> str:
    """One line of the device state the numbers were measured in."""
    d = doc.get("device") or {}
    parts = [str(d.get("cpu_model") or "unknown CPU"),
             f"{d.get('usable_cores')}/{d.get('logical_cores')} cores usable",
             f"governor {d.get('governor') or 'unreadable'}",
             f"load {' '.join(map(str, d.get('loadavg') or [])) or '?'}"]
    j = d.get("jetson") or {}
    if j.get("present"):
        parts.append(f"Jetson L4T {j.get('l4t')} JetPack {j.get('jetpack')} nvpmodel "
                     f"{j.get('nvpmodel_mode')} clocks locked {j.get('clocks_locked')} "
                     f"TensorRT {j.get('tensorrt')} power {j.get('power_mw')} mW")
    return "device: " + ", ".join(parts)


def _md_row(cells) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def markdown_tables(doc: dict, top: int | None = 10) -> str:
    """The latency/throughput table and each variant's top-N layer table, as markdown."""
    head = ("variant", "float in", "streams (sync / async)", "median ms", "p90 ms", "p95 ms",
            "p99 ms", "std ms", "CoV", "FPS", "latency ratio", "FPS ratio")
    lines = [_md_row(head), _md_row(["---"] * len(head))]
    for v in doc["variants"]:
        lat, ratio, info = v["latency_ms"], v.get("ratio_vs") or {}, v.get("info") or {}
        tput_info = info.get("throughput") or {}
        fps = v.get("throughput_fps")
        lines.append(_md_row([
            v["label"], info.get("inference_precision", ""),
            f"{info.get('streams', '?')} / {tput_info.get('streams', '-')}",
            f"{lat['median']:.3f}", f"{lat['p90']:.3f}", f"{lat['p95']:.3f}",
            f"{lat['p99']:.3f}", f"{lat['std']:.3f}", f"{v['cov']:.1%}",
            "-" if fps is None else f"{fps:.1f}",
            f"{ratio['latency']:.2f}x" if ratio.get("latency") is not None else "-",
            f"{ratio['throughput']:.2f}x" if ratio.get("throughput") is not None else "-"]))
    out = ["\n".join(lines)]
    if doc["variants"]:
        out.append(f"Ratios are against {doc['variants'][0]['label']}. {device_line(doc)}")
    for v in doc["variants"]:
        if not v.get("layers"):
            continue
        rows = [_md_row(("layer", "type", "kernel", "precision", "ms", "share")),
                _md_row(["---"] * 6)]
        rows += [_md_row((r["name"], r["type"], r["kernel"], r["precision"],
                          f"{r['time_ms']:.3f}", f"{r['share']:.1%}"))
                 for r in top_layers(v["layers"], top)]
        out.append(f"**{v['label']}**: {layer_caption(v)}\n\n" + "\n".join(rows))
    return "\n\n".join(out) + "\n"
