"""The parsed command line: no value silently dropped, and help that reads like a command line.

* :func:`refuse_repeated_options`: click keeps the last value of an option given twice
  (``--labels a.gpkg --labels b.gpkg`` would read only ``b.gpkg``). Every option that takes one
  value is refused when it appears more than once; options that take several values say so
  (``multiple``) and keep them all.
* :func:`tidy_help`: Typer shows Python types in help (``<list[Path]>``, ``<bool>`` beside on/off
  flags). Flags show as flags, values by a metavar (``PATH``, ``TEXT``, ``INTEGER``, ``FLOAT``), and
  arguments by their name in capitals, as usage lines write them (``rts ssl [OPTIONS] SCENES...``, not
  Typer's ``{scenes}...``). Help is laid out by click's plain formatter, which fits the terminal: a
  paragraph of a docstring is one paragraph, rewrapped to the width (80 columns and less too), options
  and their help in two columns, and each command's first sentence whole in the list of commands (Rich's
  option tables squeeze the help into a narrow column and keep the docstrings' line breaks).
"""

from __future__ import annotations

from typing import Any

from rtscli.errors import RtsError

_METAVARS = {"Path": "PATH", "str": "TEXT", "int": "INTEGER", "float": "FLOAT", "bool": "BOOLEAN"}


def _metavar(annotation) -> str:
    """``PATH``, ``TEXT``, ``INTEGER`` or ``FLOAT`` for an option's annotation (``Optional[...]``, ``list[...]`` too)."""
    import typing

    while typing.get_origin(annotation) is not None:  # Optional[X], list[X], Union[X, None]
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if not args:
            break
        annotation = args[0]
    return _METAVARS.get(getattr(annotation, "__name__", ""), "VALUE")


def _option_class():
    """The option class of the commands: Typer's own (Typer vendors click, so ``click.Option`` is not its base)."""
    from typer.core import TyperOption

    return TyperOption


def _subcommand(group, argv: list[str]) -> tuple[Any, list[str]]:
    """The command ``argv`` runs (descending into groups such as ``rts models``) and the arguments after it."""
    cmd, rest = group, list(argv)
    while hasattr(cmd, "commands"):
        i = next((k for k, tok in enumerate(rest) if not tok.startswith("-")), None)
        if i is None or rest[i] not in cmd.commands:
            return None, []
        cmd, rest = cmd.commands[rest[i]], rest[i + 1:]
    return cmd, rest


def refuse_repeated_options(group: Any, argv: list[str]) -> None:
    """Raise :class:`RtsError` when an option that takes one value is given more than once in ``argv``."""
    cmd, rest = _subcommand(group, argv)
    if cmd is None:
        return
    option = _option_class()
    single = {name: p for p in cmd.params if isinstance(p, option) and not p.is_flag and not p.multiple
              and not p.count for name in p.opts}
    seen: dict[str, list[str]] = {}
    for tok in rest:
        if tok == "--":
            break
        if tok.startswith("--"):
            name = tok.split("=", 1)[0]
        elif tok.startswith("-") and len(tok) > 2 and tok[:2] in single:  # a short option with its value: -oFILE
            name = tok[:2]
        else:
            name = tok
        if name in single:
            seen.setdefault(single[name].name, []).append(name)
    for pname, given in seen.items():
        if len(given) > 1:
            param = next(p for p in single.values() if p.name == pname)
            shown = max(param.opts, key=len)  # the long name, however it was written
            raise RtsError(f"{shown} is given {len(given)} times, but it takes one value (all but one would be "
                           "dropped)", fix=f"give {shown} once")


def tidy_help(command: Any) -> Any:
    """Plain, rewrapped help with metavars instead of Python types, for ``command`` and all its subcommands (in
    place; see the module docstring)."""
    option = _option_class()
    if hasattr(command, "rich_markup_mode"):
        command.rich_markup_mode = None  # click's formatter: wraps to the terminal, whatever its width
    for sub in getattr(command, "commands", {}).values():
        tidy_help(sub)
        if sub.help and not sub.short_help:  # the list of commands shows the first paragraph whole, wrapped
            sub.short_help = " ".join(sub.help.strip().split("\n\n")[0].split())
    for p in getattr(command, "params", []):
        if isinstance(p, option):
            if p.is_flag or p.count:
                p.metavar = ""
            elif p.metavar is None:
                p.metavar = _metavar(getattr(getattr(p, "type_descriptor", None), "annotation", None))
        elif hasattr(p, "display_type_rich"):  # an argument: its name says what it is
            p.display_type_rich = lambda ctx: None
            _name_argument(p)
    original = command.get_help_option

    def help_option(ctx):
        opt = original(ctx)
        if opt is not None:
            opt.metavar = ""
        return opt

    command.get_help_option = help_option
    return command


def _name_argument(arg: Any) -> None:
    """An argument by its name in capitals: ``SCENES...`` in the help's list, ``OUT``, ``SCENES...`` (required)
    or ``[INPUTS]...`` (optional) in the usage line."""
    name = (arg.name or "arg").upper()
    many = "..." if arg.nargs != 1 else ""
    if arg.metavar is None:
        arg.metavar = name + many
    usage = f"{name}{many}" if arg.required else f"[{name}]{many}"
    arg._usage_display_name = lambda: usage  # Typer's usage piece (``{name}`` / ``[name]``)
