"""What the QGIS wrapper costs: ``rts:predict`` through Processing vs the same ``rts predict`` in a terminal.

    QT_QPA_PLATFORM=offscreen RTS_EXECUTABLE=.venv/bin/rts \\
    PYTHONPATH=qgis_plugin:/usr/share/qgis/python/plugins \\
    /usr/bin/python3 tests/qgis/measure_overhead.py SCENE.tif BUNDLE [--bands planetscope4] [--repeats 3]

Runs alternate (terminal, QGIS, terminal, QGIS...) so that a machine whose load drifts weighs on both alike. The
terminal run is rts on a pseudo-terminal (its progress bar drawn, as at a prompt); the QGIS run is
``processing.run("rts:predict", ...)`` in this QGIS process (the provider's checks, the subprocess, the reading of
rts's lines, the progress). Both write a new GeoPackage each time. Prints the wall times, their medians and the
difference, and the wrapper's own time (a QGIS run's wall time less that of its rts process: the parameters,
the provider's checks, starting rts, reading its lines), as JSON. The wrapper's own time is the overhead that
does not drown in the run-to-run spread of rts itself on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from qgis.core import Qgis, QgsApplication, QgsProcessingFeedback


def terminal_run(argv: list[str], env: dict) -> float:
    """Wall time of ``argv`` with its output on a pseudo-terminal (drained, not shown)."""
    master, slave = pty.openpty()
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)

    def drain() -> None:
        try:
            while os.read(master, 65536):
                pass
        except OSError:
            pass

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    code = proc.wait()
    seconds = time.perf_counter() - t0
    reader.join(timeout=5)
    os.close(master)
    if code != 0:
        raise SystemExit(f"rts predict failed in the terminal run (exit {code}): {' '.join(argv)}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scene")
    parser.add_argument("bundle")
    parser.add_argument("--bands", default="planetscope4")
    parser.add_argument("--min-score", type=float, default=0.3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    app = QgsApplication([], False)
    app.initQgis()
    try:
        from processing.core.Processing import Processing

        Processing.initialize()
        import processing
        from rts_qgis import classFactory, runner
        from rts_qgis.spec import BAND_PRESETS

        plugin = classFactory(None)
        plugin.initProcessing()
        exe = runner.find_rts(None)
        rts_seconds: list[float] = []  # wall time of the rts process of each QGIS run (its start to its end)
        run_rts = runner.run

        def timed_run(*a, **kw):
            t0 = time.perf_counter()
            try:
                return run_rts(*a, **kw)
            finally:
                rts_seconds.append(time.perf_counter() - t0)

        runner.run = timed_run
        work = Path(tempfile.mkdtemp(prefix="rts_overhead_"))
        env = runner.child_environment()
        env.pop("RTS_PROGRESS_SECONDS")  # a terminal's rts draws its bar
        terminal, qgis = [], []
        for k in range(args.repeats):
            out = work / f"terminal_{k}.gpkg"
            terminal.append(terminal_run([exe, "predict", args.scene, "--model", args.bundle, "--bands", args.bands,
                                          "--min-score", str(args.min_score), "-o", str(out)], env))
            params = {"INPUT": args.scene, "MODEL": args.bundle, "BANDS": 1 + BAND_PRESETS.index(args.bands),
                      "MIN_SCORE": args.min_score, "OUTPUT": str(work / f"qgis_{k}.gpkg")}
            t0 = time.perf_counter()
            processing.run("rts:predict", params, feedback=QgsProcessingFeedback())
            qgis.append(time.perf_counter() - t0)
        t, q = statistics.median(terminal), statistics.median(qgis)
        wrapper = [a - b for a, b in zip(qgis, rts_seconds, strict=True)]  # Processing + plugin, rts excluded
        w = statistics.median(wrapper)
        print(json.dumps({"qgis_version": Qgis.QGIS_VERSION, "python": sys.version.split()[0], "scene": args.scene,
                          "terminal_s": [round(x, 2) for x in terminal], "qgis_s": [round(x, 2) for x in qgis],
                          "qgis_rts_process_s": [round(x, 2) for x in rts_seconds],
                          "terminal_median_s": round(t, 2), "qgis_median_s": round(q, 2),
                          "difference_s": round(q - t, 2), "difference_pct": round(100 * (q - t) / t, 1),
                          "wrapper_median_s": round(w, 3), "wrapper_pct_of_terminal": round(100 * w / t, 2)},
                         indent=1))
        plugin.unload()
    finally:
        app.exitQgis()
    return 0


if __name__ == "__main__":
    sys.exit(main())
