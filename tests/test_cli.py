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


def _value_options():
    """(command path, option) for every option of every command that takes one value."""
    import typer.main
    from typer.core import TyperOption

    out = []

    def walk(cmd, path):
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, path + [name])
        for p in getattr(cmd, "params", []):
            if isinstance(p, TyperOption) and not p.is_flag and not p.multiple and not p.count:
                out.append((tuple(path), max(p.opts, key=len)))

    walk(typer.main.get_command(app), [])
    return out


def test_no_option_given_twice_silently_drops_a_value(rts):
    """Every option of every command that takes one value refuses to be given twice (click would keep the last)."""
    options = _value_options()
    assert len(options) > 60 and any(opt == "--bands" for _, opt in options)
    for path, opt in options:
        r = rts(*path, opt, "1", opt, "2")
        assert r.code == 2 and f"{opt} is given 2 times" in r.err, (path, opt, r.err)
    r = rts("prepare", "a.tif", "--bands=paper", "--bands", "paper", "-o", "x")
    assert r.code == 2 and "--bands is given 2 times" in r.err
    r = rts("prepare", "a.tif", "-oa", "-o", "b", "--bands", "paper")  # a short option with its value attached
    assert r.code == 2 and "--out is given 2 times" in r.err
    r = rts("prepare", "a.tif", "-o", "x", "--min-pixels", 10, "--min-area", 5)  # an old name and its new one
    assert r.code == 2 and "--min-pixels" in r.err
    r = rts("-q", "prepare", "missing.tif", "-o", "x", "--bands", "paper", "--labels", "a.gpkg", "--labels", "b.gpkg")
    assert r.code == 2 and "given" not in r.err and "missing.tif" in r.err  # several --labels are welcome


def test_help_reads_like_a_command_line(rts):
    """No Python types in help: flags are flags, values have metavars, --max-steps has no -1."""
    for command in [[c] for c in _commands()] + [["models", "list"], ["models", "use"]]:
        r = rts(*command, "--help")
        assert r.code == 0
        for raw in ("<bool>", "<list[", "<str>", "<Path>", "<int>", "<float>", "[default: -1]"):
            assert raw not in r.out, (command, raw)
    r = rts("pretrain", "--help")
    assert "INTEGER" in r.out and "--max-steps" in r.out


def test_old_min_area_of_prepare_still_works_with_a_note(tmp_path, rts):
    from conftest import paper_sample, write_tif

    write_tif(tmp_path / "in" / "x.tif", paper_sample(rects=[(5, 20, 5, 20), (40, 42, 40, 42)]))
    r = rts("prepare", tmp_path / "in", "-o", tmp_path / "ds", "--bands", "paper", "--min-area", 5, "--split", "1,0,0")
    assert r.code == 0, r.err
    assert "--min-pixels" in r.err and "1 mask specks < 5 px dropped" in r.out


def test_devices_this_machine_lacks_are_one_line_errors(rts, monkeypatch):
    from rtscli.engine import devices

    monkeypatch.setattr(devices, "has_cuda", lambda: False)
    monkeypatch.setattr(devices, "has_mps", lambda: False)
    for accel in ("mps", "gpu"):
        r = rts("pretrain", "--modality", "rgb", "--data", "nowhere", "-o", "x", "--accelerator", accel)
        assert r.code == 2 and f"--accelerator {accel}" in r.err and "--accelerator cpu" in r.err, r.err
    assert devices.default_device() == "cpu"
    monkeypatch.setattr(devices, "has_mps", lambda: True)
    assert devices.default_device() == "mps" and devices.resolve_accelerator("mps") == "mps"
    assert devices.training_device("auto") == "mps"
