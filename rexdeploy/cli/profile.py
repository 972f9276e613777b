"""`rexdeploy profile`: latency, throughput and per-layer times of artifacts, interleaved,
with a regression gate against an earlier result (exit 3)."""

from __future__ import annotations

import json
import os
import sys

import click

from rexdeploy.cli.common import (console, dim_option, json_default, parse_dim, quiet_option,
                                  user_errors)


class _ProfileCommand(click.Command):
    """`--json` takes an optional FILE, so `profile --json ART` would read ART as the file and
    then miss the artifact. An existing artifact directory right after `--json` is the
    artifact: the JSON goes to stdout, as `--json - ART` says."""

    def parse_args(self, ctx, args):
        args = list(args)
        for i, arg in enumerate(args[:-1]):
            if arg == "--json" and os.path.isfile(os.path.join(args[i + 1], "manifest.json")):
                args[i] = "--json=-"
        return super().parse_args(ctx, args)


@click.command(cls=_ProfileCommand, epilog="""\b
Exit status: 0 done; 1 user error (e.g. a missing or invalid --baseline); 2 usage error;
3 the regression gate failed: a median latency or throughput is worse than --baseline's by more
than --max-regression (the figures are named on stderr).""")
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(), metavar="ARTIFACT...")
@click.option("--device", help="OpenVINO device: CPU, GPU, NPU [default: the build's]. "
                               "DLA0 is for TensorRT artifacts.")
@click.option("--batch", type=click.IntRange(1, 4096), help="Reshape the inputs to this batch; "
              "FPS counts frames [default: the artifact's shapes].")
@click.option("--warmup", type=click.FloatRange(0, 60000), default=200.0, show_default=True,
              metavar="MS", help="Untimed inferences before each variant's round, in ms.")
@click.option("--duration", type=click.FloatRange(0.1, 600),
              help="Seconds of timed inference per variant per round, for latency and again for "
                   "throughput [default: 3].")
@click.option("--iterations", type=click.IntRange(1), help="Instead of --duration: timed sync "
              "inferences per variant, split over the rounds.")
@click.option("--rounds", type=click.IntRange(1, 20), default=3, show_default=True,
              help="Interleaved rounds (variants alternate, so machine noise hits all alike).")
@click.option("--streams", type=click.IntRange(1, 256), help="Streams (= requests in flight) "
              "for async throughput [default: OpenVINO's THROUGHPUT hint].")
@dim_option("Size of a named dynamic dim of the inputs (e.g. W=256) [default: the "
            "build's --dim, else 1]; the run says which sizes it timed. Repeatable.")
@click.option("--inputs", metavar="DIR|random", help="Inputs: a folder/file as for compare, or "
              "random (synthetic, in the build's input ranges) [default: random].")
@click.option("--compare", is_flag=True, help="Also profile the float model, f32 pinned and at "
              "the device default precision, interleaved, with ratios against float f32.")
@click.option("--no-baselines", is_flag=True, hidden=True, help="Kept for old scripts: the "
              "float baselines now run only with --compare.")
@click.option("--top", type=click.IntRange(0), default=10, show_default=True,
              help="Slowest layers to show per variant (0: all).")
@click.option("--no-layers", is_flag=True, help="Skip the per-layer times (PERF_COUNT).")
@click.option("--json", "json_path", is_flag=False, flag_value="-", metavar="[FILE]",
              help="Write the versioned JSON result to FILE (alone, or '-': print it).")
@click.option("--save", type=click.Path(), help="Same as --json FILE (kept for old scripts).")
@click.option("--markdown", is_flag=True, help="Print markdown tables instead of rich tables.")
@click.option("--plot", type=click.Path(), metavar="FILE.png",
              help="Latency distribution and per-layer bars (needs matplotlib).")
@click.option("--baseline", type=click.Path(), metavar="FILE.json",
              help="Regression gate: compare with this earlier --json result (exit 3 if worse).")
@click.option("--max-regression", default="10%", show_default=True, metavar="PERCENT",
              help="The gate's bound on the median latency rise and the throughput drop.")
@quiet_option("No progress and no tables; of the gate, only the regressions.")
@user_errors
def profile(artifacts, device, batch, warmup, duration, iterations, rounds, streams, dims,
            inputs, compare, no_baselines, top, no_layers, json_path, save, markdown, plot,
            baseline, max_regression, quiet):
    """Latency (sync, 1 request), async throughput and per-layer times of each ARTIFACT,
    interleaved in one run; with --compare also the float model, with ratios."""
    from rexdeploy import api
    from rexdeploy.profiling.run import ProfileConfig
    from rexdeploy.profiling.schema import load_profile, save_profile
    from rexdeploy.evaluate.regression import parse_bound

    if duration is not None and iterations is not None:
        raise click.UsageError("give --duration or --iterations, not both")
    bound = parse_bound(max_regression)
    base_doc = load_profile(baseline) if baseline else None  # fail before any timing
    config = ProfileConfig(device=device, batch=batch, warmup_ms=warmup,
                           duration=duration or 3.0, iterations=iterations, rounds=rounds,
                           streams=streams, inputs=inputs, layers=not no_layers,
                           keep_times=bool(plot), dims=tuple(parse_dim(d) for d in dims))
    to_stdout = json_path == "-"
    doc = api.profile(list(artifacts), config, compare=compare,
                      quiet=quiet or to_stdout or markdown)
    for path in filter(None, (save, None if to_stdout else json_path)):
        save_profile(doc, path)
    if plot:
        from rexdeploy.profiling.plot import plot_profile

        plot_profile(doc, plot)
    if to_stdout:
        click.echo(json.dumps(doc, indent=1, default=json_default))
    elif markdown:
        from rexdeploy.profiling.render import markdown_tables

        click.echo(markdown_tables(doc, top))
    elif not quiet:
        _print_profile(doc, top)
    if base_doc is not None:
        _gate(doc, base_doc, bound, baseline, quiet)


def _print_profile(doc: dict, top: int) -> None:
    from rexdeploy.profiling.render import device_line, render_layer_table
    from rexdeploy.profiling.timing import render_profile_table

    out = console()
    for v in doc["variants"]:
        if v.get("layers"):
            out.print(render_layer_table(v, top))
    out.print(render_profile_table(doc["variants"]))
    out.print(device_line(doc), style="dim")


def _gate(doc: dict, base_doc: dict, bound: float, baseline: str, quiet: bool) -> None:
    from rexdeploy.evaluate.regression import EXIT_REGRESSION, check_regression

    findings = check_regression(doc, base_doc, bound)
    failed = [f for f in findings if f.regressed]
    for f in findings if not quiet else failed:
        click.echo(("REGRESSION " if f.regressed else "ok ") + f.describe(), err=True)
    if failed:
        click.secho(f"regression gate failed: {len(failed)} figure(s) worse than {baseline} by "
                    f"more than {bound:.0%}", fg="red", err=True)
        sys.exit(EXIT_REGRESSION)
