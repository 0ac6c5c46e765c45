"""Files rts reads its records and weights from, refused in one line when they are not what they should be.

YAML is read with ``yaml.safe_load`` only: a file with a ``!!python/object`` tag (or any other that is not plain
YAML) is refused, never run, and the refusal names the file and the line (:func:`read_yaml`). Weights are
safetensors files: their header is checked before any tensor is read, so a damaged or foreign file (a corrupt or
huge header length, a truncated file) is refused naming the file (:func:`check_safetensors`,
:func:`load_safetensors`), and nothing sized by the header is allocated before safetensors checks it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rtscli.errors import RtsError

if TYPE_CHECKING:
    import torch

#: the fix of a YAML file that is not plain YAML
YAML_FIX = ("rts writes and reads plain YAML only (no !!python tags): restore the file rts wrote, or copy the folder "
            "again")
#: the fix of a damaged safetensors file
WEIGHTS_FIX = "the file is damaged or not safetensors: copy it again (or convert it with safetensors.torch.save_file)"


def read_yaml(path: str | Path, *, what: str = "config", fix: str | None = None) -> Any:
    """The content of a YAML file, read with ``yaml.safe_load`` (no tag constructs anything).

    Args:
        path: the file.
        what: what the file is, for the message (``not a plain YAML {what}``).
        fix: the fix (default :data:`YAML_FIX`).

    Returns:
        What the file holds (None for an empty file).

    Raises:
        RtsError: the file is not plain YAML (a ``!!python/object`` tag, a syntax error) or not UTF-8 text; the
            message names the file and the line.
        OSError: the file cannot be read (the CLI names it: :func:`rtscli.errors.user_error`).
    """
    import yaml

    path = Path(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise RtsError(f"not a plain YAML {what} ({where}{' '.join(str(problem).split())[:160]})", path=path,
                       fix=fix or YAML_FIX) from None
    except UnicodeDecodeError:
        raise RtsError(f"not a plain YAML {what} (not UTF-8 text)", path=path, fix=fix or YAML_FIX) from None


def _damaged(path: Path, exc: BaseException, what: str, fix: str | None) -> RtsError:
    reason = " ".join(str(exc).split()).removeprefix("Error while deserializing header: ")[:160]
    return RtsError(f"cannot read the {what}: not a readable safetensors file ({reason or type(exc).__name__})",
                    path=path, fix=fix or WEIGHTS_FIX)


def check_safetensors(path: str | Path, *, what: str = "weights", fix: str | None = None) -> list[str]:
    """The tensor names of a safetensors file, once its header is checked (no tensor is read).

    Args:
        path: the file.
        what: what the file is, for the message.
        fix: the fix (default :data:`WEIGHTS_FIX`).

    Returns:
        The names of its tensors.

    Raises:
        RtsError: the header is damaged (a corrupt or huge length, invalid JSON, a file shorter than the header
            says): one line naming the file.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            f.metadata()
            return list(f.keys())
    except (SafetensorError, MemoryError) as exc:
        raise _damaged(path, exc, what, fix) from None


def load_safetensors(path: str | Path, *, device: str = "cpu", what: str = "weights",
                     fix: str | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file (``safetensors.torch.load_file``; nothing is unpickled).

    Args:
        path: the file.
        device: where the tensors go.
        what: what the file is, for the message.
        fix: the fix (default :data:`WEIGHTS_FIX`).

    Returns:
        ``{name: tensor}``.

    Raises:
        RtsError: the file is damaged (:func:`check_safetensors`), or its tensors do not fit in memory.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    try:
        return load_file(str(path), device=device)
    except SafetensorError as exc:
        raise _damaged(path, exc, what, fix) from None
    except MemoryError:
        raise RtsError(f"the {what} do not fit in this machine's memory", path=path,
                       fix="use a machine with more memory, or a smaller model") from None
