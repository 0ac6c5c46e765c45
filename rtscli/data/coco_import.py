"""Existing COCO instance datasets as input of ``rts prepare`` (``--coco FILE``, or COCO JSON in the input folder).

What is read, per the COCO format (https://cocodataset.org/#format-data):

* ``images`` (``id``, ``file_name``, ``width``, ``height``), found under ``--images DIR``, the input folders,
  or beside the JSON (also ``images/`` beside or above it); any format GDAL reads. Georeferenced images keep
  their transform and CRS; images without georeference get a pixel grid (:attr:`RasterInfo.pixel_grid`).
* ``annotations`` of one category (``--category NAME``; by default the only one, or the one named ``rts``):
  polygons, RLE (compressed or not) and ``iscrowd`` regions, kept as crowd (pycocotools ignores them in AP;
  rts does not train on them). Masks are decoded with pycocotools, so they are the pixels any COCO tool sees.
* the split of each image from the JSON it is in: the file name (``*train*``, ``*val*``, ``*test*``) or
  ``--coco-split train=a.json,test=b.json``; without a val JSON, val is drawn from train by ``--split``.

An image kept whole keeps its annotations as they are (segmentation, area, bbox); an image larger than
``--chip-size`` is cut into chips and its annotations clipped to each. Annotations and pieces below
``--min-pixels`` (the pixels they decode to: :func:`rtscli.data.coco.too_small`, the rule of vector labels too)
are dropped and counted (crowd regions are kept whatever their size); unreadable
segmentations are counted and left out, with one warning naming a few (:class:`CocoReader`).
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from rtscli.data.inputs import Item, aux_for, grid_windows
from rtscli.data.options import PrepareOptions
from rtscli.errors import RtsError
from rtscli.io.paths import contained, safe_component
from rtscli.io.raster import RasterInfo, check_whole_read

log = logging.getLogger("rtscli")

#: words in a COCO file's name that say its split (tokens of letters: instances_val2017 -> "val")
SPLIT_WORDS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test", "testing": "test"}


@dataclass
class CocoImage:
    """One image of a COCO file, with its annotations of the chosen category."""

    json: Path
    split: str | None  # the split its file stands for; None: drawn by --split
    id: Any
    file_name: str
    width: int | None
    height: int | None
    site: str | None
    annotations: list[dict] = field(default_factory=list)
    source_id_prefix: str = ""  # "NAME.json#" when several files are read, so that ids stay unique
    scene: tuple[str, tuple] | None = None  # (raster, window) it was cut from, when its entry records them


def scene_of(entry: dict) -> tuple[str, tuple] | None:
    """The raster a COCO image was cut from and the window (col_off, row_off, width, height, pixels) it was cut at,
    when its entry records them as ``rts prepare`` (and so ``rts export-coco``) writes chips of a scene: a
    ``source`` text and a ``window`` list; else None. Chips of one scene at different windows overlap where their
    windows did: they are neither copies nor several dates. The text is only compared, never opened."""
    source, window = entry.get("source"), entry.get("window")
    if isinstance(source, str) and source and isinstance(window, list) and len(window) == 4:
        return source, tuple(window)
    return None


def split_of(path: Path) -> str | None:
    """The split a COCO file's name says (``instances_train2017.json`` -> train), else its folder's (Roboflow's
    ``valid/_annotations.coco.json`` -> val), or None."""
    found = {SPLIT_WORDS[t] for t in re.split(r"[^a-z]+", path.stem.lower()) if t in SPLIT_WORDS}
    if found:
        return found.pop() if len(found) == 1 else None
    return SPLIT_WORDS.get(path.parent.name.lower())  # the folder only when its whole name is a split


def parse_coco_split(text: str) -> dict[Path, str]:
    """``train=a.json,test=b.json`` -> {path: split} (``--coco-split``)."""
    out: dict[Path, str] = {}
    for part in text.split(","):
        name, sep, path = part.partition("=")
        split = SPLIT_WORDS.get(name.strip().lower())
        if not sep or split is None or not path.strip():
            raise RtsError(f"cannot read --coco-split {text!r}", fix="write SPLIT=FILE pairs, e.g. "
                           "--coco-split train=a.json,val=b.json,test=c.json")
        out[Path(path.strip())] = split
    return out


def splits_of(files: list[Path], split_map: dict[Path, str] | None) -> dict[Path, str | None]:
    """The split of each COCO file: ``--coco-split``'s (``split_map``), matched to the files by path, else by
    base name (``train=coco_rts_train.json``); without ``split_map``, the one its name says (:func:`split_of`).

    Raises:
        RtsError: ``split_map`` names a file that is not among ``files``, a base name that several of them have,
            or one file twice.
    """
    if split_map is None:
        return {p: split_of(p) for p in files}
    out: dict[Path, str | None] = {p: None for p in files}
    by_path = {p.resolve(): p for p in files}
    named: dict[Path, Path] = {}
    for given, split in split_map.items():
        hit = by_path.get(given.resolve())
        if hit is None:
            same = [p for p in files if p.name == given.name]
            if len(same) > 1:
                raise RtsError(f"--coco-split names {given.name}, which several COCO files are called "
                               f"({', '.join(str(p) for p in same[:3])})", path=given,
                               fix="give the file's path in --coco-split (e.g. train=path/to/"
                                   f"{given.name})")
            if not same:
                raise RtsError("--coco-split names a file that is not among the --coco files", path=given,
                               fix="give it with --coco too, or fix the name in --coco-split")
            hit = same[0]
        if hit in named:
            raise RtsError(f"--coco-split names this file twice ({named[hit]} and {given})", path=hit,
                           fix="give each COCO file one split")
        named[hit] = given
        out[hit] = split
    return out


def read_coco(path: Path) -> dict:
    """A COCO instances document, checked for the keys rts needs. Raises :class:`RtsError` naming the file."""
    if not path.is_file():
        raise RtsError("COCO file not found", path=path, fix="check --coco")
    try:
        doc = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise RtsError(f"not a JSON file ({str(exc)[:80]})", path=path,
                       fix="pass a COCO instances JSON (with images, annotations and categories)") from None
    missing = [k for k in ("images", "annotations") if not isinstance(doc, dict) or not isinstance(doc.get(k), list)]
    if missing:
        raise RtsError(f"not a COCO instances file (no {' and no '.join(missing)} list)", path=path,
                       fix="pass a COCO instances JSON (with images, annotations and categories)")
    for key, need in (("images", ("id", "file_name")), ("annotations", ("id", "image_id"))):
        for k, entry in enumerate(doc[key]):
            if not isinstance(entry, dict) or any(n not in entry for n in need):
                raise RtsError(f"{key}[{k}] lacks {' or '.join(need)}", path=path,
                               fix=f"every COCO {key[:-1]} needs {', '.join(need)}")
            bad = [n for n in need if n != "file_name" and isinstance(entry[n], (list, dict))]
            if bad:
                raise RtsError(f"{key}[{k}] has a {bad[0]} that is not a number or a text", path=path,
                               fix=f"give every COCO {key[:-1]} a whole-number {bad[0]}")
    _check_ids(doc, path)
    return doc


def _repeated(values: list[Any]) -> list[Any]:
    """The values that occur more than once, in first-seen order."""
    counts = Counter(values)
    return [v for v in dict.fromkeys(values) if counts[v] > 1]


def _few(values: list[Any], n: int = 5) -> str:
    """Up to ``n`` values, comma-separated, with how many more."""
    text = ", ".join(str(v) for v in values[:n])
    return text + (f" and {len(values) - n} more" if len(values) > n else "")


def _check_ids(doc: dict, path: Path) -> None:
    """Refuse what would put annotations on the wrong image without a word: an image id used by several images
    (two exports concatenated: ids 1, 2, 1, 2), an annotation id used twice, and annotations of image ids that
    the file does not list."""
    twice = _repeated([im["id"] for im in doc["images"]])
    if twice:
        names = [str(im["file_name"]) for im in doc["images"] if im["id"] == twice[0]]
        raise RtsError(f"image id(s) {_few(twice)} are used by several images (id {twice[0]}: {_few(names, 3)}), so "
                       "their annotations cannot be told apart", path=path,
                       fix="give every image its own id (two exports joined into one file? pass each with its "
                           "own --coco, or renumber one of them, its images and its annotations' image_id)")
    twice = _repeated([a["id"] for a in doc["annotations"]])
    if twice:
        raise RtsError(f"annotation id(s) {_few(twice)} are used more than once", path=path,
                       fix="give every annotation its own id (two exports joined into one file? pass each with "
                           "its own --coco)")
    listed = {im["id"] for im in doc["images"]}
    stray = [a for a in doc["annotations"] if a["image_id"] not in listed]
    if stray:
        pairs = [f"{a['id']} -> image {a['image_id']}" for a in stray]
        raise RtsError(f"{len(stray)} annotation(s) refer to image ids that the file does not list "
                       f"(annotation {_few(pairs, 3)})", path=path,
                       fix="add those images to the file's images list, or remove their annotations")


def is_coco(path: Path) -> bool:
    """Whether ``path`` is a JSON file that looks like COCO instances (a cheap look at its first 1 MB)."""
    if path.suffix.lower() != ".json" or not path.is_file():
        return False
    with open(path, "rb") as fh:
        head = fh.read(1 << 20).decode("utf-8", "ignore")
    return '"annotations"' in head and '"images"' in head


def find_coco_files(inputs: list[Path]) -> list[Path]:
    """COCO JSON files at the top of the input folders, in their ``annotations/``, or, when neither has any, one
    folder down (Roboflow: ``train/``, ``valid/``, ``test/`` each with its ``_annotations.coco.json``)."""
    out = []
    for inp in inputs:
        if inp.is_file() and is_coco(inp):
            out.append(inp)
        elif inp.is_dir():
            tops = [d for d in (inp, inp / "annotations") if d.is_dir()]
            found = [p for d in tops for p in sorted(d.glob("*.json")) if is_coco(p)]
            if not found:
                found = [p for d in sorted(inp.iterdir()) if d.is_dir() and not d.name.startswith(".")
                         for p in sorted(d.glob("*.json")) if is_coco(p)]
            out.extend(found)
    return out


def choose_category(docs: dict[Path, dict], name: str | None) -> tuple[str, dict[Path, set]]:
    """The category to train on and its id(s) in each file (ids may differ between files).

    ``name`` (``--category``) picks one by name (case-insensitive); without it the only category, the one
    named ``rts``, or the only one that has annotations (Roboflow lists a root category without any), said in a
    log line. Raises :class:`RtsError` listing the names when the choice is ambiguous or absent.
    """
    names: dict[str, str] = {}
    for doc in docs.values():
        for c in doc.get("categories") or []:
            names.setdefault(str(c.get("name", c.get("id"))).lower(), str(c.get("name", c.get("id"))))
    if name is not None:
        pick = name.lower()
        if pick not in names:
            have = ", ".join(names.values()) or "none"
            raise RtsError(f"no category {name!r} in the COCO file(s) (they have: {have})", path=next(iter(docs)),
                           fix="pass --category with one of those names")
    elif len(names) == 1:
        pick = next(iter(names))
    elif "rts" in names:
        pick = "rts"
    elif not names:  # no categories list: every annotation is a slump
        return "rts", {p: set() for p in docs}
    elif len(used := _used_categories(docs)) == 1:
        pick = used.pop()
        others = ", ".join(v for k, v in names.items() if k != pick)
        log.info("COCO category %r chosen: the only one with annotations (the file(s) also list %s; --category "
                 "NAME picks another)", names[pick], others)
    else:
        raise RtsError(f"the COCO file(s) have {len(names)} categories ({', '.join(names.values())}) and none is "
                       "named rts", path=next(iter(docs)), fix="pass --category NAME (the thaw slumps' category)")
    ids = {p: {c["id"] for c in doc.get("categories") or [] if str(c.get("name", c.get("id"))).lower() == pick}
           for p, doc in docs.items()}
    for p, doc in docs.items():
        if doc.get("categories") and not ids[p]:  # its annotations would all be left out without a word
            theirs = ", ".join(str(c.get("name", c.get("id"))) for c in doc["categories"])
            raise RtsError(f"this COCO file has no category {names[pick]!r} (it has: {theirs})", path=p,
                           fix="pass --category with the slumps' category, or give every file the same categories")
    return names[pick], ids


def _used_categories(docs: dict[Path, dict]) -> set[str]:
    """The names (lower case) of the categories that annotations of ``docs`` use."""
    used = set()
    for doc in docs.values():
        by_id = {c.get("id"): str(c.get("name", c.get("id"))).lower() for c in doc.get("categories") or []}
        used |= {by_id[a.get("category_id")] for a in doc["annotations"] if a.get("category_id") in by_id}
    return used


def locate(file_name: str, roots: list[Path]) -> Path | None:
    """The image ``file_name`` under one of ``roots``: as given, when that stays inside the root (symlinks
    resolved), then by its base name (Label Studio's ``..\\..\\label-studio\\...\\upload\\4\\x.png`` and
    ``/data/upload/1/abc-x.jpg``; Windows separators too). A path that leads outside every root is not read."""
    rel = Path(file_name.replace("\\", "/"))
    for root in roots:
        for cand in (rel, Path(rel.name)):
            if rel.name and contained(root, cand) is not None and (root / cand).is_file():
                return root / cand
    return None


def _outside(file_name: str, roots: list[Path]) -> tuple[Path, Path] | None:
    """``(root, file)`` when ``file_name`` points from one of ``roots`` to a file that exists but lies outside
    that root (``..``, an absolute path, a symlink out), else None."""
    rel = Path(file_name.replace("\\", "/"))
    for root in roots:
        for cand in (rel, Path(rel.name)):
            if rel.name and (root / cand).is_file() and contained(root, cand) is None:
                return root, root / cand
    return None


def image_roots(coco_file: Path, images: Path | None, inputs: list[Path]) -> list[Path]:
    """Where the images of ``coco_file`` may be: ``--images``, the input folders, the JSON's folder and its
    ``images/``, and for a JSON in ``annotations/`` (COCO's own layout) the folder above and its ``images/``."""
    roots = ([images] if images else []) + [i for i in inputs if i.is_dir()] + \
        [coco_file.parent, coco_file.parent / "images"]
    if coco_file.parent.name.lower() == "annotations":
        roots += [coco_file.parent.parent, coco_file.parent.parent / "images"]
    return roots


def read_sources(files: list[Path], *, split_map: dict[Path, str] | None, images: Path | None,
                 inputs: list[Path], category: str | None, site: str | None, crowd_as_instances: bool = False
                 ) -> tuple[list[tuple[Path, Path]], dict[Path, CocoImage], dict]:
    """The images of the COCO files: ``([(image path, root)], {resolved image path: CocoImage}, meta)``.

    An image's ``file_name`` is looked for under :func:`image_roots` and must stay inside the folder it is found
    in (:func:`locate`); an entry's ``site`` becomes one safe path component. Crowd annotations (``iscrowd``)
    stay crowd regions, or become instances with ``crowd_as_instances`` (CVAT exports every brush mask as crowd).

    Raises :class:`RtsError` for unreadable files, a split that cannot be told from a file's name, repeated image
    or annotation ids, annotations of unlisted images, images that cannot be found or that lie outside the
    folders they may come from, a site that is a path, and an image in two files.
    """
    splits = splits_of(files, split_map)
    for p in files:
        if splits[p] is None and (len(files) > 1 or split_map is not None):
            raise RtsError("cannot tell the split of this COCO file from its name", path=p,
                           fix="name it *train*, *val* or *test*, or pass --coco-split train=a.json,test=b.json")
    docs = {p: read_coco(p) for p in files}
    cat_name, cat_ids = choose_category(docs, category)
    seen: dict[Path, Path] = {}
    records: dict[Path, CocoImage] = {}
    rasters: list[tuple[Path, Path]] = []
    counts: Counter = Counter()
    missing: list[str] = []
    per_file: dict[str, dict] = {}
    for p, doc in docs.items():
        roots = image_roots(p, images, inputs)
        prefix = f"{p.name}#" if len(files) > 1 else ""
        by_id: dict[Any, CocoImage] = {}
        for im in doc["images"]:
            path = locate(str(im["file_name"]), roots)
            if path is None:
                out = _outside(str(im["file_name"]), roots)
                if out is not None:
                    raise RtsError(f"image {im['id']}: its file_name {im['file_name']!r} leads outside {out[0]}; "
                                   "it is not read", path=p,
                                   fix=f"put {out[1].name} itself (not a link) in the folder given with --images "
                                       "(images are found there by their base name), or fix its file_name")
                missing.append(str(im["file_name"]))
                continue
            key = path.resolve()
            if key in seen and seen[key] == p:
                raise RtsError(f"image {im['file_name']} is listed twice in this file", path=p,
                               fix="keep one entry per image (merge their annotations under one image id)")
            if key in seen:
                raise RtsError(f"image {im['file_name']} is listed in two files ({seen[key]} and {p})", path=p,
                               fix="list every image in one COCO file only (one split)")
            seen[key] = p
            own = im.get("site")
            if own is not None and not site:  # a name that becomes a folder of the dataset: chips/<site>/
                own = safe_component(str(own), f"image {im['id']}: its site", path=p)
            rec = CocoImage(p, splits[p], im["id"], str(im["file_name"]), im.get("width"), im.get("height"),
                            site or own, source_id_prefix=prefix, scene=scene_of(im))
            by_id[im["id"]] = rec
            records[key] = rec
            rasters.append((path, path.parent))
        wanted = cat_ids[p]
        n_file: Counter[str] = Counter()
        for ann in doc["annotations"]:
            if wanted and ann.get("category_id") not in wanted:
                counts["other_categories_ignored"] += 1
                continue
            owner = by_id.get(ann["image_id"])
            if owner is None:  # its image was not found: refused below
                continue
            seg = ann.get("segmentation")
            if not seg:
                counts["without_segmentation"] += 1  # a box only: rts learns masks
                continue
            if ann.get("iscrowd") and crowd_as_instances:
                ann = {**ann, "iscrowd": 0}
                counts["crowd_as_instances"] += 1
            elif ann.get("iscrowd"):
                counts["crowd_annotations"] += 1
            owner.annotations.append(ann)
            n_file["crowd" if ann.get("iscrowd") else "annotations"] += 1
        per_file[str(p)] = {"split": splits[p] or "drawn by --split", "images": len(by_id), **n_file}
    if missing:
        raise RtsError(f"{len(missing)} image(s) of the COCO file(s) not found, e.g. {missing[0]}",
                       path=images or files[0].parent,
                       fix="pass the folder that holds them with --images DIR")
    if not records:
        raise RtsError("the COCO file(s) list no images", path=files[0], fix="check the COCO file")
    if counts["without_segmentation"]:
        log.warning("%d annotation(s) have no segmentation (boxes only) and were left out: rts learns instance "
                    "masks", counts["without_segmentation"])
    if counts["other_categories_ignored"]:
        log.info("%d annotation(s) of other categories than %r left out", counts["other_categories_ignored"],
                 cat_name)
    if counts["crowd_annotations"]:
        log.warning("%d annotation(s) are crowd regions (iscrowd=1): rts does not train on them and AP ignores "
                    "them, so if they are the images' slumps (CVAT exports every brush mask as crowd) they count "
                    "as background -- pass --crowd-as-instances to train on them as slumps",
                    counts["crowd_annotations"])
    if counts["crowd_as_instances"]:
        log.info("%d crowd annotation(s) taken as slump instances (--crowd-as-instances)",
                 counts["crowd_as_instances"])
    meta = {"files": per_file, "category": cat_name, **{k: int(v) for k, v in counts.items()}}
    return rasters, records, meta


def coco_items(opts: PrepareOptions, infos: list[tuple[RasterInfo, Path]], records: dict[Path, CocoImage],
               aux_paths: dict[str, Path]) -> list[Item]:
    """Items of the COCO images: whole, or chip windows of ``opts.chip_size`` for larger ones.

    Args:
        opts: the run's options (``chip_size``, ``overlap``, ``assume_crs``).
        infos: ``(image, the input root it was found under)`` per COCO image.
        records: ``{resolved image path: its COCO entry}`` (:func:`read_sources`).
        aux_paths: ``{aux name: file or folder}`` (``--aux``).

    Returns:
        The items, in image order; a larger image's chip windows row by row.

    Raises:
        RtsError: an image's size differs from its COCO entry (its annotations would be misplaced), an image kept
            whole is larger than the whole-read budget (:func:`rtscli.io.raster.check_whole_read`), or an
            ``--aux`` raster is missing or off the image's grid.
    """
    items: list[Item] = []
    aux_cache: dict = {}
    keys: set[str] = set()
    for info, _ in infos:
        rec = records[info.path.resolve()]
        # before anything is read: the COCO entry and the file's own header must agree on the size
        if (rec.width, rec.height) != (None, None) and (rec.width, rec.height) != (info.width, info.height):
            raise RtsError(f"image {rec.id}: the file's header says {info.width} x {info.height} px but its COCO "
                           f"entry in {rec.json.name} says {rec.width} x {rec.height}", path=info.path,
                           fix=f"fix width/height of image {rec.id} in {rec.json.name}, or give the image it was "
                               "labelled on")
        key = _unique_key(rec, keys)
        site = rec.site or "default"  # --site, else the entry's own "site" (datasets rts exported)
        aux = aux_for(info, aux_paths, aux_cache, opts.assume_crs)
        names = (rec.file_name, info.path.name, info.path.stem, key)
        cs = opts.chip_size
        if cs is None or (info.width <= cs and info.height <= cs):
            check_whole_read(info.path, info.width, info.height, info.count + len(aux),
                             f"image {rec.id} of {rec.json.name}")  # read whole: refused before, if too large
            items.append(Item(key, site, info, aux=aux, source_names=names, coco=rec))
            continue
        for c, r in grid_windows(info, opts):
            items.append(Item(f"{key}_r{r:06d}_c{c:06d}", site, info, window=(c, r, cs, cs), aux=aux,
                              source_names=names, coco=rec))
    return items


def _unique_key(rec: CocoImage, keys: set[str]) -> str:
    """A chip name unique in the dataset: the image's name, else its path, else with its COCO file's folder and
    name (Roboflow repeats image names across train/valid/test, each with an ``_annotations.coco.json``)."""
    def clean(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")

    fn = Path(rec.file_name.replace("\\", "/"))
    stem = clean(fn.stem).strip(".") or "image"
    for key in (stem, clean(str(fn.with_suffix(""))), clean(f"{rec.json.parent.name}_{rec.json.stem}_{stem}")):
        if key not in keys:
            keys.add(key)
            return key
    k = 2
    while f"{stem}_{k}" in keys:
        k += 1
    keys.add(f"{stem}_{k}")
    return f"{stem}_{k}"


