"""The ``rts`` command line.

Each command lives in its own small module and imports its heavy dependencies (numpy, rasterio,
geopandas, torch) inside the function, so ``rts --help`` stays fast. Errors the user can fix
(:class:`rtscli.errors.RtsError`) print one line and exit with code 2; ``rts --debug`` shows the
traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Any

import typer

from rtscli import __version__
from rtscli.errors import RtsError, Stopped

app = typer.Typer(
    name="rts",
    help="Map Arctic retrogressive thaw slumps from satellite imagery, one slump at a time.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": False}

if TYPE_CHECKING:  # the class that the lookup below finds, as the type checker knows it
    from typer._click.exceptions import ClickException as _ClickException
else:
    # Typer vendors click; its exception base class is reachable from its public BadParameter.
    _ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"rts {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logging."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors."),
) -> None:
    _state["debug"] = debug or bool(os.environ.get("RTS_DEBUG"))
    _setup_logging(logging.DEBUG if _state["debug"] else logging.WARNING if quiet else logging.INFO)


def _setup_logging(level: int) -> None:
    from rtscli.logs import setup

    setup(level)


# Commands: register lazily-importing wrappers from their modules.
from rtscli.cli import ablate as _ablate  # noqa: E402
from rtscli.cli import bands as _bands  # noqa: E402
from rtscli.cli import demo as _demo  # noqa: E402
from rtscli.cli import evaluate as _evaluate  # noqa: E402
from rtscli.cli import export as _export  # noqa: E402
from rtscli.cli import export_coco as _export_coco  # noqa: E402
from rtscli.cli import finetune as _finetune  # noqa: E402
from rtscli.cli import info as _info  # noqa: E402
from rtscli.cli import merge as _merge  # noqa: E402
from rtscli.cli import models as _models  # noqa: E402
from rtscli.cli import predict as _predict  # noqa: E402
from rtscli.cli import prepare as _prepare  # noqa: E402
from rtscli.cli import qgis_plugin as _qgis_plugin  # noqa: E402
from rtscli.cli import pretrain as _pretrain  # noqa: E402
from rtscli.cli import ssl as _ssl  # noqa: E402
from rtscli.cli import synth as _synth  # noqa: E402
from rtscli.cli import track as _track  # noqa: E402
from rtscli.cli import weights as _weights  # noqa: E402

app.command("demo")(_demo.demo)
app.command("synth")(_synth.synth)
app.command("prepare")(_prepare.prepare)
app.command("ssl")(_ssl.ssl)
app.command("pretrain")(_pretrain.pretrain)
app.command("finetune")(_finetune.finetune)
app.command("ablate")(_ablate.ablate)
app.command("evaluate")(_evaluate.evaluate)
app.command("predict")(_predict.predict)
app.command("merge")(_merge.merge)
app.command("track")(_track.track)
app.command("export")(_export.export)
app.command("export-coco")(_export_coco.export_coco)
app.add_typer(_models.app, name="models")
app.add_typer(_weights.app, name="weights")
app.command("info")(_info.info)
app.command("bands")(_bands.bands)
app.command("qgis-plugin")(_qgis_plugin.qgis_plugin)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 failure, 2 bad input or usage, 130 interrupted, 143 training
    stopped by SIGTERM)."""
    from rtscli.cli.commandline import refuse_repeated_options
    from rtscli.logs import library_warnings

    try:
        command = _command()
        refuse_repeated_options(command, list(sys.argv[1:] if argv is None else argv))
        with library_warnings():
            result = command.main(args=argv, prog_name="rts", standalone_mode=False)
    except typer.Exit as exc:
        if exc.exit_code == 130:
            print("rts: interrupted; no partial output was kept", file=sys.stderr)
        return exc.exit_code
    except _ClickException as exc:  # usage errors: click prints them with the usage line
        exc.show()
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        print("rts: interrupted; no partial output was kept", file=sys.stderr)
        return 130
    except Stopped as exc:  # SIGTERM (SLURM's time limit, kill): where it stopped, and how to continue
        if os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) == "0":  # one line, not one per DDP process
            print(f"rts: {exc}; continue with: {_continue_with(list(sys.argv[1:] if argv is None else argv))}",
                  file=sys.stderr)
        return exc.exit_code
    except RtsError as exc:
        if _state["debug"]:
            import traceback

            traceback.print_exc()
        print(f"rts: error: {_worker_message(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # a bug, not a user error: keep the traceback available
        from rtscli.errors import user_error

        err = user_error(exc)  # last resort: no permission, disk full, read-only, over quota, out of memory
        if err is not None:
            if _state["debug"]:
                import traceback

                traceback.print_exc()
            print(f"rts: error: {err}", file=sys.stderr)
            return err.exit_code
        if _state["debug"]:
            raise
        from rtscli.logs import one_line

        print(f"rts: internal error: {type(exc).__name__}: {one_line(str(exc))} (run with --debug for the traceback"
              " and please report it)", file=sys.stderr)
        return 1
    code = result if isinstance(result, int) else 0
    if code == 130:  # typer turns Ctrl-C into Exit(130) silently
        print("rts: interrupted; no partial output was kept", file=sys.stderr)
    return code


def _continue_with(args: list[str]) -> str:
    """The command line that continues a stopped training run: the same one with ``--resume`` (and without
    ``--overwrite``, which would start it again); ``rts ablate`` continues by itself, so the same one."""
    import shlex

    words = [a for a in args if a != "--overwrite"]
    command = next((a for a in words if not a.startswith("-")), "")
    if command in ("pretrain", "finetune", "ssl") and "--resume" not in words:
        words.append("--resume")
    return shlex.join(["rts", *words])


_demo.use_runner(main)


def _command() -> Any:
    """The click command of the app, with tidy help (built once per process)."""
    global _COMMAND
    if _COMMAND is None:
        from rtscli.cli.commandline import tidy_help

        _COMMAND = tidy_help(typer.main.get_command(app))
    return _COMMAND


_COMMAND: Any = None


def _worker_message(text: str) -> str:
    """An error raised in a DataLoader worker comes back with the worker's traceback folded into its message
    ("Caught RtsError in DataLoader worker process 0. Original Traceback ..."): keep the user's message."""
    import re

    if "in DataLoader worker process" in text:
        found = re.findall(r"rtscli\.[\w.]+: (.*?)$", text)  # the traceback's last line: rtscli.errors.RtsError: ...
        if found:
            return found[-1].strip()
    return text


def entry() -> None:
    import signal

    # a program started in the background of a shell without job control inherits SIGINT ignored, and Python then
    # never raises KeyboardInterrupt: Cancel in QGIS (which sends SIGINT) and `kill -INT` would not stop rts cleanly
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
