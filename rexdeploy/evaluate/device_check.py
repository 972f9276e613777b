"""Device against reference: does the compiled model compute what its Q/DQ ONNX means?

The Q/DQ ONNX run in ONNX Runtime (the reference backend, Q/DQ unfused) defines what a plan
means; the compiled model on the device must reproduce it. It may not: a CPU without VNNI
saturates int8 pairs in int16 (calib_free.weights.saturation), an engine can diverge from its Q/DQ
ONNX. The build runs the compiled model, the reference and the float model (`float.onnx` in ONNX
Runtime) on its own synthetic inputs and records, per output:

    reference_db           SQNR of the reference against the float model
    device_db              SQNR of the device against the float model
    device_vs_reference_db SQNR of the device against the reference
    loss_db                what the device loses against its reference (rexdeploy.evaluate.fidelity.
                           device_loss_db: the smaller of reference_db - device_db and what its
                           departure would cost if independent of the plan's error)

An output that a Sigmoid or Softmax makes is compared as logits ("on": "logits";
rexdeploy.evaluate.fidelity.head_logits): a detector's map is almost 0 on synthetic inputs, where
ONNX Runtime's Sigmoid returns 0 and OpenVINO's 1e-12, and as probabilities a faithful device
lost 2.8 dB against its reference (PP-OCRv4's text detector, whose device and reference are
within 0.2 dB of each other on real pages). Where the float output stays under 1e-6 almost
everywhere (that detector's map on 1/f noise), the inputs say nothing of it: no verdict on that
output ("no_verdict"), and the build says to compare on real inputs.

A loss above the tolerance (1 dB by default) is a loud warning naming the likely cause, or with
`--strict-device-check` an error, unless the inputs' scatter explains it: two runtimes that round
a deep network's int8 codes a little differently drift apart layer by layer, to the size of the
quantization noise, and then either may read better on a given input. Input by input
(per_input_loss_db, its standard error per_input_loss_se, over 4 inputs or more) a device that
computes something else loses on every input; where the mean loss is within twice its standard
error, the check agrees and says "within the inputs' scatter" (fidelity.loses_within). Where the target CPU is another than this host's (a
cross-build, `--int8-isa`), the check runs in a child process under ONEDNN_MAX_CPU_ISA when this
host can run the target's kernels (it falls back to an older ISA on request), else it is skipped
and says so. A build's check always runs outside the build's process, in a worker kept warm
across builds: OpenVINO 2026.4 crashes (SIGSEGV) running PP-OCRv4's recogniser under
ONEDNN_MAX_CPU_ISA=AVX2, its float model too, and in the build's own process that crash took
the build and its artifact with it. Now the artifact is written, and a child of its own runs the
check once more to say that the runtime crashed ("crashed" in report.json) and whether the float
model crashes there too.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_TOLERANCE_DB = 1.0
SAMPLES = 8  # the synthetic inputs a build's (or a finished engine's) check runs


@dataclass(frozen=True)
class CheckSpec:
    """What to run: the artifact directory (`root`), its members ([{"files": {role: path
    relative to root}, "weight": w}], one for a plain build: an ensemble's outputs are their
    weighted sum), the float ONNX relative to root, and the target and device."""

    root: str
    target: str
    device: str
    members: tuple[dict, ...]
    float_onnx: str


def check(spec: CheckSpec, samples: list[dict], inputs: str, *, env: dict | None = None,
          tolerance_db: float = DEFAULT_TOLERANCE_DB, isolate: bool = False) -> dict:
    """The device check on `samples` (feeds dicts), `inputs` saying what they are; in a child
    process under `env` (e.g. {"ONEDNN_MAX_CPU_ISA": "AVX2"}) when given, or with `isolate`
    (a runtime that crashes on the model then costs the check, not the build). Returns the
    report.json entry (see the module docstring), with "agrees" and "loss_db" (the worst
    output's); where the runtime crashed, "skipped" saying so and "crashed": True."""
    env = env or {}
    if env:  # another ISA: a child under it, which may say the host cannot run it (a str)
        outputs = _in_child(spec, samples, env)
        if isinstance(outputs, str):
            return {"skipped": outputs, "environment": env}
    elif isolate:
        state, outputs = _in_worker(spec, samples)
        if state == "died":  # a fresh child of its own runs it again: a crash there is this
            outputs = _in_child(spec, samples, env)  # model's, and it says how
        if state == "error" or isinstance(outputs, str):
            outputs = measure(spec, samples)  # an error, not the host: raised here as before
    else:
        outputs = measure(spec, samples)
    if "crashed" in outputs:
        return {"skipped": outputs["crashed"], "crashed": True, "environment": env,
                "host": crash_host(spec.target, env)}
    from rexdeploy.evaluate.fidelity import loses_within

    rows = [o for o in outputs.values() if o.get("loss_db") is not None]
    loss = max((o["loss_db"] for o in rows), default=0.0)
    empty = [name for name, o in outputs.items() if "informative" in o]
    return {"samples": len(samples), "inputs": inputs, "tolerance_db": tolerance_db,
            "environment": env, "outputs": outputs, "loss_db": round(loss, 3),
            "agrees": all(loses_within(o, tolerance_db) for o in rows)} | \
        ({"no_verdict": empty} if empty else {})


def measure(spec: CheckSpec, samples: list[dict]) -> dict:
    """Per float output: reference_db, device_db, loss_db and device_vs_reference_db (module
    docstring, rexdeploy.evaluate.fidelity.device_vs_reference), in this process; an integer output
    gets the fraction of its elements the device matches exactly."""
    from rexdeploy.evaluate.fidelity import device_vs_reference, model_heads, sqnr_db

    runs = {"float": [], "reference": [], "device": []}
    with _float_runner(spec) as f, _runner(spec, "reference") as r, _runner(spec, None) as d:
        for feeds in samples:
            for key, runner in (("float", f), ("reference", r), ("device", d)):
                runs[key].append(runner.infer(feeds))
    ref, dev, flt = ({name: np.stack([np.asarray(o[name]) for o in runs[key]])
                      for name in runs[key][0]} for key in ("reference", "device", "float"))
    rows = device_vs_reference({n: a for n, a in flt.items()
                                if n in ref and a.shape == ref[n].shape}, dev, ref,
                               heads=model_heads(os.path.join(spec.root, spec.float_onnx))
                               )["outputs"]
    out = {}
    for name in ref:
        if not np.issubdtype(ref[name].dtype, np.floating):
            out[name] = {"exact_match": float(np.mean(ref[name] == dev[name]))}
        elif name in rows:
            out[name] = {k: v if k in ("on", "inputs") else round(v, 6) if k == "informative"
                         else round(v, 3) if k.startswith(("loss", "per_input")) else _db(v)
                         for k, v in rows[name].items()}
        else:  # no float output of that shape to compare with
            out[name] = {"device_vs_reference_db": _db(sqnr_db(ref[name], dev[name]))}
    return out


def _db(x: float) -> float:
    return round(x, 3) if math.isfinite(x) else (999.0 if x > 0 else -999.0)


def _float_runner(spec: CheckSpec):
    import backends
    from backends.base import RunOptions

    return backends.get("reference").runner(spec.root, {"onnx": spec.float_onnx}, RunOptions())


def _runner(spec: CheckSpec, backend: str | None):
    """The device runner (backend None: the target's) or the reference runner over the members,
    an EnsembleRunner for more than one."""
    import backends
    from backends.base import RunOptions

    name = backend or spec.target
    b = backends.get(name)
    options = RunOptions(device="CPU" if name == "reference" else spec.device)
    runners = [b.runner(spec.root, {"onnx": m["files"]["onnx"]} if name == "reference"
                        else m["files"], options) for m in spec.members]
    if len(runners) == 1:
        return runners[0]
    from backends.ensemble import EnsembleRunner

    return EnsembleRunner(runners, [m["weight"] for m in spec.members])


def _in_child(spec: CheckSpec, samples: list[dict], env: dict) -> dict | str:
    """`measure` in a child process with `env` added (oneDNN reads ONEDNN_MAX_CPU_ISA once per
    process): the spec and samples go through a temporary directory, the result as JSON. Where
    the child fails, why (a str): OpenVINO picks some kernels (bf16, compressed weights) by the
    host's own features, which oneDNN then refuses under the cap."""
    with tempfile.TemporaryDirectory(prefix="rexdeploy-check-") as tmp:
        _write(tmp, spec, samples)
        proc = _run_child(tmp, env)
        if proc.returncode < 0:  # killed by a signal: the runtime crashed on the model
            return {"crashed": _crash_text(spec, tmp, env, proc.returncode)}
        if proc.returncode != 0:
            lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
            last = next((l for l in reversed(lines) if "Error" in l), lines[-1] if lines
                        else "no output")
            return (f"this host could not run the target's kernels under {_env_text(env)} "
                    f"({last.strip()[:300]}); run `rexdeploy compare ART --synthetic 8` on "
                    "the target to check it there")
        with open(os.path.join(tmp, "result.json")) as f:
            return json.load(f)


def _write(tmp: str, spec: CheckSpec, samples: list[dict]) -> None:
    with open(os.path.join(tmp, "spec.json"), "w") as f:
        json.dump(asdict(spec), f)
    np.savez(os.path.join(tmp, "samples.npz"),
             **{f"{i}/{name}": x for i, s in enumerate(samples) for name, x in s.items()})


# The build's native check runs in a worker process kept warm across the builds of one process:
# a child started per check paid about 1 s of imports and start each time (the test suite's
# builds, 5 minutes of a CI run). It is restarted where it died or the ISA environment changed.
_WORKER: dict = {}
_LOCK = threading.Lock()  # builds in threads of one process take turns on the one worker
_REPLY = "rexdeploy-check:"  # the worker's reply lines; anything else it prints is passed over
_ENV_PREFIXES = ("ONEDNN_", "DNNL_", "OV_", "OMP_", "KMP_", "TBB_")


def _in_worker(spec: CheckSpec, samples: list[dict]) -> tuple[str, dict | None]:
    """measure() in the warm worker: ("ok", outputs), ("error", None) where it raised (the
    caller raises it again here), ("died", None) where the worker died on it (a crash)."""
    with tempfile.TemporaryDirectory(prefix="rexdeploy-check-") as tmp, _LOCK:
        _write(tmp, spec, samples)
        proc = _worker()
        reply = ""
        try:
            proc.stdin.write(tmp + "\n")
            proc.stdin.flush()
            while not reply.startswith(_REPLY):
                reply = proc.stdout.readline()
                if not reply:
                    break
        except OSError:  # a broken pipe: it died
            reply = ""
        if not reply:
            _stop_worker()
            return "died", None
        if reply.strip() != _REPLY + " ok":
            return "error", None
        with open(os.path.join(tmp, "result.json")) as f:
            return "ok", json.load(f)


def _worker() -> subprocess.Popen:
    key = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)))
    proc = _WORKER.get("proc")
    if proc is not None and (proc.poll() is not None or _WORKER.get("key") != key):
        _stop_worker()
        proc = None
    if proc is None:
        proc = subprocess.Popen([sys.executable, "-m", "rexdeploy.evaluate.device_check",
                                 "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        if not _WORKER:
            import atexit

            atexit.register(_stop_worker)
        _WORKER.update(proc=proc, key=key)
    return proc


def _stop_worker() -> None:
    proc = _WORKER.pop("proc", None)
    if proc is None:
        return
    try:
        proc.stdin.close()  # its loop ends
        proc.wait(timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        proc.kill()
        proc.wait()
    proc.stdout.close()


def _serve() -> None:
    """The worker's loop: one temporary directory per line, measured as _child does, one reply
    line each."""
    for line in sys.stdin:
        try:
            _child(line.strip())
            reply = "ok"
        except Exception:  # noqa: BLE001 (the caller raises it again, in its own process)
            reply = "error"
        sys.stdout.write(f"{_REPLY} {reply}\n")
        sys.stdout.flush()


def _run_child(tmp: str, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rexdeploy.evaluate.device_check", tmp, *args],
                          env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=1800)


def crash_host(target: str, env: dict | None = None) -> dict:
    """Where a runtime crash was seen, so that compare and profile can refuse to crash again
    there: the CPU, the ISA cap in force (ONEDNN_MAX_CPU_ISA, from `env` or this process's
    environment) and the runtime's version."""
    from importlib.metadata import PackageNotFoundError, version

    import backends
    from rexdeploy.devinfo import cpu_model

    package = backends.rules(target).runtime_package
    try:
        runtime = version(package) if package else None
    except PackageNotFoundError:
        runtime = None
    cap = (env or {}).get("ONEDNN_MAX_CPU_ISA", os.environ.get("ONEDNN_MAX_CPU_ISA"))
    return {"cpu": cpu_model(), "isa_cap": cap, "runtime": runtime}


def _crash_text(spec: CheckSpec, tmp: str, env: dict, returncode: int) -> str:
    """What a crash of the target's runtime on the compiled model means, having run the float
    model on the same runtime in another child: a crash there too is the runtime's fault with
    this model on this CPU, not the quantization's."""
    import signal

    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    import backends

    runtime = backends.rules(spec.target).runtime or spec.target
    where = f"under {_env_text(env)}" if env else "on this host"
    text = f"{runtime} crashed ({name}) running the compiled model {where}"
    if _run_child(tmp, env, "--float").returncode < 0:
        text += (f", and it crashes on the float model too: a fault of {runtime} with this "
                 "model on this CPU, not of the quantization")
    else:
        text += (", though the float model runs there: the quantized graph is what it cannot "
                 f"run (a fault to report to {runtime} with the artifact)")
    return text + ("; it could not be checked here: run it on the target CPU (or with another "
                   "runtime version) before deploying")


def _env_text(env: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in env.items())


def _child(tmp: str, float_only: bool = False) -> None:
    with open(os.path.join(tmp, "spec.json")) as f:
        d = json.load(f)
    spec = CheckSpec(**{**d, "members": tuple(d["members"])})
    arrays = np.load(os.path.join(tmp, "samples.npz"))
    samples: dict[int, dict] = {}
    for key in arrays.files:
        index, name = key.split("/", 1)
        samples.setdefault(int(index), {})[name] = arrays[key]
    if float_only:  # does the target's runtime run the float model? (_crash_text)
        import backends
        from backends.base import RunOptions

        runner = backends.get(spec.target).runner(spec.root, {"onnx": spec.float_onnx},
                                                  RunOptions(device=spec.device))
        with runner as r:
            r.infer(samples[0])
        return
    result = measure(spec, [samples[i] for i in sorted(samples)])
    with open(os.path.join(tmp, "result.json"), "w") as f:
        json.dump(result, f)


def likely_cause(isa: dict | None, pair_limit: int | None, target: str,
                 recurrent: int = 0) -> str:
    """One line on why a device disagrees with its reference, and what to do. recurrent: how
    many LSTM/GRU layers run int8 (--recurrent int8)."""
    if isa and isa.get("saturates") and pair_limit is None:
        return (f"int8 saturation: the target's int8 instruction set ({isa['name']}) adds pairs "
                "of products in a saturating int16 and --overflow-fix is off; rebuild with "
                "--overflow-fix auto")
    where = f"`rexdeploy compare ART --per-layer --backend {target}` names the first layer " \
            "where the device departs from the reference"
    if recurrent:
        return (f"{recurrent} int8 recurrent layer(s) (--recurrent int8): OpenVINO's int8 RNN "
                "kernel rounds the hidden state it feeds back to 8 bits at every step, which "
                "the reference keeps float; --recurrent float (the default) keeps them float")
    if isa and isa.get("saturates"):
        return (f"the target's int8 kernels ({isa['name']}) may still saturate where the "
                f"activation codes exceed their range; {where}")
    return f"the runtime computes differently from the Q/DQ reference; {where}"


def summary_line(result: dict) -> str:
    """One line for the build's summary and `inspect`."""
    if result.get("skipped"):
        return f"not run: {result['skipped']}"
    rows = [o for o in result["outputs"].values() if "loss_db" in o]
    empty = result.get("no_verdict") or []
    none = (f"no verdict on {', '.join(empty)}: its float output (a Sigmoid's or Softmax's, read "
            f"as logits) stays under 1e-6 almost everywhere on these {result['samples']} "
            f"{result['inputs']}, so they say nothing of it; compare the artifact on real "
            "inputs (rexdeploy compare ART --inputs DIR)") if empty else ""
    if not rows:
        return none or f"{result['samples']} samples: no float output to compare"
    worst = max(rows, key=lambda o: o["loss_db"])
    where = f" (under {_env_text(result['environment'])})" if result.get("environment") else ""
    verdict = f"agrees (loses {result['loss_db']:.2f} dB)" if result["agrees"] else \
        f"DISAGREES: loses {result['loss_db']:.1f} dB (tolerance {result['tolerance_db']:g} dB)"
    if result["agrees"] and worst["loss_db"] > result["tolerance_db"]:
        verdict = (f"agrees within the inputs' scatter (loses {worst['loss_db']:.1f} dB pooled, "
                   f"input by input {worst['per_input_loss_db']:.1f} +- "
                   f"{worst['per_input_loss_se']:.1f} dB)")
    logits = " (as logits: its Sigmoid/Softmax read back)" if worst.get("on") else ""
    return (f"{verdict}: device vs reference {worst['device_vs_reference_db']:.1f} dB{logits}; "
            f"against float: device {worst['device_db']:.1f} dB, reference "
            f"{worst['reference_db']:.1f} dB; {result['samples']} {result['inputs']}{where}"
            + (f"; {none}" if none else ""))


# under this SQNR against float on the build's synthetic inputs (noise at 1 % of the signal
# power, the bad-layer mark of compare --per-layer), the build suggests spending a budget on the
# activations that hurt. Measured on the build's own check: EfficientNet-Lite0 23.9 dB,
# MiniLM 22.9, ddddocr's detector 32.8 stay quiet; MobileNetV2 19.8 and the OCR models of
# tools/bench/wild.py (PP-OCRv4's recogniser 15.7, 16.9 as the logits it is now read as;
# ddddocr's recogniser 5.8) get the hint, and their task metrics gain with the budget.
# PP-OCRv4's detector, whose map the check's inputs leave empty, gets no verdict instead
# (summary_line: compare it on real inputs)
LOW_FIDELITY_DB = 20.0


def low_fidelity_hint(result: dict, q) -> str | None:
    """A note when the device check's reference keeps under LOW_FIDELITY_DB of SQNR against
    float and the user chose no budget (the default's small one leaves room): what to try.
    None otherwise."""
    rows = [o["reference_db"] for o in (result.get("outputs") or {}).values()
            if o.get("reference_db") is not None]
    chose = q.budget is not None and not q.auto_budget  # the user's own budget
    if result.get("skipped") or not rows or chose or q.activations != "int8":
        return None
    db = min(rows)
    if db >= LOW_FIDELITY_DB:
        return None
    return (f"the quantized model keeps {db:.1f} dB of SQNR against float on the "
            f"{result['samples']} {result['inputs']} (under {LOW_FIDELITY_DB:g} dB; synthetic "
            "inputs read some models lower or higher than real ones). If the model's task "
            "suffers, --budget 1.5 --mixed-precision all keeps the activations that hurt most "
            "float and raises the weights that do, each listed with its cost (PP-OCRv4's text "
            "recogniser: CTC exact match against float 0.62 without a budget, 0.87 with the "
            "default's 1.05, 0.91 with 1.5); rexdeploy compare --per-layer on your inputs "
            "names the layers")


# -- at build time ---------------------------------------------------------------------------------
def at_build(config, isa, root: str, members: list[dict], float_onnx: str, samples, log, *,
             deferred: bool = False) -> dict:
    """The build's device check of the compiled artifact in `root` (its members' files and the
    float ONNX relative to it): here, or, for another CPU's ISA (a cross-build), in a child
    process that runs that ISA's kernels; a dict saying why where it cannot run.
    samples: a function giving (feeds list, what they are), called only when the check runs."""
    from backends.cpu_isa import check_environment

    if not config.device_check:
        return {"skipped": "--no-device-check"}
    if deferred:
        return {"skipped": "no engine here (deferred): finish on the device, where the engine "
                           "is checked"}
    import backends

    if not backends.rules(config.target).device_check:
        return {"skipped": "the reference is the device"}
    env, why = check_environment(isa)
    if env is None:
        return {"skipped": why}
    feeds, what = samples()
    spec = CheckSpec(root, config.target, config.device, tuple(members), float_onnx)
    where = f" under {_env_text(env)}" if env else ""
    with log.stage("device check", f"{config.target} vs reference on {len(feeds)} {what}"
                                   f"{where}"):
        return check(spec, feeds, what, env=env, tolerance_db=config.device_tolerance,
                     isolate=True)


def put(report: dict, result: dict, target: str, isa: dict | None = None,
        pair_limit: int | None = None) -> None:
    """The device check into report.json and its summary (which the manifest copies); a
    disagreement gets its likely cause."""
    if not result.get("skipped") and not result.get("agrees", True):
        from rexdeploy.report import recurrent_count

        result["likely_cause"] = likely_cause(isa, pair_limit, target, recurrent_count(report))
    report["device_check"] = result
    report["summary"]["device_check"] = {k: result[k] for k in ("agrees", "loss_db", "skipped",
                                                                "crashed", "no_verdict")
                                         if k in result}


def record(report: dict, plan, isa, config, result: dict) -> None:
    """The ISA, the overflow fix and the device check into report.json (and its summary)."""
    from rexdeploy.report import overflow_summary

    s = report["summary"]
    s["int8_isa"] = isa.to_dict()
    s["overflow_fix"] = {"mode": config.quant.overflow_fix, "pair_limit": config.quant.pair_limit,
                         **overflow_summary(plan)}
    put(report, result, config.target, isa.to_dict(), config.quant.pair_limit)


def overflow_note(isa, q, plan) -> str:
    """What the target's int8 instruction set means for this build, for the log and report."""
    from rexdeploy.report import overflow_summary

    fix = overflow_summary(plan)
    text = f"int8 instruction set {isa.describe()}"
    if q.pair_limit is None:
        if isa.saturates and q.activations == "int8":
            text += ("; --overflow-fix off: int8 layers may saturate on this target (the device "
                     "check measures it)")
        return text
    return (text + f"; weight codes pair-limited to {q.pair_limit} (--overflow-fix "
            f"{q.overflow_fix}) in {fix['layers']} layers, {fix['channels_rescaled']} "
            f"output channels on a coarser scale (mean {fix['bits_given_up']:.2f} bits given "
            "up there)")


def say(result: dict | None, log) -> None:
    """The device check's verdict as the build's last lines: loud where the device disagrees."""
    if not result:
        return
    line = summary_line(result)
    if result.get("crashed"):
        log.console.print(f"[bold red]! device check not run: {result['skipped']} (the "
                          "artifact is written)[/]")
        return
    if result.get("skipped") or result.get("agrees", True):
        log.info(f"device check: {line}")
        return
    log.console.print(f"[bold red]! device check {line}[/]")
    log.console.print(f"[bold red]  likely cause: {result.get('likely_cause')}[/]")


def strict(config, result: dict) -> None:
    """--strict-device-check: a disagreement, or a runtime that crashed on the model, is a
    UserError (the artifact is not written)."""
    if config.strict_device_check and result and result.get("crashed"):
        from rexdeploy.errors import UserError

        raise UserError(f"device check (--strict-device-check): {result['skipped']}",
                        "nothing was written; rebuild without --strict-device-check to keep the "
                        "artifact")
    if config.strict_device_check and result and not result.get("skipped") \
            and not result.get("agrees", True):
        from rexdeploy.errors import UserError

        raise UserError(f"device check (--strict-device-check): {summary_line(result)}; "
                        f"likely cause: {result.get('likely_cause')}",
                        "nothing was written; rebuild without --strict-device-check to keep the "
                        "artifact and inspect it")


if __name__ == "__main__":  # the child of `_in_child`, or the warm worker (`_worker`)
    if sys.argv[1] == "--serve":
        _serve()
    else:
        _child(sys.argv[1], "--float" in sys.argv[2:])
