"""The README's pictures of rts in QGIS, made headless with QGIS's Python (offscreen Qt: no display needed).

    QT_QPA_PLATFORM=offscreen RTS_EXECUTABLE=.venv/bin/rts \\
    PYTHONPATH=qgis_plugin:/usr/share/qgis/python/plugins \\
    /usr/bin/python3 tests/qgis/screenshots.py SCENE.tif BUNDLE docs/img [--bands planetscope4] [--min-score 0.3]

(``make demo`` gives a scene and a bundle: ``demo_out/synth/scenes/scene_00_*_2019-07-15.tif`` and
``demo_out/runs/fused``.) It writes into the folder:

* ``qgis_toolbox.png``: the Processing toolbox with the rts algorithms (the toolbox's own tree view);
* ``qgis_predict_dialog.png``: the rts:predict dialog, filled in, with its help (Processing's own dialog);
* ``qgis_predict_log.png``: the same dialog after the run: rts's progress and log lines in it;
* ``qgis_predict_map.png``: the styled slumps over the scene (``QgsMapRendererParallelJob``).

Widgets are drawn with ``QWidget.grab()``: the window frame and title bar of a desktop are not in the pictures.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from qgis.core import (
    QgsApplication,
    QgsContrastEnhancement,
    QgsMapRendererParallelJob,
    QgsMapSettings,
    QgsMultiBandColorRenderer,
    QgsProject,
    QgsRasterLayer,
    QgsRasterMinMaxOrigin,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QSize
from qgis.PyQt.QtGui import QColor, QImage
from qgis.PyQt.QtWidgets import QApplication

BANDS = {"planetscope4": (3, 2, 1), "paper": (1, 2, 3), "sentinel2-10": (3, 2, 1), "sentinel2-7": (3, 2, 1)}


def settle(seconds: float = 0.5) -> None:
    """Let Qt lay out and paint."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def scene_layer(path: str, bands: str) -> QgsRasterLayer:
    """The scene in true colour, stretched 2-98 % per band."""
    layer = QgsRasterLayer(path, Path(path).stem)
    red, green, blue = BANDS.get(bands, (1, 2, 3))
    renderer = QgsMultiBandColorRenderer(layer.dataProvider(), red, green, blue)
    layer.setRenderer(renderer)
    layer.setContrastEnhancement(QgsContrastEnhancement.StretchToMinimumMaximum,
                                 QgsRasterMinMaxOrigin.CumulativeCut, layer.extent(), 250000)
    return layer


def toolbox(out: Path) -> None:
    from qgis.gui import QgsProcessingToolboxProxyModel, QgsProcessingToolboxTreeView

    view = QgsProcessingToolboxTreeView(None, QgsApplication.processingRegistry())
    view.setFilters(QgsProcessingToolboxProxyModel.FilterToolbox)
    view.header().hide()
    model = view.model()
    for row in range(model.rowCount()):  # the rts provider open (with its groups), the others closed
        index = model.index(row, 0)
        if index.data() == "rts":
            view.expand(index)
            for child in range(model.rowCount(index)):
                view.expand(model.index(child, 0, index))
    view.resize(520, 250)
    view.show()
    settle()
    view.scrollToBottom()  # rts is the last provider
    view.setWindowTitle("Processing Toolbox")
    view.show()
    settle()
    view.grab().save(str(out / "qgis_toolbox.png"))
    view.close()


def predict_dialog(out: Path, scene: QgsRasterLayer, bundle: str, bands: str, min_score: float,
                   target: str) -> None:
    from processing.gui.AlgorithmDialog import AlgorithmDialog
    from processing.tools import dataobjects

    alg = QgsApplication.processingRegistry().createAlgorithmById("rts:predict")
    dialog = AlgorithmDialog(alg)
    dialog.resize(1100, 760)
    context = dataobjects.createContext()
    panel = dialog.mainWidget()
    index = 1 + ("planetscope4", "planetscope8", "sentinel2-10", "sentinel2-7", "landsat8-7", "paper").index(bands)
    for name, value in (("INPUT", scene.id()), ("MODEL", bundle), ("BANDS", index), ("MIN_SCORE", min_score),
                        ("MIN_AREA", 0.0), ("OUTPUT", target)):
        panel.wrappers[name].setParameterValue(value, context)
    dialog.show()
    settle(1.0)
    dialog.grab().save(str(out / "qgis_predict_dialog.png"))
    dialog.runAlgorithm()  # as the Run button does: in a background task, the log tab in front
    deadline = time.monotonic() + 900
    while not Path(target).exists() or QgsApplication.taskManager().countActiveTasks():
        settle(0.2)
        if time.monotonic() > deadline:
            raise SystemExit("rts:predict did not finish within 15 minutes")
    settle(1.5)
    dialog.grab().save(str(out / "qgis_predict_log.png"))
    dialog.close()


def render_map(out: Path, scene: QgsRasterLayer, slumps: QgsVectorLayer) -> None:
    settings = QgsMapSettings()
    settings.setLayers([slumps, scene])
    settings.setDestinationCrs(scene.crs())
    extent = scene.extent()
    width = 1000
    settings.setOutputSize(QSize(width, int(width * extent.height() / extent.width())))
    settings.setExtent(extent)
    settings.setBackgroundColor(QColor("white"))
    settings.setFlag(QgsMapSettings.DrawLabeling, True)
    settings.setFlag(QgsMapSettings.Antialiasing, True)
    job = QgsMapRendererParallelJob(settings)
    job.start()
    job.waitForFinished()
    # 256 colours (dithered): a third of the bytes of a true-colour PNG, for the README
    job.renderedImage().convertToFormat(QImage.Format_Indexed8).save(str(out / "qgis_predict_map.png"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scene")
    parser.add_argument("bundle")
    parser.add_argument("out", type=Path)
    parser.add_argument("--bands", default="planetscope4")
    parser.add_argument("--min-score", type=float, default=0.3)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    app = QgsApplication([], True)
    app.initQgis()
    try:
        from processing.core.Processing import Processing

        Processing.initialize()
        from rts_qgis import classFactory

        plugin = classFactory(None)
        plugin.initProcessing()
        scene = scene_layer(args.scene, args.bands)
        QgsProject.instance().addMapLayer(scene)
        toolbox(args.out)
        target = os.path.join(tempfile.mkdtemp(prefix="rts_screenshots_"), "slumps.gpkg")
        predict_dialog(args.out, scene, args.bundle, args.bands, args.min_score, target)
        slumps = next((lyr for lyr in QgsProject.instance().mapLayers().values()
                       if isinstance(lyr, QgsVectorLayer)), None)
        if slumps is None:  # the dialog did not load it (its "open output file" box): load it styled as rts does
            slumps = QgsVectorLayer(f"{target}|layername=rts", "Slumps", "ogr")
        render_map(args.out, scene, slumps)
        print(f"{slumps.featureCount()} slumps; pictures in {args.out}")
        plugin.unload()
    finally:
        QgsProject.instance().removeAllMapLayers()
        app.exitQgis()
    return 0


if __name__ == "__main__":
    if os.environ.get("QT_QPA_PLATFORM") is None and not os.environ.get("DISPLAY"):
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    sys.exit(main())
