"""The command line: help for every command, version, fast imports, one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rtscli.cli import app


def _commands():
    return sorted(c.name for c in app.registered_commands)


def test_commands_registered():
    assert {"synth", "prepare", "bands"} <= set(_commands())


@pytest.mark.parametrize("command", _commands())
def test_help_for_every_command(rts, command):
    r = rts(command, "--help")
    assert r.code == 0, r.err
    assert "Usage" in r.out and command in r.out


def test_root_help_and_version(rts):
    r = rts("--help")
    assert r.code == 0 and "prepare" in r.out and "synth" in r.out
    r = rts("--version")
    assert r.code == 0 and r.out.strip().startswith("rts ")


def test_cli_import_is_light():
    """`rts --help` must not pay for torch, rasterio or geopandas."""
    code = (
        "import sys, rtscli.cli\n"
        "mods = ('torch', 'rasterio', 'geopandas', 'cv2', 'timm', 'lightning', 'numpy')\n"
        "heavy = [m for m in mods if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


def test_console_script_exit_code_and_one_line_error(tmp_path):
    """The installed `rts` entry point: a user error is one line on stderr, exit 2, no traceback."""
    r = subprocess.run([sys.executable, "-m", "rtscli", "prepare", str(tmp_path / "missing.tif"), "-o",
                        str(tmp_path / "ds"), "--bands", "paper"], capture_output=True, text=True)
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert "missing.tif" in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "ds").exists()


def test_debug_shows_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "rtscli", "--debug", "prepare", str(tmp_path / "missing.tif"), "-o",
                        str(tmp_path / "ds"), "--bands", "paper"], capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" in r.stderr


def test_usage_error_exit_code(rts):
    r = rts("prepare")  # missing arguments
    assert r.code == 2


def test_bands_command(rts):
    r = rts("bands")
    assert r.code == 0 and "planetscope4" in r.out and "sentinel2-10" in r.out
    r = rts("bands", "sentinel2-7")
    assert r.code == 0 and "nir=7" in r.out and "ndvi" in r.out
    r = rts("bands", "nonsense")
    assert r.code == 2 and "unknown band preset" in r.err


def test_progress_lines_when_nobody_watches_a_terminal(tmp_path, rts, monkeypatch):
    """`rts synth` and `rts prepare` in a batch job: progress lines in the log, not an invisible bar."""
    monkeypatch.setenv("RTS_PROGRESS_SECONDS", "0")
    r = rts("synth", tmp_path / "s", "--chips", 6, "--chip-size", 64, "--scenes", 0)
    assert r.code == 0, r.err
    assert "rts: chips: 6/6 chips (100%)" in r.err and "done in" in r.err
    r = rts("prepare", tmp_path / "s" / "chips", "-o", tmp_path / "ds", "--bands", "paper")
    assert r.code == 0, r.err
    lines = [line for line in r.err.splitlines() if line.startswith("rts: preparing:")]
    assert len(lines) == 6 and "ETA" in lines[0] and "(100%)" in lines[-1]
