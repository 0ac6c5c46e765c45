"""Writing ``rts merge``'s regional map as it is made, block by block, in bounded memory.

Two formats: GeoParquet (the pan-Arctic format: pyarrow ``ParquetWriter``, one row group per
:data:`ROW_GROUP` slumps, each row group a compact part of the map since blocks come in row by row; a
GeoParquet 1.1 ``bbox`` covering column lets readers skip row groups outside an area) and GeoPackage (rows
appended to the layer through pyogrio). Both are built under a temporary name and renamed when complete
(:func:`rtscli.io.atomic.atomic_file`); an interrupted run leaves nothing. Into an existing GeoPackage, the
layers are written into a copy, so that its other layers are kept (as :func:`rtscli.io.vector.write_layers`).
The coverage goes to the GeoPackage's ``<layer>_footprint`` layer, or to ``<name>_footprint.parquet`` beside a
GeoParquet map.

GeoParquet metadata follows the specification (geoparquet.org, version 1.1.0): WKB ``geometry``, its CRS as
PROJJSON, the geometry types and bounding box of the whole file, written in the footer when the last row group
is in.
"""

from __future__ import annotations

import json
import shutil
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from rtscli.errors import RtsError

#: slumps per row group of a GeoParquet output (and per append to a GeoPackage layer)
ROW_GROUP = 50_000

#: the Arrow type of each field of a merged map and of its coverage (the geometry and bbox columns are added)
INT, FLOAT, TEXT, BOOL = "int64", "float64", "string", "bool"


class Layer:
    """One layer being written: rows arrive as column dicts, are buffered up to :data:`ROW_GROUP`, then written.

    Args:
        path: the temporary file to write (GeoParquet or GeoPackage).
        layer: the GeoPackage layer name (ignored for GeoParquet).
        crs: the CRS of the geometries (pyproj CRS).
        types: ``{field: Arrow type name}`` (:data:`INT`, :data:`FLOAT`, :data:`TEXT`, :data:`BOOL`), in order.
    """

    def __init__(self, path: Path, layer: str, crs: Any, types: dict[str, str]) -> None:
        self.path, self.layer, self.crs, self.types = path, layer, crs, types
        self.parquet = path.suffix.lower() in (".parquet", ".geoparquet")
        self.buffer: dict[str, list] = {k: [] for k in [*types, "geometry"]}
        self.rows = 0  # written
        self.bounds = [np.inf, np.inf, -np.inf, -np.inf]
        self.kinds: set[str] = set()
        self.writer: Any = None
        self.started = False

    def add(self, columns: dict[str, list]) -> None:
        """Buffer rows (``columns``: every field of :attr:`types` and ``geometry``, lists of one length)."""
        for k in self.buffer:
            self.buffer[k].extend(columns[k])
        if len(self.buffer["geometry"]) >= ROW_GROUP:
            self.flush()

    def flush(self, final: bool = False) -> None:
        """Write the buffered rows (an empty layer too, when ``final`` and nothing was written)."""
        n = len(self.buffer["geometry"])
        if not n and not (final and not self.started):
            return
        geoms = np.asarray(self.buffer["geometry"], dtype=object)
        if n:
            import shapely

            b = shapely.total_bounds(geoms)
            self.bounds = [min(self.bounds[0], b[0]), min(self.bounds[1], b[1]), max(self.bounds[2], b[2]),
                           max(self.bounds[3], b[3])]
            self.kinds.update(str(t) for t in shapely.get_type_id(geoms).tolist())
        if self.parquet:
            self._parquet(geoms)
        else:
            self._gpkg(geoms)
        self.rows += n
        self.started = True
        self.buffer = {k: [] for k in self.buffer}

    def _schema(self) -> Any:
        import pyarrow as pa

        kind = {INT: pa.int64(), FLOAT: pa.float64(), TEXT: pa.string(), BOOL: pa.bool_()}
        box = pa.struct([(k, pa.float64()) for k in ("xmin", "ymin", "xmax", "ymax")])
        return pa.schema([*((k, kind[t]) for k, t in self.types.items()), ("geometry", pa.binary()), ("bbox", box)])

    def _parquet(self, geoms: np.ndarray) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq
        import shapely

        schema = self._schema()
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, schema, compression="zstd")
        b = shapely.bounds(geoms) if len(geoms) else np.zeros((0, 4))
        cols = [pa.array(self.buffer[k], type=schema.field(k).type, from_pandas=True) for k in self.types]
        cols.append(pa.array(shapely.to_wkb(geoms) if len(geoms) else [], type=pa.binary()))
        cols.append(pa.StructArray.from_arrays([pa.array(b[:, i], pa.float64()) for i in range(4)],
                                               names=["xmin", "ymin", "xmax", "ymax"]))
        self.writer.write_table(pa.Table.from_arrays(cols, schema=schema))

    def _gpkg(self, geoms: np.ndarray) -> None:
        import geopandas as gpd
        import pandas as pd
        import pyogrio

        kind = {INT: "Int64", FLOAT: "float64", TEXT: "object", BOOL: "bool"}
        df = pd.DataFrame({k: pd.Series(self.buffer[k], dtype=kind[t]) for k, t in self.types.items()})
        gdf = gpd.GeoDataFrame(df, geometry=gpd.GeoSeries(geoms, crs=self.crs), crs=self.crs)
        pyogrio.write_dataframe(gdf, self.path, layer=self.layer, driver="GPKG", append=self.started,
                                promote_to_multi=True, geometry_type="MultiPolygon")

    def close(self) -> None:
        """Write what is buffered and, for GeoParquet, the ``geo`` metadata of the whole file."""
        self.flush(final=True)
        if not self.parquet:
            return
        names = {"3": "Polygon", "6": "MultiPolygon"}
        geo: dict[str, Any] = {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": {
            "encoding": "WKB", "geometry_types": sorted(names.get(k, "Polygon") for k in self.kinds),
            "crs": self.crs.to_json_dict(),
            "covering": {"bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}}}},
            "creator": {"library": "rtscli", "version": _version()}}
        if self.rows:
            geo["columns"]["geometry"]["bbox"] = [float(v) for v in self.bounds]
        self.writer.add_key_value_metadata({"geo": json.dumps(geo)})
        self.writer.close()
        self.writer = None


def _version() -> str:
    from rtscli import __version__

    return str(__version__)


class MergedOutput:
    """The merged map and its coverage, written as they come, renamed into place on :meth:`close`.

    Use as a context manager: on an error nothing is left (the temporary files are removed) and an existing
    output is untouched.

    Args:
        out: the merged map (``.parquet``/``.geoparquet`` or ``.gpkg``).
        layer: the GeoPackage layer of slumps (its coverage: ``<layer>_footprint``).
        crs: the output CRS.
        slump_types: the slump fields' types; ``coverage_types``: the coverage fields'.
        overwrite: replace an existing output (a GeoPackage: these two layers; its other layers are kept).
    """

    def __init__(self, out: Path, layer: str, crs: Any, slump_types: dict[str, str],
                 coverage_types: dict[str, str], *, overwrite: bool) -> None:
        self.out, self.layer, self.crs, self.overwrite = Path(out), layer, crs, overwrite
        self.slump_types, self.coverage_types = slump_types, coverage_types
        self.stack = ExitStack()
        self.slumps: Layer | None = None
        self.coverage: Layer | None = None

    def __enter__(self) -> MergedOutput:
        from rtscli.io.atomic import atomic_file, output_lock
        from rtscli.io.schema import footprint_layer
        from rtscli.io.vector import check_vector_output
        from rtscli.track.merge_schema import parquet_coverage

        try:
            if self.out.suffix.lower() == ".gpkg":
                names = [self.layer, footprint_layer(self.layer)]
                check_vector_output(self.out, self.overwrite, names)
                self.stack.enter_context(output_lock(self.out))
                check_vector_output(self.out, self.overwrite, names)  # again: it may have changed while waiting
                tmp = self.stack.enter_context(atomic_file(self.out, overwrite=True))
                if self.out.exists():  # its other layers are kept; these two are replaced
                    shutil.copy2(self.out, tmp)
                self.slumps = Layer(tmp, self.layer, self.crs, self.slump_types)
                self.coverage = Layer(tmp, footprint_layer(self.layer), self.crs, self.coverage_types)
            else:
                side = parquet_coverage(self.out)
                for p in (self.out, side):
                    self.stack.enter_context(output_lock(p))
                tmp = self.stack.enter_context(atomic_file(self.out, overwrite=self.overwrite))
                tmp_side = self.stack.enter_context(atomic_file(side, overwrite=self.overwrite))
                self.slumps = Layer(tmp, self.layer, self.crs, self.slump_types)
                self.coverage = Layer(tmp_side, footprint_layer(self.layer), self.crs, self.coverage_types)
        except BaseException:
            self.stack.close()
            raise
        return self

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        if exc is None:
            try:
                assert self.slumps is not None and self.coverage is not None
                self.slumps.close()
                self.coverage.close()  # a GeoPackage's coverage layer after the slumps: `rts` is its first layer
            except BaseException as err:
                self._abort()
                self.stack.__exit__(type(err), err, err.__traceback__)
                raise
            self.stack.close()
            return
        self._abort()
        self.stack.__exit__(kind, exc, tb)

    def _abort(self) -> None:
        for lay in (self.slumps, self.coverage):
            if lay is not None and lay.writer is not None:
                try:
                    lay.writer.close()
                except Exception:  # the temporary file is removed anyway
                    pass
                lay.writer = None

    def add(self, columns: dict[str, list]) -> None:
        """Slumps of one block."""
        assert self.slumps is not None
        try:
            self.slumps.add(columns)
        except OSError as exc:
            raise RtsError(f"cannot write the merged map ({exc.strerror or exc})", path=self.out,
                           fix="check the free space and the permissions of its folder") from None

    def add_coverage(self, columns: dict[str, list]) -> None:
        """The coverage of one block."""
        assert self.coverage is not None
        self.coverage.add(columns)
