#!/usr/bin/env bash
# The packages benchmarks/gpu_check.py needs on a lent GPU machine, downloaded here into wheels/ (ignored by git).
#
#     bash benchmarks/gpu_wheels.sh [--xz] [DIR]
#
# That machine has Python 3.12 (x86-64, manylinux) with torch, torchvision, timm, lightning, opencv, numpy, pandas,
# pyarrow, matplotlib, safetensors, pyyaml, typer, rich, filelock, click, attrs, certifi, pyparsing and pytest, and
# no network: rts's other dependencies travel as wheels, with the working tree (64 MiB in all). rts itself is not
# a wheel: the working tree travels anyway and runs with PYTHONPATH=$PWD. rasterio and pyogrio each carry their own
# GDAL and PROJ (their newest wheels are 36 and 33 MB: too large together), so the versions are pinned to the
# smallest that work with numpy 2 (22 and 24 MB): 56 MiB of wheels. --xz unpacks them into one DIR/site.tar.xz
# instead (41 MiB, two minutes here; unpacked there with tar in seconds), for when the working tree grows or a
# dataset must travel too. The script prints the total and fails when what would travel passes 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
xz=0
if [ "${1:-}" = "--xz" ]; then xz=1; shift; fi
dir=${1:-wheels}
py=${PYTHON:-python3}
rm -rf "$dir"
mkdir -p "$dir"
"$py" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$dir" \
    rasterio==1.4.3 pyogrio==0.10.0 pyproj==3.7.2 shapely==2.2.0 geopandas==1.2.0 pycocotools==2.0.11 \
    affine==3.0.1 cligj==0.7.2 click-plugins==1.1.1.2
if [ $xz = 1 ]; then
    for w in "$dir"/*.whl; do "$py" -m zipfile -e "$w" "$dir/site"; done
    tar -cJf "$dir/site.tar.xz" -C "$dir" site
    rm -rf "$dir/site" "$dir"/*.whl
fi
carried=$(du -cb "$dir"/* | tail -1 | cut -f1)
# what else travels: tracked files and untracked ones git does not ignore
tree=$( { git ls-files -z; git ls-files -z --others --exclude-standard; } | xargs -0 -r du -cb 2>/dev/null \
        | awk '$2 == "total" {s += $1} END {print s + 0}')
limit=$((64 * 1024 * 1024))
ls -l "$dir"
awk -v c="$carried" -v t="$tree" 'BEGIN {printf "%s %.1f MiB + working tree %.1f MiB = %.1f MiB of 64 MiB\n",
    "carried", c / 1048576, t / 1048576, (c + t) / 1048576}'
if [ $((carried + tree)) -gt $limit ]; then
    echo "too large to carry: try --xz (benchmarks/README.md)" >&2
    exit 1
fi
