"""The presets in models/ are reachable from an installed wheel (package data rtscli/presets)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_the_presets(tmp_path):
    pytest.importorskip("setuptools")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path / "dist"), str(ROOT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("rtscli-*.whl")
    with zipfile.ZipFile(wheel) as z:
        shipped = {Path(n).name: z.read(n) for n in z.namelist() if n.startswith("rtscli/presets/")}
        z.extractall(tmp_path / "site")
    expected = {p.name: p.read_bytes() for p in (ROOT / "models").glob("*.yaml")}
    assert expected and all(shipped.get(k) == v for k, v in expected.items())
    # import the installed copy (not this checkout) and load a preset from inside the package
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import rtscli.modeling.config as c; "
            "assert c.__file__.startswith(sys.argv[1]), c.__file__; "
            "p = c.list_presets(); assert str(p['cascade-mvitv2-b']).startswith(sys.argv[1]), p; "
            "print(c.load_preset('cascade-mvitv2-b').name)")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "site")], capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "cascade-mvitv2-b"
