"""``mrimsm`` command-line entry point.

Each subcommand lives in its own module under ``cli/`` (installed as ``mrimsm.cli``) and is registered
below. Library errors (:class:`mrimsm.errors.MrimsmError`) and usage errors (a bad
option value, an unknown option, a missing argument) become one-line ``error: ...``
messages with exit code 2, never tracebacks or usage panels; an interrupt
(:class:`mrimsm.errors.Interrupted`, SIGINT / SIGTERM) prints ``interrupted: ...`` and
exits with 130, however many signals follow the first.
"""

from __future__ import annotations

import sys
from typing import Optional

import typer

from mrimsm import __version__
from mrimsm.errors import Interrupted, MrimsmError
from mrimsm.interrupt import stopping, until_exit

app = typer.Typer(
    name="mrimsm",
    help="MRI reconstruction with measurement score-based diffusion models (MSM).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"mrimsm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """MRI reconstruction with measurement score-based diffusion models (MSM)."""


def fail(message: str, code: int = 2) -> "typer.Exit":
    """Print ``error: message`` on stderr and return an Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


# -- subcommands (each module registers itself on `app`) ----------------------
# Registration lines are added here as commands become real.
from . import train_cmd; train_cmd.register(app)  # noqa: E402,E702
from . import sample_cmd; sample_cmd.register(app)  # noqa: E402,E702
from . import recon_cmd; recon_cmd.register(app)  # noqa: E402,E702
from . import prep_cmd; prep_cmd.register(app)  # noqa: E402,E702
from . import restore_cmd; restore_cmd.register(app)  # noqa: E402,E702
from . import calibrate_cmd; calibrate_cmd.register(app)  # noqa: E402,E702
from . import convert_cmd; convert_cmd.register(app)  # noqa: E402,E702


def main(argv: Optional[list] = None) -> int:
    """Console-script entry: run the app; every way it can end is an exit code and at
    most one line on stderr for a failure.

    * a library error (:class:`~mrimsm.errors.MrimsmError`) and a usage error that Typer /
      Click finds while parsing (a bad value for a typed option, an unknown option or
      command, a missing argument) print ``error: <message>`` and return 2;
    * SIGINT / SIGTERM return 130: the long commands raise
      :class:`~mrimsm.errors.Interrupted` (``interrupted: <what finished, how to go on>``),
      anywhere else ``interrupted: SIGNAL``. :func:`mrimsm.interrupt.until_exit` keeps
      the signals handled for the whole command, so a second SIGTERM cannot kill the
      process (exit 143) while it reports the first;
    * ``--help`` and ``--version`` print as Typer does and return 0.
    """
    with until_exit():
        try:
            return _run(argv)
        except KeyboardInterrupt:  # a signal that came while an error was being reported
            return _interrupted()


def _run(argv: Optional[list]) -> int:
    exceptions = _click_exceptions()
    try:
        # standalone_mode=False: Click's usage errors come here as exceptions instead of
        # its multi-line usage panel
        code = app(args=argv, prog_name="mrimsm", standalone_mode=False)
    except Interrupted as exc:
        typer.echo(f"interrupted: {_one_line(exc)}", err=True)
        return exc.exit_code
    except MrimsmError as exc:
        typer.echo(f"error: {_one_line(exc)}", err=True)
        return exc.exit_code
    except exceptions.ClickException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `mrimsm`: the help, as Typer prints it
            text = exc.format_message()
            if text.strip():
                typer.echo(text)
            return exc.exit_code
        typer.echo(f"error: {_usage_message(exc, argv)}", err=True)
        return USAGE_EXIT_CODE
    except _ABORTS:  # Click's Abort (e.g. end of input at a prompt); Typer's KeyboardInterrupt
        return _interrupted()
    except KeyboardInterrupt:
        return _interrupted()
    except SystemExit as exc:
        code = exc.code
        if code == 130 and _from_keyboard_interrupt(exc):
            return _interrupted()
        return code if isinstance(code, int) else (0 if code is None else 1)
    if code == 130:
        # Typer turns a KeyboardInterrupt that no command handled into Exit(130), which
        # standalone_mode=False returns (no command exits with 130 itself): say so
        return _interrupted()
    return code if isinstance(code, int) else 0


#: The exit code of a bad input (a usage error included).
USAGE_EXIT_CODE = 2


def _interrupted() -> int:
    """Print ``interrupted: SIGNAL`` for a signal that stopped the command outside its
    own interrupt handling (the long commands raise Interrupted with more to tell); 130."""
    name = stopping()
    typer.echo(f"interrupted: {name}" if name else "interrupted", err=True)
    return Interrupted.exit_code


def _click_exceptions():
    """Click's exceptions module: Typer's own copy (typer >= 0.20 vendors Click) or Click."""
    try:
        from typer._click import exceptions
    except ImportError:  # older typer: click itself
        from click import exceptions
    return exceptions


def _aborts() -> tuple:
    kinds = [typer.Abort]
    abort = getattr(_click_exceptions(), "Abort", None)
    if isinstance(abort, type) and abort not in kinds:
        kinds.append(abort)
    return tuple(kinds)


_ABORTS = _aborts()


def _usage_message(exc: BaseException, argv: Optional[list]) -> str:
    """Click's message on one line, and where the command's options are listed."""
    ctx = getattr(exc, "ctx", None)
    path = getattr(ctx, "command_path", "") if ctx is not None else ""
    if not path:  # some parser errors carry no context: the command is the first word that names one
        words = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
        names = {c.name for c in app.registered_commands}
        path = " ".join(["mrimsm", *[w for w in words if w in names][:1]])
    text = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    return _one_line(" ".join(str(text).split())) + f" (see: {path} --help)"


def _one_line(exc: BaseException) -> str:
    """The message on one printable line (newlines folded; text that is not UTF-8, e.g.
    a file's bytes read with surrogate escapes, shown as ``\\xNN``)."""
    text = " ".join(str(exc).split("\n"))
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _from_keyboard_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` was raised while handling a KeyboardInterrupt (its chain holds one)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


if __name__ == "__main__":
    sys.exit(main())
