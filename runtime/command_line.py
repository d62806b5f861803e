"""What the three command-line tools (``cminet``, ``cminet-export``, ``cminet-bench``) share:
the error boundary and the option types. Torch-free, like the rest of the runtime.

The boundary: every failure ends as one line on stderr, ``error: <what>: <problem>``, with
exit status 1 (2 for a wrong command line, 130 for Ctrl-C). A failure we did not foresee is
one line too, with a hint to rerun with ``--debug``, which every command of the three tools
accepts (anywhere on the command line; or set ``CMINET_DEBUG=1``) and which shows the full
traceback instead. A missing optional package is answered with the extra to install.
"""

from __future__ import annotations

import errno
import importlib.util
import math
import os
import signal
import sys
import threading
import warnings

import click

from . import contract
from .errors import CMINetError

DEBUG_ENV = "CMINET_DEBUG"
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
MAX_MESSAGE = 400  # characters of one error line


# -- the error boundary -------------------------------------------------------------------
def _with_debug_option(command: click.Command) -> click.Command:
    if not any(p.name == "debug" for p in command.params):
        command.params.append(click.Option(["--debug"], is_flag=True, expose_value=False,
                                           help="Show full tracebacks instead of one-line errors."))
    return command


def wants_debug(argv: list[str]) -> bool:
    """``--debug`` anywhere before a ``--`` separator, or ``CMINET_DEBUG=1``."""
    options = argv[: argv.index("--")] if "--" in argv else argv
    return "--debug" in options or os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes")


def one_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    joined = " ".join(lines)
    return joined if len(joined) <= MAX_MESSAGE else joined[: MAX_MESSAGE - 1] + "…"


_MODULE_OF = {"cuda-python": "cuda", "nvidia-pytriton": "pytriton", "opencv-python-headless": "cv2"}  # dist → module


def install_hint(module: str) -> str:
    """``pip install 'cminet[train]'`` for a module that an extra of the installed cminet
    provides (read from the package's metadata, so new extras need no change here)."""
    from importlib import metadata

    wanted = module.split(".")[0].lower()
    try:
        requirements = metadata.requires("cminet") or []
    except metadata.PackageNotFoundError:
        requirements = []
    for requirement in requirements:
        name, _, marker = requirement.partition(";")
        dist = name.strip().split("[")[0]
        for sep in "<>=!~ ":
            dist = dist.split(sep)[0]
        if "extra ==" in marker and _MODULE_OF.get(dist.lower(), dist.lower().replace("-", "_")) == wanted:
            extra = marker.split("extra ==")[1].strip().strip("'\"")
            return f"pip install 'cminet[{extra}]'"
    return f"pip install {module.split('.')[0]}"


def describe_failure(exc: BaseException) -> tuple[str, int]:
    """(one-line message without 'error: ', exit status) for any exception."""
    if isinstance(exc, click.UsageError):
        where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        return one_line(exc.format_message()) + where, exc.exit_code
    if isinstance(exc, click.ClickException):
        return one_line(exc.format_message()), exc.exit_code
    # click wraps it in Abort: `raise Abort() from e` in 8.2, inside the except block in 8.1
    if any(isinstance(e, Terminated) for e in (exc, exc.__cause__, exc.__context__)):
        return "terminated (SIGTERM)", 143
    if isinstance(exc, click.Abort | KeyboardInterrupt):
        return "interrupted", 130
    if isinstance(exc, CMINetError):
        return one_line(str(exc)), 1
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return f"this needs the {exc.name.split('.')[0]} package, which is not installed: {install_hint(exc.name)}", 1
    if isinstance(exc, OSError) and exc.strerror:
        names = " -> ".join(str(n) for n in (exc.filename, exc.filename2) if n is not None)
        return one_line(f"{names}: {exc.strerror}" if names else exc.strerror), 1
    if isinstance(exc, MemoryError):
        return "out of memory (try a smaller image or batch, or --tile 512)", 1
    detail = one_line(str(exc)) or "no message"
    return f"unexpected {type(exc).__name__}: {detail} (rerun with --debug for the traceback)", 1


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    click.echo(f"warning: {one_line(str(message))}", err=True)


# click 8.2 raises NoArgsIsHelpError for a bare group and leaves showing it to the caller; click
# 8.1 prints the help itself and exits 0, so it never reaches the handler (and has no such class).
_NO_ARGS_IS_HELP: tuple[type[Exception], ...] = tuple(
    filter(None, [getattr(click.exceptions, "NoArgsIsHelpError", None)]))


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, systemd, docker stop) raised like Ctrl-C, so that every ``finally`` and
    ``with`` block on the way out removes its temporary files and staged outputs."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated


def _terminate_like_ctrl_c() -> None:
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) in (
            signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _raise_terminated)


class _Boundary:
    """Mixin for click commands: runs ``main`` inside the error boundary and gives every
    command the ``--debug`` option."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _with_debug_option(self)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        argv = list(sys.argv[1:] if args is None else args)
        if not standalone_mode:
            return super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        debug = wants_debug(argv)
        _terminate_like_ctrl_c()
        try:
            with warnings.catch_warnings():
                if not debug:
                    warnings.showwarning = _warning_line
                result = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except _NO_ARGS_IS_HELP as exc:  # bare `cminet` on click 8.2+: the help, as click shows it
            exc.show()
            sys.exit(exc.exit_code)
        except OSError as exc:
            if exc.errno == errno.EPIPE:  # `cminet ... | head`: the reader left; nothing to say
                sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - the interpreter flushes it on exit
                sys.exit(1)
            self._fail(exc, debug)
        except Exception as exc:
            self._fail(exc, debug)
        sys.exit(result if isinstance(result, int) and not isinstance(result, bool) else 0)

    @staticmethod
    def _fail(exc: Exception, debug: bool):
        if debug and not isinstance(exc, click.ClickException | click.Abort):  # a wrong command line has no
            raise exc  # interesting traceback; everything else shows its own
        message, status = describe_failure(exc)
        click.echo(f"error: {message}", err=True)
        sys.exit(status)


class BoundaryCommand(_Boundary, click.Command):
    """A click command inside the shared error boundary (``cminet-export``, ``cminet-bench``)."""


class BoundaryGroup(_Boundary, click.Group):
    """A click group inside the shared error boundary; its commands get ``--debug`` too."""

    command_class = BoundaryCommand

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        super().add_command(_with_debug_option(cmd), name)


def require(module: str, what: str) -> None:
    """One line naming the extra to install when ``what`` needs ``module`` (e.g. torch)."""
    if importlib.util.find_spec(module) is None:
        raise CMINetError(f"{what} needs {_PRETTY.get(module, module)}, which is not installed: "
                          f"{install_hint(module)}")


_PRETTY = {"torch": "PyTorch"}


# -- option types: each refuses bad values as a usage error naming the option --------------
class FiniteFloat(click.ParamType):
    """A finite number (NaN and ±Inf refused, unlike click's FloatRange), optionally ≥ or
    > ``minimum``."""

    name = "number"

    def __init__(self, minimum: float | None = None, exclusive: bool = False):
        self.minimum, self.exclusive = minimum, exclusive

    def convert(self, value, param, ctx):
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        low = self.minimum
        if low is not None and (number < low or (self.exclusive and number == low)):
            self.fail(f"{value!r} is not {'>' if self.exclusive else '≥'} {low:g}", param, ctx)
        return number


class SizeType(click.ParamType):
    """H×W like 256, 256x320 or 256×320 (:func:`cminet.runtime.contract.parse_size`)."""

    name = "HxW"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            return contract.parse_size(value)
        except CMINetError as exc:
            self.fail(str(exc), param, ctx)


class TileType(click.ParamType):
    """auto, off or a tile side ≥ 64 (:func:`cminet.runtime.tiling.parse_tile`)."""

    name = "auto|off|N"

    def convert(self, value, param, ctx):
        from cminet.runtime.tiling import parse_tile

        try:
            return parse_tile(value)
        except CMINetError as exc:
            self.fail(str(exc), param, ctx)


POSITIVE = FiniteFloat(0.0, exclusive=True)
NON_NEGATIVE = FiniteFloat(0.0)
TILE_HELP = ("Images too large for this machine's memory are fused in overlapping tiles with blended seams: "
             "auto (only when needed), off (refuse instead), or a tile side such as 512.")
