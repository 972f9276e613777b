"""Run the bad-input matrix (tests/test_cli/test_bad_inputs.py) and write what the user sees into
docs/reliability.md, between its `matrix:begin` / `matrix:end` markers.

    .venv/bin/python tools/reliability_table.py            # rewrite the table in the doc
    .venv/bin/python tools/reliability_table.py --print    # print it instead

Each case runs exactly as its test does (same setup, same CLI entry point); temporary paths in
the messages are shown as <tmp> and <models>. The full-disk and read-only cases mount a small
tmpfs and need root (they show as skipped otherwise).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "reliability.md")
BEGIN, END = "<!-- matrix:begin -->", "<!-- matrix:end -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def run_matrix() -> list[str]:
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import test_bad_inputs as matrix

    rows = ["| case | situation | exit | what the user sees |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        models = matrix.Models(os.path.join(tmp, "models"))
        os.makedirs(models.folder)
        for i, case in enumerate(matrix.CASES):
            root = os.path.join(tmp, f"case{i:02d}")
            os.makedirs(root)
            env = matrix.Env(models, root)
            with env.cleanup:
                outcome = matrix.run_case(case, env)
            if outcome is None:
                rows.append(f"| `{case.id}` | {_cell(case.what)} | - | skipped here: "
                            f"{_cell(env.skip_reason or '')} |")
                continue
            message, hint = matrix.error_lines(case, outcome)
            if case.code == 0:
                message = next((l.strip() for l in outcome.stdout.splitlines()
                                if re.search(case.message, l)), message)
                message = f"succeeds, printing `{message.strip(' │,')}`"
            shown = _anonymise(message + (f"<br>{hint}" if hint else ""), root, models.folder)
            status = "" if outcome.code == case.code and re.search(case.message, message) \
                or case.code == 0 else " **(differs from the test's expectation)**"
            rows.append(f"| `{case.id}` | {_cell(case.what)} | {outcome.code} | "
                        f"{_cell(shown)}{status} |")
            print(f"{case.id:32s} exit {outcome.code}", file=sys.stderr)
    return rows


def _anonymise(text: str, root: str, models: str) -> str:
    text = text.replace(os.path.realpath(models), "<models>").replace(models, "<models>")
    return text.replace(os.path.realpath(root), "<tmp>").replace(root, "<tmp>")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--print", action="store_true", help="print the table, do not write")
    args = parser.parse_args()
    table = "\n".join(run_matrix())
    if args.print:
        print(table)
        return
    with open(DOC) as f:
        doc = f.read()
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{DOC} has no {BEGIN} ... {END} section")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    with open(DOC, "w") as f:
        f.write(f"{head}{BEGIN}\n{table}\n{END}{tail}")
    print(f"wrote {len(table.splitlines()) - 2} cases into {DOC}", file=sys.stderr)


if __name__ == "__main__":
    main()
