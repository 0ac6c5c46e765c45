"""The user's settings: the default model bundle (``rts models use``), kept in a YAML file.

Location: ``$RTS_CONFIG_DIR/config.yaml``, else ``$XDG_CONFIG_HOME/rts/config.yaml``, else
``~/.config/rts/config.yaml``. ``RTS_MODEL`` overrides the default bundle for one shell.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from rtscli.errors import RtsError


def config_path() -> Path:
    if os.environ.get("RTS_CONFIG_DIR"):
        return Path(os.environ["RTS_CONFIG_DIR"]) / "config.yaml"
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "rts" / "config.yaml"


def load() -> dict:
    p = config_path()
    if not p.exists():
        return {}
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise RtsError(f"cannot read the settings ({exc.__class__.__name__})", path=p,
                       fix="fix or delete the file, then run `rts models use BUNDLE`") from None
    return data if isinstance(data, dict) else {}


def save(data: dict) -> Path:
    """Write the settings whole (a temporary file renamed; an unwritable or full folder is told first)."""
    from rtscli.io.atomic import write_text_atomic

    return write_text_atomic(config_path(), yaml.safe_dump(data, sort_keys=False))


def set_default_model(bundle: Path) -> Path:
    from rtscli.modeling.bundle import read_bundle

    b = read_bundle(bundle)  # must be a valid bundle
    data = load()
    path = str(b.path.resolve())
    data["default_model"] = path
    known = [k for k in data.get("models", []) if k != path]
    data["models"] = [path, *known][:50]
    return save(data)


def default_model() -> tuple[Path, str]:
    """(bundle path, where it came from). A clear error when none is set."""
    env = os.environ.get("RTS_MODEL")
    if env:
        return Path(env), "RTS_MODEL"
    d = load().get("default_model")
    if d:
        return Path(d), f"the default model ({config_path()})"
    raise RtsError("no model given and no default model set",
                   fix="pass --model BUNDLE, run `rts models use BUNDLE`, or run `rts demo` (it sets its demo model)")
