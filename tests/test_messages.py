"""Every message a user sees: one line that names the file, short CRS names, no raw library output."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine
from shapely.geometry import box

from conftest import write_tif

T = Affine(3.0, 0.0, 100000.0, 0.0, -3.0, 500000.0)


def truncated(path: Path, size: int = 512, levels: int = 3000) -> Path:
    """A tiled GeoTIFF of noise (``levels`` values) cut to half its bytes: it opens, but its lower half cannot
    be read."""
    data = np.random.default_rng(0).integers(1, 1 + levels, (4, size, size)).astype(np.uint16)
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=4, dtype="uint16",
                       crs="EPSG:32608", transform=T, nodata=0, tiled=True, blockxsize=64, blockysize=64,
                       compress="deflate") as dst:
        dst.write(data)
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) // 2)
    return path


def one_clean_error(err: str, path: Path) -> str:
    """The error line of stderr, checked: one line naming the file, nothing pointing at library internals."""
    lines = err.strip().splitlines()
    assert all(line.startswith("rts: ") for line in lines), err  # no raw library output
    errors = [line for line in lines if line.startswith("rts: error:")]
    assert len(errors) == 1, err
    line = errors[0]
    assert str(path.resolve()) in line and "corrupt or truncated" in line, line
    for junk in ("See previous", "site-packages", "Traceback", "DataLoader worker"):
        assert junk not in err, err
    return line


def test_a_truncated_scene_in_prepare_names_the_file(tmp_path, rts):
    scene = truncated(tmp_path / "cut.tif")
    r = rts("prepare", scene, "--labels", _labels(tmp_path), "-o", tmp_path / "ds", "--bands", "planetscope4",
            "--chip-size", 128)
    assert r.code == 2 and not (tmp_path / "ds").exists()
    one_clean_error(r.err, scene)


def _labels(tmp_path: Path) -> Path:
    path = tmp_path / "labels.gpkg"
    gpd.GeoDataFrame(geometry=[box(100030, 499700, 100090, 499760)], crs="EPSG:32608").to_file(path)
    return path


def test_labels_in_a_compound_crs_are_named_short(tmp_path, rts):
    scene = write_tif(tmp_path / "s.tif", np.full((4, 128, 128), 900, np.uint16), crs="EPSG:3413",
                      transform=Affine(3.0, 0.0, -2300000.0, 0.0, -3.0, 500000.0), nodata=0)
    labels = gpd.GeoDataFrame(geometry=[box(-2299900, 499700, -2299800, 499800)], crs="EPSG:3413+5773")
    labels.to_file(tmp_path / "l.gpkg")
    r = rts("prepare", scene, "--labels", tmp_path / "l.gpkg", "-o", tmp_path / "ds", "--bands", "planetscope4",
            "--chip-size", 128, "--split", "1,0,0")
    assert r.code == 0, r.err
    assert "from EPSG:3413+5773 to the raster CRS EPSG:3413" in " ".join(r.err.split())
    for wkt in ("COMPD_CS", "COMPOUNDCRS", "PROJCS", "PROJCRS"):
        assert wkt not in r.err


def test_a_project_geopackage_as_labels_asks_for_the_layer(tmp_path, rts):
    scene = write_tif(tmp_path / "s.tif", np.full((4, 128, 128), 900, np.uint16), crs="EPSG:32608", transform=T,
                      nodata=0)
    project = tmp_path / "project.gpkg"
    gpd.GeoDataFrame({"n": [1]}, geometry=[box(100000, 499616, 100384, 500000)], crs=32608).to_file(
        project, layer="aoi")  # the first layer: read silently, it would be one giant "slump"
    gpd.GeoDataFrame({"n": [1]}, geometry=[box(100030, 499700, 100090, 499760)], crs=32608).to_file(
        project, layer="slumps")
    args = ["prepare", scene, "--labels", project, "--bands", "planetscope4", "--chip-size", 128, "--split", "1,0,0"]
    r = rts(*args, "-o", tmp_path / "ds")
    assert r.code == 2 and "2 layers (aoi, slumps)" in r.err and "--labels-layer" in r.err
    assert len(r.err.strip().splitlines()) == 1 and "More than one layer" not in r.err
    r = rts(*args, "-o", tmp_path / "ds", "--labels-layer", "slumps")
    assert r.code == 0, r.err


def test_library_warnings_and_gdal_messages_are_one_line_each(tmp_path, capsys):
    """A real GDAL warning (rasterio's logger) and a real Python warning from rasterio, through rts's logging."""
    from rtscli.logs import library_warnings, setup

    setup(logging.INFO)
    with library_warnings():
        for k in range(2):  # the same message twice is shown once
            with rasterio.open(tmp_path / f"bogus{k}.tif", "w", driver="GTiff", width=8, height=8, count=1,
                               dtype="uint8", BOGUS_OPTION="YES") as d:
                d.write(np.zeros((1, 8, 8), np.uint8))  # no georeference: rasterio warns (NotGeoreferencedWarning)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert all(line.startswith("rts: warning: ") for line in lines), err
    assert sum("BOGUS_OPTION" in line for line in lines) == 1 and any("GDAL" in line for line in lines)
    assert any("NotGeoreferencedWarning" in line for line in lines)
    assert "site-packages" not in err and "dataset = writer(" not in err


def test_a_geopackage_open_in_qgis_or_with_a_layer_in_other_case(tmp_path):
    from rtscli.errors import RtsError
    from rtscli.io.vector import write_vector

    gdf = gpd.GeoDataFrame({"n": [1]}, geometry=[box(0, 0, 1, 1)], crs=32608)
    project = tmp_path / "p.gpkg"
    gdf.to_file(project, layer="RTS")
    with pytest.raises(RtsError, match="already has a layer 'rts'"):  # GeoPackage layer names ignore case
        write_vector(gdf, project, layer="rts")
    write_vector(gdf, project, layer="rts", overwrite=True)
    assert gpd.list_layers(project)["name"].str.casefold().tolist() == ["rts"]
    (tmp_path / "p.gpkg-wal").write_bytes(b"unsaved pages")  # open in QGIS, edits not yet in the file
    with pytest.raises(RtsError, match="open in another program"):
        write_vector(gdf, project, layer="other")


def test_scale_options_leave_other_bands_to_their_own_metadata():
    from types import SimpleNamespace

    from rtscli.data.values import resolve

    info = SimpleNamespace(scales=(1e-4, 1e-4, 0.1), offsets=(0.0, 0.0, 0.0), dtype="uint16")
    conv = resolve(info, {"red": 1, "nir": 2, "dem": 3}, scale=2e-4, offset=-0.1)
    assert conv.scale == {"red": 2e-4, "nir": 2e-4, "dem": 0.1} and conv.offset == {"red": -0.1, "nir": -0.1,
                                                                                      "dem": 0.0}
    assert conv.replaced == "x * 0.0001"  # the reflectance bands' own scale, replaced (and logged)
    data = np.full((3, 2, 2), 1000, np.uint16)
    assert conv.apply(data, ["red", "nir", "dem"])[:, 0, 0] == pytest.approx([0.1, 0.1, 100.0])


def test_scenes_with_one_name_in_two_site_folders(tmp_path, rts):
    for k, site in enumerate(("peel", "banks")):
        write_tif(tmp_path / "in" / site / "2021-07-01.tif", np.full((4, 64, 64), 900, np.uint16), crs="EPSG:32608",
                  transform=Affine(3.0, 0.0, 100000.0 + 10000 * k, 0.0, -3.0, 500000.0), nodata=0)
    labels = [box(100030 + 10000 * k, 499850, 100090 + 10000 * k, 499910) for k in range(2)]
    gpd.GeoDataFrame(geometry=labels, crs=32608).to_file(tmp_path / "l.gpkg")
    r = rts("prepare", tmp_path / "in", "--labels", tmp_path / "l.gpkg", "-o", tmp_path / "ds", "--bands",
            "planetscope4", "--chip-size", 64, "--split", "1,0,0")
    assert r.code == 0, r.err
    import yaml

    m = yaml.safe_load((tmp_path / "ds" / "manifest.yaml").read_text())
    assert m["counts"]["total"]["train"] == {"images": 2, "instances": 2, "negatives": 0}


#: GDAL's and OGR's command-line programs: a pip-installed rts does not have them, so no message may send a user there
GDAL_PROGRAMS = r"\b(ogr2ogr|ogrinfo|gdalinfo|gdalwarp|gdal_translate|gdal_edit|gdal_retile|gdal_calc|gdal_merge" \
                r"|gdalbuildvrt|gdaladdo)\b"


def test_no_message_or_readme_line_suggests_a_gdal_program_rts_does_not_install():
    """Every fix rts prints is one the user can do with what rts installs (rasterio's rio, Python, QGIS)."""
    import re

    root = Path(__file__).resolve().parent.parent
    found = [f"{p.relative_to(root)}:{i}: {line.strip()}"
             for p in [root / "README.md", *sorted((root / "rtscli").rglob("*.py"))]
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             if re.search(GDAL_PROGRAMS, line) and not line.lstrip().startswith("#")]
    assert not found, "\n".join(found)


def test_the_fixes_rts_suggests_run_with_what_rts_installs(tmp_path):
    """The rio commands of the fixes work as written: a raster without CRS or nodata gets them."""
    import shutil
    import subprocess
    import sys

    from rtscli.errors import set_raster_crs, set_raster_nodata

    rio = shutil.which("rio", path=str(Path(sys.executable).parent))
    assert rio is not None, "rasterio's rio is installed with rts"
    path = tmp_path / "bare.tif"
    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint16", transform=T) as dst:
        dst.write(np.ones((1, 8, 8), np.uint16))
    for fix, value in ((set_raster_crs(path), "EPSG:32608"), (set_raster_nodata(path), "0")):
        cmd = fix.split("`")[1].replace("EPSG:XXXX", value).replace("VALUE", value)
        subprocess.run(cmd.split(), check=True, cwd=tmp_path, env={**os.environ, "PATH": str(Path(rio).parent)})
    with rasterio.open(path) as src:
        assert src.crs.to_epsg() == 32608 and src.nodata == 0
