"""Rich tables for build and inspect output."""

from __future__ import annotations

from rich.table import Table

from rexdeploy.config import BuildConfig, QuantConfig


def build_table(artifact) -> Table:
    s = artifact.manifest["summary"]
    cfg = artifact.config.quant
    table = Table(title=f"built {artifact.path}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    deferred = artifact.manifest.get("engine") == "deferred"
    table.add_row("target", f"{artifact.target} ({artifact.manifest.get('device', 'CPU')})"
                  + ("; [yellow]deferred: no engine built here[/]" if deferred else ""))
    table.add_row("quantization", _quantization(cfg))
    table.add_row("layers", f"{s['quantized_layers']} quantized, {s['skipped_layers']} kept float")
    table.add_row("expansion", _expansion(cfg, s))
    if "mixed_precision" in s:  # --sensitivity / --mixed-precision: every raise, its BOPs
        raised = [f"{m['layer']}: " + ", ".join(
            f"{k} {'int%d' % v['bits'] if k == 'weights' else v['precision']} "
            f"(+{v['bops_delta'] / 1e6:.3g} MBOPs)" for k, v in m.items() if k != "layer")
            for m in s["mixed_precision"]]
        table.add_row("mixed precision", "; ".join(raised) if raised else
                      "none raised (budget spent on REx orders, by measured sensitivity)")
    skipped = artifact.report().get("skipped", [])
    if skipped:  # never silent: name them here, the reasons are in `inspect`
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        table.add_row("kept in float", ", ".join(f"{r['name']} ({r['op']})" for r in skipped[:5])
                      + f"{more} (why: rexdeploy inspect)")
    cov = s["int8_coverage"]
    colour = "green" if cov >= 0.95 else "yellow" if cov >= 0.5 else "red"
    if deferred:
        table.add_row("runtime int8", "[yellow]not known until the engine is built: finish on "
                                      "the device with `rexdeploy build --from-deferred "
                                      f"{artifact.path}` (or its build_engine.sh)[/]")
        return table
    table.add_row("runtime int8", f"[{colour}]{s['runtime_int8_layers']}/"
                                  f"{s['runtime_compute_layers']} compute layers ({cov:.1%})[/]"
                                  + _macs_text(s))
    low_bit = s.get("runtime_low_bit_layers", 0)
    if low_bit > s["runtime_int8_layers"]:  # weight-only: integer weights, float compute
        table.add_row("runtime weights", f"{low_bit}/{s['runtime_compute_layers']} compute "
                                         "layers read compressed integer weights")
    _target_rows(table, s, artifact.report().get("device_check"))
    return table


def _target_rows(table: Table, s: dict, check: dict | None) -> None:
    """The int8 instruction set, what --overflow-fix did, and the device check's verdict."""
    isa = s.get("int8_isa")
    if isa:
        from backends.cpu_isa import Int8Isa

        fix = s.get("overflow_fix") or {}
        text = Int8Isa(**isa).describe()
        if fix.get("pair_limit"):
            text += (f"; overflow fix: pairs <= {fix['pair_limit']} in {fix['layers']} layers, "
                     f"{fix['channels_rescaled']} channels rescaled")
        elif isa["saturates"]:
            text = f"[yellow]{text}; overflow fix off[/]"
        table.add_row("int8 ISA", text)
    if check:
        from rexdeploy.evaluate.device_check import summary_line

        bad = not check.get("skipped") and not check.get("agrees", True)
        line = summary_line(check)
        table.add_row("device check", f"[bold red]{line}[/]" if bad else
                      f"[green]{line}[/]" if not check.get("skipped") else line)


def _macs_text(s: dict) -> str:
    """"; 80% of the multiply-adds (LSTM ... float)": coverage by MACs, where it was counted."""
    if "int8_coverage_macs" not in s:
        return ""
    share = s["int8_coverage_macs"]
    colour = "green" if share >= 0.95 else "yellow" if share >= 0.5 else "red"
    text = f"; [{colour}]{share:.0%} of the multiply-adds[/]"
    if s.get("macs_float"):
        total = s["macs"] + s["macs_float"]
        text += f" ({s['macs_float'] / total:.0%} in layers kept float)"
    if s.get("macs_unknown_layers"):
        text += f", {s['macs_unknown_layers']} layer(s) of unknown shape not counted"
    return text


def _quantization(cfg: QuantConfig) -> str:
    return (f"W:{cfg.weights} {cfg.orders_label} A:{cfg.activations}, ranges {cfg.ranges}, "
            f"bias correction {'on' if cfg.bias_correction else 'off'}")


def _expansion(cfg: QuantConfig, s: dict) -> str:
    """One line on the REx expansion: orders, sparsity/budget/ensemble and the BOPs it costs."""
    parts = [cfg.orders_label]
    if cfg.sparsity is not None:
        parts.append(f"gamma {cfg.sparsity:g}")
    if cfg.budget is not None:
        cost = cfg.budget_cost
        budget = f"budget {cfg.budget:g}"
        if cfg.budget_from > 1:
            budget += f" over K={cfg.budget_from}"
        if cfg.auto_budget:
            budget += " (the default: --budget auto)"
        if cost not in ("bops", "auto"):
            budget += (f" in the {cost} time model ({s.get('cost_ratio', 1.0):.2f}x the order-1 "
                       "time estimated)")
        parts.append(budget)
    if cfg.ensemble:
        parts.append(f"ensemble: base + {cfg.ensemble} members "
                     f"({cfg.ensemble_partition} partition)")
    parts.append(f"{s.get('bops_ratio', 1.0):.2f}x the order-1 bit-operations")
    return ", ".join(parts)


def inspect_tables(info: dict, layers: bool) -> list[Table]:
    m, report = info["manifest"], info["report"]
    head = Table(title=info["path"], show_header=False)
    head.add_column(style="bold")
    head.add_column()
    head.add_row("schema", str(m["schema_version"]))
    head.add_row("built by", f"rexdeploy {m['rexdeploy_version']}")
    head.add_row("source", f"{m['source']['path']} ({m['source']['kind']})")
    head.add_row("target", f"{m['target']} on {m.get('device', 'CPU')}")
    head.add_row("inputs", ", ".join(f"{i['name']}:{'x'.join(map(str, i['shape']))}"
                                     for i in m["inputs"]))
    s = report["summary"]
    if m.get("config"):
        cfg = BuildConfig.from_dict(m["config"]).quant
        head.add_row("quantization", _quantization(cfg))
        head.add_row("expansion", _expansion(cfg, s))
    if m.get("engine") == "deferred":
        head.add_row("engine", "[yellow]deferred: TensorRT was not installed where this was "
                               "built; finish on the device with `rexdeploy build "
                               f"--from-deferred {info['path']}`[/]")
    else:
        head.add_row("int8 coverage", f"{s['runtime_int8_layers']}/"
                                      f"{s['runtime_compute_layers']} ({s['int8_coverage']:.1%})"
                                      + _macs_text(s))
    _target_rows(head, s, report.get("device_check"))
    head.add_row("versions", ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v))
    head.add_row("files", ", ".join(f"{f['path']} ({f['bytes'] / 1e6:.1f} MB)"
                                    for f in m["files"].values()))
    for note in report.get("notes", []):
        head.add_row("note", note)
    tables = [head]
    if report["skipped"]:
        t = Table(title="kept in float")
        for col in ("layer", "op", "MMACs", "reason"):
            t.add_column(col, justify="right" if col == "MMACs" else "left")
        for row in report["skipped"]:
            macs = row.get("macs")
            t.add_row(row["name"], row["op"], f"{macs / 1e6:.1f}" if macs else "?",
                      row["reason"])
        tables.append(t)
    if layers:
        tables.append(layer_table(report))
    return tables


def layer_table(report: dict) -> Table:
    t = Table(title="layers")
    # a --budget in a runtime's time model: each layer's estimated time over its order-1 time
    timed = any("cost" in row for row in report["layers"])
    numeric = ("K", "kept", "MMACs", "GBOPs") + (("time x K=1",) if timed else ()) + \
        ("weight SQNR dB (K=1 -> K)", "act range")
    for col in ("layer", "op") + numeric[:-1] + ("act range", "act", "runs as"):
        t.add_column(col, justify="right" if col in numeric else "left")
    for row in report["layers"]:
        err = (row.get("weight_error") or {}).get("sqnr_db")
        err1 = (row.get("weight_error_order1") or {}).get("sqnr_db")
        act = row.get("activation")
        runs = ", ".join(sorted({f"{r['precision']} {r['kernel']}".strip()
                                 for r in row["runtime"]})) or "?"
        kept = "/".join(f"{f:.2f}" for f in row.get("kept_fraction") or []) or "-"
        bops = row.get("bops")
        cost = [f"{row['cost'] / row['cost_order1']:.2f}" if row.get("cost_order1") else "-"
                ] if timed else []
        t.add_row(row["name"], row["op"], str(row["orders"]), kept, f"{row['macs'] / 1e6:.1f}",
                  "-" if bops is None else f"{bops / 1e9:.2f}", *cost,
                  "-" if err is None else (f"{err:.1f}" if row["orders"] == 1 or err1 is None
                                           else f"{err1:.1f} -> {err:.1f}"),
                  *_act_cells(row.get("activations") or [act]),
                  f"[{'green' if row['runs_int8'] or row.get('runs_low_bit') else 'red'}]"
                  f"{runs}[/]")
    return t


def _act_cells(acts: list) -> tuple[str, str]:
    """The "act range" and "act" cells: one activation, or both inputs of an attention MatMul
    (a x b)."""
    if any(a is None for a in acts):
        return "-", "-"
    return (" x ".join(f"{a['range']:.3g}" for a in acts),
            " x ".join(f"{a['dtype']} ({a['source']})" for a in acts))
