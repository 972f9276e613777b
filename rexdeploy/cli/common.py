"""What every verb of the command line shares: the user-error wrapper, the console, parsers
of repeated option values, JSON output, and option sections in --help (SectionedCommand)."""

from __future__ import annotations

import functools
import math
import sys

import click

from rexdeploy.config import QUANT_FLAGS, BuildConfig, choices, flat_field
from rexdeploy.errors import UserError


def user_errors(fn):
    """User mistakes: one clear message, exit 1, no traceback. Bugs keep their traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import signal

        from rexdeploy.interrupts import exit_code, interrupted_by, signals_as_interrupts

        try:
            with signals_as_interrupts():  # SIGTERM unwinds (and cleans up) like Ctrl-C
                return fn(*args, **kwargs)
        except (KeyboardInterrupt, Exception) as exc:
            signum = interrupted_by(exc)
            if signum:
                what = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
                click.secho(f"{what}: stopped; no partial output was left behind",
                            fg="yellow", err=True)
                sys.exit(exit_code(signum))
            if not isinstance(exc, UserError):
                raise
            click.secho(f"error: {exc.message}", fg="red", err=True)
            if exc.hint:
                click.echo(f"  hint: {exc.hint}", err=True)
            sys.exit(1)

    return wrapper


def console():
    """A rich console; 120 columns where the output is not a terminal (logs and pipes: tables
    are not squeezed into 80 columns)."""
    from rich.console import Console

    out = Console()
    return out if out.is_terminal else Console(width=120)


# -- option sections ------------------------------------------------------------------------------
def section(title: str, *options):
    """Apply click `options` to a command and file them under `title` in its --help (with
    cls=SectionedCommand). Options read top to bottom, as when written as decorators."""

    def apply(fn):
        for option in reversed(options):
            fn = option(fn)
        for param in fn.__click_params__[-len(options):]:
            param.help_section = title
        return fn

    return apply


class SectionedCommand(click.Command):
    """--help lists the options under their section titles (section()), in the order the
    sections are declared, and last those without one (--help) under "Other options"."""

    def format_options(self, ctx, formatter) -> None:
        groups: dict[str, list] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None and isinstance(param, click.Option):
                groups.setdefault(getattr(param, "help_section", None), []).append(record)
        other = groups.pop(None, [])
        for title, rows in [*groups.items(), ("Other options", other)]:
            if not rows:
                continue
            with formatter.section(title):
                formatter.write_dl(rows)


# -- shared options -------------------------------------------------------------------------------
def field_option(flag: str, help: str):
    """The choice option of the config field `flag` names (--int8-isa: int8_isa), of QuantConfig
    or else BuildConfig: its choices are the field's Literal type (rexdeploy.config.choices),
    its default the field's own, so neither is written twice."""
    name = flag.lstrip("-").replace("-", "_")
    cls, name = flat_field(name) if name in QUANT_FLAGS else (BuildConfig, name)
    return click.option(flag, type=click.Choice(choices(cls, name)),
                        default=cls.__dataclass_fields__[name].default, show_default=True,
                        help=help)


def quiet_option(help_text: str = "No progress output."):
    return click.option("--quiet", "-q", is_flag=True, help=help_text)


def dim_option(help_text: str):
    return click.option("--dim", "dims", multiple=True, metavar="NAME=VALUE", help=help_text)


# -- parsers of option values ---------------------------------------------------------------------
def parse_dim(text: str) -> tuple[str, int]:
    """NAME=VALUE of --dim: a named dynamic dim and a positive size."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip().isdigit() or int(value) < 1:
        raise click.BadParameter(f"{text!r}: expected NAME=VALUE, e.g. W=256",
                                 param_hint="--dim")
    return name.strip(), int(value)


def parse_range(text: str) -> tuple[str, float, float]:
    """NAME:LO,HI of --input-range (the name may itself hold ':', as in input:0)."""
    try:
        name, rest = text.rsplit(":", 1)
        lo, hi = (float(v) for v in rest.split(","))
        if not name or not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError("a name and finite bounds are needed")
    except ValueError:
        raise UserError(f"bad --input-range {text!r}: expected NAME:LO,HI (finite numbers)",
                        "e.g. --input-range input:-1,1 for images scaled to [-1, 1]") from None
    return name, lo, hi


def parse_dim_range(text: str) -> tuple[str, int, int, int]:
    """DIM=MIN:OPT:MAX of --dim-range."""
    try:
        name, rest = text.split("=", 1)
        lo, opt, hi = (int(v) for v in rest.split(":"))
    except ValueError:
        raise UserError(f"bad --dim-range {text!r}: expected DIM=MIN:OPT:MAX, e.g. B=1:4:16") \
            from None
    return name, lo, opt, hi


# -- JSON output ----------------------------------------------------------------------------------
def save_json(path: str | None, result: dict) -> None:
    """`result` written atomically to `path` (--save), if given."""
    if path:
        from rexdeploy.artifact import write_json_atomic

        write_json_atomic(path, result, "choose a writable --save path")


def json_default(obj):
    from rexdeploy.artifact import _json_default as default

    return default(obj)
