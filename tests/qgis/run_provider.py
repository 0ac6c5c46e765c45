"""The rts Processing provider in a real QGIS, headless: run by ``tests/test_qgis_plugin.py`` with QGIS's Python.

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 tests/qgis/run_provider.py config.json report.json

``config.json`` names the rts executable (it reaches the plugin as ``RTS_EXECUTABLE``), a model bundle, two small
scenes of one place at two dates, a larger scene, a work folder and the checks to run; the script runs them and
writes what it saw to ``report.json`` (the test asserts on it). The plugin comes from ``PYTHONPATH``
(``qgis_plugin/``), Processing from QGIS's plugins folder. This script imports QGIS, never rts.

Checks:
  provider  the algorithms, their parameter types and defaults, the setting for the rts executable
  predict   rts:predict run and loaded (``processing.runAndLoadResults``): features, CRS, style, progress, log
  error     a failing run: the exception is rts's one-line error
  cancel    a run on the larger scene cancelled through its feedback: rts's processes gone, no file left
  batch     Processing's batch dialog, two rows (the two scenes), run as a user runs it
  model     a Graphical Modeler model: rts:predict -> rts:exportarts, run as one algorithm
  track     rts:track of the two batch outputs, loaded styled; rts:exportarts of its tracks layer
  merge     rts:merge of the two batch outputs, loaded styled
  prepare   rts:prepare of a scene with vector labels (the batch's polygons)
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingModelAlgorithm,
    QgsProcessingModelChildAlgorithm,
    QgsProcessingModelChildParameterSource,
    QgsProcessingModelOutput,
    QgsProcessingModelParameter,
    QgsProcessingParameterRasterLayer,
    QgsProject,
    QgsVectorLayer,
)


class Recorder(QgsProcessingFeedback):
    """Feedback that keeps what rts's run showed: progress values and log lines; it can cancel on the first
    progress line (``cancel_on_progress``)."""

    def __init__(self, cancel_on_progress: bool = False) -> None:
        super().__init__()
        self.progress: list[float] = []
        self.lines: list[str] = []
        self.commands: list[str] = []
        self.warnings: list[str] = []
        self.cancel_on_progress = cancel_on_progress
        self.canceled_at: float | None = None
        self.children: list[int] = []

    def setProgress(self, progress: float) -> None:  # noqa: N802 (QGIS's name)
        self.progress.append(float(progress))
        super().setProgress(progress)
        if self.cancel_on_progress and self.canceled_at is None and 0 < progress < 100:
            self.children = rts_children()  # rts and its tile-reading workers, before they are told to stop
            self.canceled_at = time.monotonic()
            self.cancel()

    def pushConsoleInfo(self, info: str) -> None:  # noqa: N802
        self.lines.append(info)
        super().pushConsoleInfo(info)

    def pushCommandInfo(self, info: str) -> None:  # noqa: N802
        self.commands.append(info)
        super().pushCommandInfo(info)

    def pushWarning(self, warning: str) -> None:  # noqa: N802
        self.warnings.append(warning)
        super().pushWarning(warning)


def rts_children() -> list[int]:
    """Process ids of the processes this one started (rts) and of the processes in their groups (its workers)."""
    me = os.getpid()
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry)] = (int(fields[1]), int(fields[2]))  # parent, process group
    kids = [pid for pid, (ppid, _) in stats.items() if ppid == me]
    return sorted({pid for pid, (_, pgid) in stats.items() if pgid in kids} | set(kids))


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def describe_layer(layer) -> dict:
    """What a test asserts about a loaded layer."""
    renderer = layer.renderer()
    labeling = layer.labeling() if layer.labelsEnabled() else None
    return {
        "name": layer.name(), "source": layer.source(), "valid": layer.isValid(), "features": layer.featureCount(),
        "crs": layer.crs().authid(), "renderer": renderer.type() if renderer else None,
        "attribute": renderer.classAttribute() if hasattr(renderer, "classAttribute") else None,
        "rules": [r.filterExpression() for r in renderer.rootRule().children()] if hasattr(renderer, "rootRule")
        else None,
        "labels": layer.labelsEnabled(),
        "label_field": labeling.settings().fieldName if labeling is not None and hasattr(labeling, "settings")
        else None,
        "fields": layer.fields().names(),
    }


def check_provider(cfg: dict) -> dict:
    reg = QgsApplication.processingRegistry()
    provider = reg.providerById("rts")
    params = {}
    for alg in provider.algorithms():
        params[alg.name()] = {p.name(): {"type": p.type(), "default": p.defaultValue(),
                                         "optional": bool(p.flags() & p.FlagOptional)}
                              for p in alg.parameterDefinitions()}
    from processing.core.ProcessingConfig import ProcessingConfig

    predict = reg.algorithmById("rts:predict")
    return {"algorithms": sorted(a.id() for a in provider.algorithms()), "params": params,
            "long_name": provider.longName(), "icon": not provider.icon().isNull(),
            "help": predict.shortHelpString(), "outputs": {a.name(): [o.name() for o in a.outputDefinitions()]
                                                          for a in provider.algorithms()},
            "setting": ProcessingConfig.getSetting("RTS_EXECUTABLE") is not None
            and "RTS_EXECUTABLE" in ProcessingConfig.settings}


def predict_params(cfg: dict, scene: str, out: str) -> dict:
    return {"INPUT": scene, "MODEL": cfg["bundle"], "BANDS": cfg["bands_index"], "MIN_SCORE": 0.0, "OVERLAP": 0.0,
            "WORKERS": 1, "OUTPUT": out}


def check_predict(cfg: dict) -> dict:
    import processing

    out = str(Path(cfg["work"]) / "predict" / "slumps.gpkg")
    quicklook = str(Path(cfg["work"]) / "predict" / "slumps.png")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    fb = Recorder()
    t0 = time.perf_counter()
    params = predict_params(cfg, cfg["scenes"][0], out)
    params.update(QUICKLOOK=quicklook, BATCH_SIZE=1)  # a progress line per tile (RTS_PROGRESS_SECONDS=0)
    results = processing.runAndLoadResults("rts:predict", params, feedback=fb)
    seconds = time.perf_counter() - t0
    loaded = [describe_layer(lyr) for lyr in QgsProject.instance().mapLayers().values()]
    alone = QgsVectorLayer(f"{out}|layername=rts", "alone", "ogr")  # as QGIS opens the file, without the plugin
    return {"results": results, "seconds": seconds, "progress": fb.progress, "lines": fb.lines,
            "commands": fb.commands, "warnings": fb.warnings, "loaded": loaded, "file": describe_layer(alone),
            "quicklook": os.path.isfile(quicklook)}


def check_error(cfg: dict) -> dict:
    import processing

    missing = str(Path(cfg["work"]) / "no_such_bundle")
    params = predict_params(cfg, cfg["scenes"][0], str(Path(cfg["work"]) / "error" / "x.gpkg"))
    params["MODEL"] = missing
    t0 = time.perf_counter()
    try:
        processing.run("rts:predict", params, feedback=Recorder())
    except QgsProcessingException as exc:
        return {"message": str(exc), "seconds": time.perf_counter() - t0, "missing": missing,
                "written": os.path.exists(Path(cfg["work"]) / "error")}
    return {"message": None}


def check_cancel(cfg: dict) -> dict:
    import processing

    folder = Path(cfg["work"]) / "cancel"
    folder.mkdir(parents=True, exist_ok=True)
    fb = Recorder(cancel_on_progress=True)
    params = {"INPUT": cfg["big"], "MODEL": cfg["bundle"], "BAND_MAP": "red=1,green=2,blue=3", "MIN_SCORE": 0.0,
              "WORKERS": 2, "OUTPUT": str(folder / "big.gpkg")}
    t0 = time.perf_counter()
    results = processing.run("rts:predict", params, feedback=fb)
    ended = time.monotonic()
    return {"results": results, "seconds": time.perf_counter() - t0, "canceled": fb.isCanceled(),
            "stop_seconds": None if fb.canceled_at is None else ended - fb.canceled_at,
            "processes": fb.children, "alive": [p for p in fb.children if alive(p)], "left": rts_children(),
            "files": sorted(p.name for p in folder.iterdir()), "lines": fb.lines}


def check_batch(cfg: dict) -> dict:
    """Processing's own batch dialog with two rows, run as the Run button runs it."""
    from processing.gui.BatchAlgorithmDialog import BatchAlgorithmDialog
    from processing.tools import dataobjects

    alg = QgsApplication.processingRegistry().createAlgorithmById("rts:predict")
    dialog = BatchAlgorithmDialog(alg)
    panel = dialog.mainWidget()
    outs = [str(Path(cfg["work"]) / "batch" / f"{Path(s).stem}.gpkg") for s in cfg["scenes"]]
    os.makedirs(Path(cfg["work"]) / "batch", exist_ok=True)
    context = dataobjects.createContext()
    for row, (scene, out) in enumerate(zip(cfg["scenes"], outs, strict=True)):
        if row >= panel.batchRowCount():
            panel.addRow()
        for name, value in predict_params(cfg, scene, out).items():
            column = panel.parameter_to_column[name]
            if name == "OUTPUT":
                panel.tblParameters.cellWidget(row + 1, column).setValue(value)
            else:
                panel.wrappers[row][column].setParameterValue(value, context)
    rows = [panel.parametersForRow(r, warnOnInvalid=False)[0] for r in range(panel.batchRowCount())]
    panel.checkLoadLayersOnCompletion.setChecked(True)
    QgsProject.instance().removeAllMapLayers()
    t0 = time.perf_counter()
    dialog.runAlgorithm()
    seconds = time.perf_counter() - t0
    # QGIS 3.22's batch dialog leaves its progress task running (its feedback's signal still holds the
    # QgsScopedProxyProgressTask), and QGIS would wait for that task on exit: end it as the dialog should have
    import gc

    import sip
    from qgis.core import QgsScopedProxyProgressTask

    left = [o for o in gc.get_objects() if isinstance(o, QgsScopedProxyProgressTask)]
    for task in left:
        sip.delete(task)  # its destructor finishes the task
    layers = [describe_layer(lyr) for lyr in QgsProject.instance().mapLayers().values()]
    outputs = [{"path": o, "features": QgsVectorLayer(f"{o}|layername=rts", "o", "ogr").featureCount()
                if os.path.isfile(o) else None} for o in outs]
    return {"rows": len(rows), "tasks_left_by_dialog": len(left),
            "row_params": [{k: str(v) for k, v in r.items()} for r in rows], "seconds": seconds,
            "outputs": outputs, "loaded": layers}


def check_model(cfg: dict) -> dict:
    """A Graphical Modeler model: map a scene with rts:predict, then export it with rts:exportarts."""
    import processing

    model = QgsProcessingModelAlgorithm("map and export", "rts tests")
    model.addModelParameter(QgsProcessingParameterRasterLayer("scene", "Scene"), QgsProcessingModelParameter("scene"))
    static = QgsProcessingModelChildParameterSource.fromStaticValue
    predict = QgsProcessingModelChildAlgorithm("rts:predict")
    predict.setChildId("predict")
    predict.addParameterSources("INPUT", [QgsProcessingModelChildParameterSource.fromModelParameter("scene")])
    for name, value in predict_params(cfg, "", "").items():
        if name not in ("INPUT", "OUTPUT"):
            predict.addParameterSources(name, [static(value)])
    export = QgsProcessingModelChildAlgorithm("rts:exportarts")
    export.setChildId("export")
    export.addParameterSources("INPUT", [QgsProcessingModelChildParameterSource.fromChildOutput("predict",
                                                                                                "OUTPUT")])
    for name, value in (("REGION", "Test region"), ("CREATOR", "rts tests"), ("BASEMAP_SOURCE", "synthetic"),
                        ("BASEMAP_RESOLUTION", 10.0), ("ALL", True)):
        export.addParameterSources(name, [static(value)])
    arts = QgsProcessingModelOutput("arts")
    arts.setChildOutputName("OUTPUT")
    arts.setChildId("export")
    export.setModelOutputs({"arts": arts})
    model.addChildAlgorithm(predict)
    model.addChildAlgorithm(export)
    out = str(Path(cfg["work"]) / "model" / "arts.geojson")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    model_file = str(Path(cfg["work"]) / "model" / "map_and_export.model3")
    saved = model.toFile(model_file)
    fb = Recorder()
    t0 = time.perf_counter()
    results = processing.run(model, {"scene": cfg["scenes"][0], "export:arts": out}, feedback=fb)
    seconds = time.perf_counter() - t0
    arts_layer = QgsVectorLayer(out, "arts", "ogr")
    return {"results": {k: str(v) for k, v in results.items()}, "seconds": seconds, "saved": saved,
            "features": arts_layer.featureCount(), "crs": arts_layer.crs().authid(),
            "fields": arts_layer.fields().names(), "commands": fb.commands}


def check_track(cfg: dict, maps: list[str]) -> dict:
    """rts:track of the batch's two maps, loaded; then rts:exportarts of its tracks layer (with relations)."""
    import processing

    QgsProject.instance().removeAllMapLayers()
    out = str(Path(cfg["work"]) / "track" / "changes.gpkg")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    fb = Recorder()
    results = processing.runAndLoadResults("rts:track", {"MAPS": [f"{m}|layername=rts" for m in maps],
                                                         "OUTPUT": out}, feedback=fb)
    loaded = [describe_layer(lyr) for lyr in QgsProject.instance().mapLayers().values()]
    arts = str(Path(cfg["work"]) / "track" / "arts.gpkg")
    exported = processing.run("rts:exportarts", {
        "INPUT": results["TRACKS"], "REGION": "Test region", "CREATOR": "rts tests", "BASEMAP_SOURCE": "synthetic",
        "BASEMAP_RESOLUTION": 10.0, "ALL": True, "OUTPUT": arts}, feedback=fb)
    layer = QgsVectorLayer(exported["OUTPUT"], "arts", "ogr")
    return {"results": results, "loaded": loaded, "lines": fb.lines, "commands": fb.commands,
            "arts": {"uri": exported["OUTPUT"], "features": layer.featureCount(), "fields": layer.fields().names()}}


def check_merge(cfg: dict, maps: list[str]) -> dict:
    """rts:merge of the batch's two maps (one place, two dates: here, one period), loaded styled."""
    import processing

    QgsProject.instance().removeAllMapLayers()
    out = str(Path(cfg["work"]) / "merge" / "region.gpkg")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    fb = Recorder()
    results = processing.runAndLoadResults("rts:merge", {"MAPS": [f"{m}|layername=rts" for m in maps],
                                                         "OUTPUT": out}, feedback=fb)
    return {"results": results, "loaded": [describe_layer(lyr) for lyr in QgsProject.instance().mapLayers().values()],
            "commands": fb.commands}


def check_prepare(cfg: dict, maps: list[str]) -> dict:
    """rts:prepare of the first scene with the batch's polygons of it as labels: a dataset folder."""
    import processing

    out = Path(cfg["work"]) / "prepare" / "ds"
    fb = Recorder()
    results = processing.run("rts:prepare", {
        "INPUTS": [cfg["scenes"][0]], "LABELS": [f"{maps[0]}|layername=rts"], "BANDS": "paper", "CHIP_SIZE": 64,
        "SPLIT": "0.5,0.25,0.25", "OUTPUT": str(out)}, feedback=fb)
    return {"results": results, "files": sorted(p.name for p in out.iterdir()) if out.is_dir() else [],
            "commands": fb.commands}


def main() -> int:
    cfg = json.loads(Path(sys.argv[1]).read_text())
    report: dict = {"qgis": Qgis.QGIS_VERSION, "errors": {}}
    os.environ["RTS_EXECUTABLE"] = cfg["rts"]
    app = QgsApplication([], True)  # with a GUI (offscreen): the batch dialog is a widget
    app.initQgis()
    try:
        from processing.core.Processing import Processing

        Processing.initialize()
        from rts_qgis import classFactory

        plugin = classFactory(None)
        plugin.initProcessing()
        done: dict = {}
        for check in cfg["checks"]:
            t0 = time.perf_counter()
            try:
                if check in ("track", "merge", "prepare"):  # on the batch's outputs
                    maps = [o["path"] for o in done.get("batch", {}).get("outputs", [])]
                    report[check] = globals()[f"check_{check}"](cfg, maps)
                else:
                    report[check] = globals()[f"check_{check}"](cfg)
                done[check] = report[check]
            except Exception:  # one check's failure is reported; the others still run
                report["errors"][check] = traceback.format_exc()
            report.setdefault("seconds", {})[check] = round(time.perf_counter() - t0, 2)
        plugin.unload()
        report["unloaded"] = QgsApplication.processingRegistry().providerById("rts") is None
    finally:
        Path(sys.argv[2]).write_text(json.dumps(report, indent=1, default=str))
        QgsProject.instance().removeAllMapLayers()
        app.exitQgis()
    return 0


if __name__ == "__main__":
    sys.exit(main())
