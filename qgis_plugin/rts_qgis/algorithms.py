"""The Processing algorithms: one per rts command, each running the ``rts`` executable (:mod:`rts_qgis.runner`).

Parameters come from :mod:`rts_qgis.spec` (the command line's defaults and help texts). Layers of the project are
inputs as they are when rts can read their files (a GeoTIFF, a GeoPackage layer, a Shapefile...); a layer that is
not a plain file (a filtered or in-memory layer, a web service) is written to a temporary GeoPackage first. Outputs
open in the project styled with the QML files in ``styles/`` (predicted slumps: outlines coloured by score,
labelled with their id; tracks and observations: by growth rate).
"""

from __future__ import annotations

import configparser
import os
import subprocess
from typing import Any, Dict, List, Optional, Tuple

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputVectorLayer,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterCrs,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
    QgsProcessingParameterVectorLayer,
    QgsProcessingUtils,
    QgsProviderRegistry,
    QgsVectorFileWriter,
)
from qgis.PyQt.QtGui import QIcon

from . import runner
from .spec import EXPORT_ARTS, MERGE, PREDICT, PREPARE, TRACK, Command, Param

HERE = os.path.dirname(os.path.abspath(__file__))
STYLES = os.path.join(HERE, "styles")

#: the QML of each output layer rts writes
STYLE_OF = {"rts": "slumps.qml", "tracks": "tracks.qml", "observations": "observations.qml"}

#: vector formats rts reads and writes (by extension)
VECTOR_EXTENSIONS = ("gpkg", "shp", "geojson", "json", "parquet")


#: the name of the plugin's setting: the rts executable
SETTING_EXECUTABLE = "RTS_EXECUTABLE"


def plugin_version() -> str:
    """The plugin's version (``metadata.txt``): the rts version it was made from."""
    meta = configparser.ConfigParser()
    meta.read(os.path.join(HERE, "metadata.txt"), encoding="utf-8")
    return meta.get("general", "version", fallback="")


def configured_executable() -> str:
    """The rts executable set in Settings > Options > Processing > Providers > rts ('' when not set, or when
    Processing's settings are not available, as in a bare script)."""
    try:
        from processing.core.ProcessingConfig import ProcessingConfig
    except ImportError:
        return ""
    value = ProcessingConfig.getSetting(SETTING_EXECUTABLE)
    return str(value or "")


_checked: Dict[str, str] = {}  # executable -> its version, once per session


def check_executable(exe: str, feedback: QgsProcessingFeedback) -> str:
    """``exe --version`` once per session: it must be rts; a version other than the plugin's is a warning.

    Args:
        exe: the executable (:func:`rts_qgis.runner.find_rts`).
        feedback: where the warning goes.

    Returns:
        rts's version.

    Raises:
        QgsProcessingException: the program does not start or does not say it is rts.
    """
    if exe not in _checked:
        try:
            out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60,
                                 env=runner.child_environment(), stdin=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError) as exc:
            raise QgsProcessingException(f"cannot run {exe} ({exc}); check the rts plugin's setting "
                                         "(Settings > Options > Processing > Providers > rts)") from None
        words = (out.stdout or "").split()
        if out.returncode != 0 or len(words) < 2 or words[0] != "rts":
            said = runner.error_of((out.stdout + out.stderr).splitlines()) or f"exit code {out.returncode}"
            raise QgsProcessingException(f"{exe} is not a working rts ({said}); check the rts plugin's setting "
                                         "(Settings > Options > Processing > Providers > rts)")
        _checked[exe] = words[1]
    version = _checked[exe]
    mine = plugin_version()
    if mine and version != mine:
        feedback.pushWarning(f"rts {version} runs with the plugin made for rts {mine}: its options may differ; make "
                             f"the plugin again with `rts qgis-plugin -o rts_qgis.zip` in that environment")
    return version


class StyleLayer(QgsProcessingLayerPostProcessorInterface):
    """Applies a QML style to an output layer once Processing has loaded it into the project."""

    _alive: List["StyleLayer"] = []  # Processing keeps a C++ pointer only: the Python objects must stay alive

    def __init__(self, qml: str) -> None:
        super().__init__()
        self.qml = qml

    def postProcessLayer(self, layer: Any, context: QgsProcessingContext, feedback: QgsProcessingFeedback) -> None:
        """Load the style into ``layer`` (a warning, not a failure, if it cannot be read)."""
        message, ok = layer.loadNamedStyle(self.qml)
        if not ok:
            feedback.pushWarning(f"the style {self.qml} could not be applied: {message}")
        layer.triggerRepaint()

    @classmethod
    def create(cls, qml: str) -> "StyleLayer":
        """A post-processor for ``qml``, kept alive for the session."""
        styler = cls(qml)
        cls._alive.append(styler)
        return styler


def make_parameter(p: Param) -> QgsProcessingParameterDefinition:
    """The QGIS parameter of a :class:`rts_qgis.spec.Param` (its help shown as the tooltip)."""
    kind = p.kind
    if kind == "raster":
        q = QgsProcessingParameterRasterLayer(p.name, p.label, optional=p.optional)
    elif kind == "vector":
        q = QgsProcessingParameterVectorLayer(p.name, p.label, [QgsProcessing.TypeVectorPolygon], optional=p.optional)
    elif kind in ("vectors", "rasters"):
        q = QgsProcessingParameterMultipleLayers(
            p.name, p.label, QgsProcessing.TypeVectorPolygon if kind == "vectors" else QgsProcessing.TypeRaster,
            optional=p.optional)
    elif kind in ("file", "folder"):
        behavior = QgsProcessingParameterFile.Folder if kind == "folder" else QgsProcessingParameterFile.File
        q = QgsProcessingParameterFile(p.name, p.label, behavior=behavior, extension=p.file_filter,
                                       optional=p.optional)
    elif kind in ("number", "int"):
        ntype = QgsProcessingParameterNumber.Double if kind == "number" else QgsProcessingParameterNumber.Integer
        q = QgsProcessingParameterNumber(p.name, p.label, type=ntype, defaultValue=p.default, optional=p.optional)
        if p.minimum is not None:
            q.setMinimum(p.minimum)
        if p.maximum is not None:
            q.setMaximum(p.maximum)
    elif kind == "bool":
        q = QgsProcessingParameterBoolean(p.name, p.label, defaultValue=bool(p.default), optional=p.optional)
    elif kind == "enum":
        q = QgsProcessingParameterEnum(p.name, p.label, options=[c[0] for c in p.choices], allowMultiple=False,
                                       defaultValue=p.default, optional=p.optional)
    elif kind == "string":
        q = QgsProcessingParameterString(p.name, p.label, defaultValue=p.default, optional=p.optional)
    elif kind == "crs":
        q = QgsProcessingParameterCrs(p.name, p.label, defaultValue=None, optional=p.optional)
    elif kind == "vector_out":
        q = QgsProcessingParameterVectorDestination(p.name, p.label, QgsProcessing.TypeVectorPolygon,
                                                    optional=p.optional)
        q.setSupportsNonFileBasedOutput(False)  # rts writes files
    elif kind == "file_out":
        q = QgsProcessingParameterFileDestination(p.name, p.label, fileFilter=p.file_filter, optional=p.optional,
                                                  createByDefault=not p.optional)
    elif kind == "folder_out":
        q = QgsProcessingParameterFolderDestination(p.name, p.label, optional=p.optional)
    else:
        raise ValueError(f"unknown parameter kind {kind!r}")
    q.setHelp(p.help)
    if p.advanced:
        q.setFlags(q.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
    return q


def layer_file(layer: Any) -> Tuple[str, Optional[str]]:
    """The file of a layer and its layer name inside it (GeoPackage), or ('', None) when rts cannot read the layer
    as a file as it is (not a GDAL/OGR file, a filter or a selection applies, a web or database source).

    Args:
        layer: a raster or vector map layer.

    Returns:
        ``(path, layer name or None)``.
    """
    provider = layer.providerType()
    if provider not in ("gdal", "ogr"):
        return "", None
    parts = QgsProviderRegistry.instance().decodeUri(provider, layer.source())
    path = parts.get("path") or ""
    if not path or not os.path.isfile(path):
        return "", None
    if provider == "ogr":
        subset = layer.subsetString() if hasattr(layer, "subsetString") else ""
        if subset or path.rsplit(".", 1)[-1].lower() not in VECTOR_EXTENSIONS:
            return "", None
        name = parts.get("layerName") or None
        if name is None and parts.get("layerId") not in (None, 0, "0"):
            return "", None  # a layer picked by its index: write it out
        return path, name
    return path, None


def write_layer(layer: Any, name: str, context: QgsProcessingContext, feedback: QgsProcessingFeedback) -> str:
    """Write a vector layer that rts cannot read as it is to a temporary GeoPackage (layer ``name``).

    Raises:
        QgsProcessingException: the layer cannot be written.
    """
    path = QgsProcessingUtils.generateTempFilename(f"{name}.gpkg")
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = "GPKG"
    options.layerName = name
    write = getattr(QgsVectorFileWriter, "writeAsVectorFormatV3", None)
    if write is not None:
        result = write(layer, path, context.transformContext(), options)
    else:  # QGIS before 3.20
        result = QgsVectorFileWriter.writeAsVectorFormatV2(layer, path, context.transformContext(), options)
    if result[0] != QgsVectorFileWriter.NoError:
        raise QgsProcessingException(f"cannot write the layer {layer.name()} for rts: {result[1]}")
    feedback.pushInfo(f"the layer {layer.name()} is not a plain file (or is filtered): written to {path} for rts")
    return path


def raster_file(layer: Any, what: str) -> str:
    """The file of a raster layer.

    Raises:
        QgsProcessingException: no layer, or one that is not a file GDAL reads (a web service, a database).
    """
    if layer is None:
        raise QgsProcessingException(f"no {what} given")
    path, _ = layer_file(layer)
    if not path:
        raise QgsProcessingException(f"the layer {layer.name()} is not a raster file rts can read ({layer.source()}); "
                                     "save it as a GeoTIFF (Export > Save As...) and use that")
    return path


def vector_files(layers: List[Any], context: QgsProcessingContext,
                 feedback: QgsProcessingFeedback) -> Tuple[List[str], Optional[str]]:
    """The files of vector layers for one rts option and the one layer name they share (``--layer``).

    A layer that is not a plain file, is filtered, or whose layer name differs from the first layer's is written
    to a temporary GeoPackage under that name first.

    Returns:
        ``(paths, layer name or None)``.
    """
    found = [layer_file(layer) for layer in layers]
    name = next((n for p, n in found if p and n), None)
    paths = []
    for i, layer in enumerate(layers):
        path, lname = found[i]
        if not path or (name is not None and lname not in (None, name) and path.lower().endswith(".gpkg")):
            path = write_layer(layer, name or "rts", context, feedback)
        paths.append(path)
    return paths, name


def split_destination(dest: str) -> Tuple[str, Optional[str]]:
    """A vector destination as ``(file, layer)``: ``ogr:dbname='x.gpkg' table="name" (geom)`` (Save to GeoPackage)
    gives the GeoPackage and the table; a plain path gives itself and None."""
    if dest.startswith("ogr:"):
        import re

        db = re.search(r"dbname='((?:[^']|'')*)'", dest)
        table = re.search(r'table="((?:[^"]|"")*)"', dest)
        if db:
            return db.group(1).replace("''", "'"), table.group(1).replace('""', '"') if table else None
    return dest, None


class RtsAlgorithm(QgsProcessingAlgorithm):
    """An rts command as a Processing algorithm. Subclasses set :attr:`COMMAND` and turn their layer and output
    parameters into arguments (:meth:`arguments`); every other parameter with a ``flag`` becomes ``FLAG VALUE``."""

    COMMAND: Command
    #: parameters a subclass turns into arguments itself
    SPECIAL: Tuple[str, ...] = ()
    #: outputs a run adds to the layers Processing loads when it ends (removed again when it is cancelled)
    loads: List[str]

    def name(self) -> str:
        return self.COMMAND.id

    def displayName(self) -> str:
        return self.COMMAND.name

    def group(self) -> str:
        return self.COMMAND.group

    def groupId(self) -> str:
        return self.COMMAND.group.lower().replace(" ", "")

    def shortHelpString(self) -> str:
        rows = "".join(f"<dt><b>{p.label}</b></dt><dd>{_html(p.help)}</dd>" for p in self.COMMAND.params if p.help)
        return f"<p>{_html(self.COMMAND.summary)}</p><dl>{rows}</dl>"

    def icon(self) -> QIcon:
        return QIcon(os.path.join(HERE, "icon.svg"))

    def createInstance(self) -> "RtsAlgorithm":
        return type(self)()

    def initAlgorithm(self, config: Optional[Dict[str, Any]] = None) -> None:
        for p in self.COMMAND.params:
            self.addParameter(make_parameter(p))

    # ----------------------------------------------------------------- arguments

    def option_arguments(self, parameters: Dict[str, Any], context: QgsProcessingContext) -> List[str]:
        """``FLAG VALUE`` (or ``FLAG`` for a true switch) for each parameter with a flag that was given."""
        args: List[str] = []
        for p in self.COMMAND.params:
            if not p.flag or p.name in self.SPECIAL or p.kind.endswith("_out") or p.kind in ("vectors", "rasters"):
                continue
            value = self.option_value(p, parameters, context)
            if value is None:
                continue
            if p.kind == "bool":
                if value:
                    args.append(p.flag)
            else:
                args += [p.flag, value]
        return args

    def option_value(self, p: Param, parameters: Dict[str, Any], context: QgsProcessingContext) -> Any:
        """The value of one parameter as rts takes it (a string), True/False for a switch, or None: not given."""
        raw = parameters.get(p.name)
        if p.kind == "bool":
            return self.parameterAsBoolean(parameters, p.name, context)
        if p.kind == "enum":
            return p.choices[self.parameterAsEnum(parameters, p.name, context)][1]
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return None  # not given: rts's own default
        if p.kind == "number":
            return repr(float(self.parameterAsDouble(parameters, p.name, context)))
        if p.kind == "int":
            return str(self.parameterAsInt(parameters, p.name, context))
        if p.kind == "crs":
            crs: QgsCoordinateReferenceSystem = self.parameterAsCrs(parameters, p.name, context)
            if not crs.isValid():
                return None
            return crs.authid() or crs.toWkt()
        if p.kind in ("file", "folder"):
            return self.parameterAsFile(parameters, p.name, context) or None
        text = self.parameterAsString(parameters, p.name, context).strip()
        return text or None

    def arguments(self, parameters: Dict[str, Any], context: QgsProcessingContext,
                  feedback: QgsProcessingFeedback) -> Tuple[List[str], Dict[str, Any]]:
        """The arguments after ``rts COMMAND`` and the results to return when rts succeeds (each subclass has its
        own: its input layers and outputs; every other parameter is :meth:`option_arguments`).

        Raises:
            QgsProcessingException: an input rts cannot read (the message says what to do).
        """
        raise NotImplementedError(f"{type(self).__name__} must say how its parameters become arguments")

    # ----------------------------------------------------------------- running

    def processAlgorithm(self, parameters: Dict[str, Any], context: QgsProcessingContext,
                         feedback: Optional[QgsProcessingFeedback]) -> Dict[str, Any]:
        feedback = feedback or QgsProcessingFeedback()
        try:
            exe = runner.find_rts(configured_executable())
        except runner.RtsNotFound as exc:
            raise QgsProcessingException(str(exc)) from None
        check_executable(exe, feedback)
        self.loads: List[str] = []  # outputs this run adds to the layers Processing loads when it ends
        args, results = self.arguments(parameters, context, feedback)
        argv = [exe, *self.COMMAND.cli, *args]
        feedback.pushCommandInfo(runner.describe_command(argv))
        shown = [-10.0]

        def on_line(line: str, pct: Optional[float]) -> None:
            if pct is not None:
                feedback.setProgress(pct)
                if pct - shown[0] < 10 and pct < 100:
                    return  # the progress bar moves; the log gets a line per 10 %
                shown[0] = pct
            if line.startswith("rts: warning:"):
                feedback.pushWarning(line)
            else:
                feedback.pushConsoleInfo(line)

        try:
            result = runner.run(argv, on_line=on_line, is_canceled=feedback.isCanceled)
        except OSError as exc:
            raise QgsProcessingException(f"cannot run {exe} ({exc}); check the rts plugin's setting "
                                         "(Settings > Options > Processing > Providers > rts)") from None
        if result.canceled:
            feedback.pushInfo("canceled: rts was stopped and kept no partial output")
            layers = context.layersToLoadOnCompletion()
            for uri in self.loads:  # nothing was written: nothing to load
                layers.pop(uri, None)
            context.setLayersToLoadOnCompletion(layers)
            return {}
        if result.code != 0:
            raise QgsProcessingException(result.error or f"rts ended with exit code {result.code}")
        feedback.setProgress(100)
        return results

    def load_styled(self, uri: str, name: str, output: str, style: Optional[str],
                    context: QgsProcessingContext) -> None:
        """Load ``uri`` into the project (if the run has one) when the run ends, as ``name``, styled as the rts
        layers called ``style`` are (:data:`STYLE_OF`; None: QGIS's default style)."""
        project = context.project()
        if project is None:
            return
        details = QgsProcessingContext.LayerDetails(name, project, output)
        context.addLayerToLoadOnCompletion(uri, details)
        self.loads.append(uri)
        qml = STYLE_OF.get(style or "")
        if qml:
            context.layerToLoadOnCompletionDetails(uri).setPostProcessor(
                StyleLayer.create(os.path.join(STYLES, qml)))

    def restyle_output(self, dest: str, uri: str, style: str, context: QgsProcessingContext) -> None:
        """Processing loads a vector destination by its path; load the layer ``uri`` within it instead (a
        GeoPackage has several), styled as ``style`` says."""
        layers = context.layersToLoadOnCompletion()
        details = layers.pop(dest, None)
        if details is None:
            return
        context.setLayersToLoadOnCompletion(layers)
        moved = QgsProcessingContext.LayerDetails(details.name, details.project, details.outputName)
        context.addLayerToLoadOnCompletion(uri, moved)
        self.loads.append(uri)
        qml = STYLE_OF.get(style)
        if qml:
            context.layerToLoadOnCompletionDetails(uri).setPostProcessor(
                StyleLayer.create(os.path.join(STYLES, qml)))


class PredictAlgorithm(RtsAlgorithm):
    """``rts predict SCENE -o OUT``: slump polygons of a scene."""

    COMMAND = PREDICT
    SPECIAL = ("BANDS", "BAND_MAP")

    def arguments(self, parameters: Dict[str, Any], context: QgsProcessingContext,
                  feedback: QgsProcessingFeedback) -> Tuple[List[str], Dict[str, Any]]:
        scene = raster_file(self.parameterAsRasterLayer(parameters, "INPUT", context), "scene")
        dest = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        path, layer = split_destination(dest)
        args = [scene, "--out", path]
        if layer:
            args += ["--layer", layer]
        band_map = self.option_value(PREDICT.param("BAND_MAP"), parameters, context)
        bands = band_map or self.option_value(PREDICT.param("BANDS"), parameters, context)
        if bands:
            args += ["--bands", bands]
        args += self.option_arguments(parameters, context)
        quicklook = self.parameterAsFileOutput(parameters, "QUICKLOOK", context)
        if quicklook:
            args += ["--quicklook", quicklook]
        args.append("--overwrite")  # Processing's outputs are replaced (a GeoPackage: only this layer)
        gpkg = path.lower().endswith(".gpkg")
        uri = f"{path}|layername={layer or 'rts'}" if gpkg else path
        self.restyle_output(dest, uri, "rts", context)
        return args, {"OUTPUT": uri, "QUICKLOOK": quicklook or None}


class MergeAlgorithm(RtsAlgorithm):
    """``rts merge MAPS... -o region.gpkg``: the per-scene maps of one period as one map."""

    COMMAND = MERGE

    def checkParameterValues(self, parameters: Dict[str, Any], context: QgsProcessingContext) -> Tuple[bool, str]:
        ok, message = super().checkParameterValues(parameters, context)
        if ok and not self.parameterAsLayerList(parameters, "MAPS", context) \
                and not self.parameterAsFile(parameters, "MAPS_FOLDER", context):
            return False, "give the per-scene maps (layers), or a folder of rts predict outputs"
        return ok, message

    def arguments(self, parameters: Dict[str, Any], context: QgsProcessingContext,
                  feedback: QgsProcessingFeedback) -> Tuple[List[str], Dict[str, Any]]:
        maps, layer = vector_files(self.parameterAsLayerList(parameters, "MAPS", context), context, feedback)
        folder = self.parameterAsFile(parameters, "MAPS_FOLDER", context)
        if folder:
            maps.append(folder)
        if not maps:
            raise QgsProcessingException("give the per-scene maps (layers), or a folder of rts predict outputs")
        out = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        args = [*maps, "--out", out]
        if layer:
            args += ["--layer", layer]
        args += self.option_arguments(parameters, context)
        args.append("--overwrite")
        uri = f"{out}|layername={layer or 'rts'}" if out.lower().endswith(".gpkg") else out
        self.load_styled(uri, "rts merged", "OUTPUT", "rts", context)
        return args, {"OUTPUT": uri}


class TrackAlgorithm(RtsAlgorithm):
    """``rts track MAP... -o changes.gpkg``: each slump through time."""

    COMMAND = TRACK

    def initAlgorithm(self, config: Optional[Dict[str, Any]] = None) -> None:
        super().initAlgorithm(config)
        self.addOutput(QgsProcessingOutputVectorLayer("TRACKS", "Tracks", QgsProcessing.TypeVectorPolygon))
        self.addOutput(QgsProcessingOutputVectorLayer("OBSERVATIONS", "Observations",
                                                      QgsProcessing.TypeVectorPolygon))

    def arguments(self, parameters: Dict[str, Any], context: QgsProcessingContext,
                  feedback: QgsProcessingFeedback) -> Tuple[List[str], Dict[str, Any]]:
        layers = self.parameterAsLayerList(parameters, "MAPS", context)
        maps, layer = vector_files(layers, context, feedback)
        out = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        args = [*maps, "--out", out]
        if layer:
            args += ["--layer", layer]
        args += self.option_arguments(parameters, context)
        plot = self.parameterAsFileOutput(parameters, "PLOT", context)
        if plot:
            args += ["--plot", plot]
        args.append("--overwrite")
        tracks, observations = f"{out}|layername=tracks", f"{out}|layername=observations"
        self.load_styled(observations, "rts observations", "OBSERVATIONS", "observations", context)
        self.load_styled(tracks, "rts tracks", "TRACKS", "tracks", context)
        return args, {"OUTPUT": out, "TRACKS": tracks, "OBSERVATIONS": observations, "PLOT": plot or None}


class ExportArtsAlgorithm(RtsAlgorithm):
    """``rts export SOURCE -o arts.geojson --schema arts ...``: ARTS features."""

    COMMAND = EXPORT_ARTS

    def arguments(self, parameters: Dict[str, Any], context: QgsProcessingContext,
                  feedback: QgsProcessingFeedback) -> Tuple[List[str], Dict[str, Any]]:
        source = self.parameterAsVectorLayer(parameters, "INPUT", context)
        if source is None:
            raise QgsProcessingException("no slump map given")
        path, layer = layer_file(source)
        if not path:
            path, layer = write_layer(source, "rts", context, feedback), "rts"
        out = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        args = [path, "--out", out]
        if layer and layer not in ("tracks", "observations"):  # either layer of rts track: its GeoPackage
            args += ["--layer", layer]
        args += self.option_arguments(parameters, context)
        args.append("--overwrite")
        uri = f"{out}|layername=arts" if out.lower().endswith(".gpkg") else out
        self.load_styled(uri, "ARTS", "OUTPUT", None, context)
        return args, {"OUTPUT": uri}


class PrepareAlgorithm(RtsAlgorithm):
    """``rts prepare INPUTS --labels ... -o DATASET``: a training dataset."""

    COMMAND = PREPARE

    def checkParameterValues(self, parameters: Dict[str, Any], context: QgsProcessingContext) -> Tuple[bool, str]:
        ok, message = super().checkParameterValues(parameters, context)
        if ok and not self.parameterAsLayerList(parameters, "INPUTS", context) \
                and not self.parameterAsFile(parameters, "INPUT_FOLDER", context):
            return False, "give scenes or images (layers), or a folder of them"
        return ok, message

    def arguments(self, parameters: Dict[str, Any], context: QgsProcessingContext,
                  feedback: QgsProcessingFeedback) -> Tuple[List[str], Dict[str, Any]]:
        inputs = [raster_file(layer, "image") for layer in self.parameterAsLayerList(parameters, "INPUTS", context)]
        folder = self.parameterAsFile(parameters, "INPUT_FOLDER", context)
        if folder:
            inputs.append(folder)
        if not inputs:
            raise QgsProcessingException("give scenes or images (layers), or a folder of them")
        out = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        args = [*inputs, "--out", out]
        labels, layer = vector_files(self.parameterAsLayerList(parameters, "LABELS", context), context, feedback)
        for path in labels:
            args += ["--labels", path]
        if labels and layer:
            args += ["--labels-layer", layer]
        args += self.option_arguments(parameters, context)
        if os.path.isdir(out) and (not os.listdir(out) or os.path.isfile(os.path.join(out, "manifest.yaml"))):
            args.append("--overwrite")  # an empty folder, or a dataset made before: replaced (never other folders)
        return args, {"OUTPUT": out}


#: the provider's algorithms
ALGORITHMS = (PredictAlgorithm, MergeAlgorithm, TrackAlgorithm, ExportArtsAlgorithm, PrepareAlgorithm)


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
