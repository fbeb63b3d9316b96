"""``mrimsm`` command-line entry point.

Each subcommand lives in its own module under ``cli/`` (installed as ``mrimsm.cli``) and is registered
below. Library errors (:class:`mrimsm.errors.MrimsmError`) become one-line
``error: ...`` messages with exit code 2, never tracebacks; an interrupt
(:class:`mrimsm.errors.Interrupted`, SIGINT / SIGTERM) prints ``interrupted: ...`` and
exits with 130.
"""

from __future__ import annotations

import sys
from typing import Optional

import typer

from mrimsm import __version__
from mrimsm.errors import Interrupted, MrimsmError

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
    """Console-script entry: run the app, turning MrimsmError into one line + exit 2."""
    try:
        app(args=argv, prog_name="mrimsm")
    except SystemExit as exc:
        code = exc.code
        if code == 130 and _from_keyboard_interrupt(exc):
            # Typer turns a KeyboardInterrupt that a command did not handle into a silent
            # Exit(130); say so (the long commands raise Interrupted with more to tell)
            typer.echo("interrupted", err=True)
        return code if isinstance(code, int) else (0 if code is None else 1)
    except Interrupted as exc:
        typer.echo(f"interrupted: {_one_line(exc)}", err=True)
        return exc.exit_code
    except MrimsmError as exc:
        typer.echo(f"error: {_one_line(exc)}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    return 0


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
