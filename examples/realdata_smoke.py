"""Real-data smoke test: tokenizers and a fusion model on the five real TerraMind places (CPU, a few minutes).

The five places of ``shared/realdata/terramind`` (TerraMesh validation tiles: Sentinel-2 L2A, Sentinel-1 RTC, DEM
and land cover, 224 x 224 px at 10 m each, one grid per place) are served as a static catalog and built into a
5-sample cube on the default TerraMesh grid: each tile fills the top-left 224 x 224 px of its sample's 264 px
patch, the rest is marked not valid, so every metric below counts real pixels only. The cube's modalities take the
names, bands, classes and resolution of the tokenizers, so trained tokenizers and a fusion model apply unchanged.
Two conversions make the real files match the demo's collections (written under ``--work``, originals untouched):

- Sentinel-1 RTC: TerraMesh stores dB; the demo's ``sentinel-1-rtc`` stores linear power (the tokenizer takes
  ``10 log10``), so the tiles are converted with ``10 ** (dB / 10)``.
- Land cover: TerraMesh stores the Esri / Impact Observatory classes as contiguous indices 0..9; the demo's
  ``io-lulc-annual-v02`` uses Esri's codes, so :data:`LULC_INDEX_TO_ESRI` maps them (index 7, snow/ice, is the
  whole Hudson Bay tile in January; it would be "built area" if read as an Esri code).

Then, per modality, the tokenizer's reconstruction metrics on the real pixels (``evaluate_tokenizer``: PSNR, SSIM,
MAE; accuracy and mIoU for land cover) and the fusion model's land cover generated from Sentinel-2 against the
real land cover (pixel accuracy, mIoU), written as a markdown table with the command and date.

Run::

    python examples/realdata_smoke.py [--realdata ../shared/realdata] [--work scratch/realdata]
        [--tokenizers DIR [DIR ...]] [--fusion DIR]   # trained ones; otherwise tiny ones are trained here
        [--demo-cube demo.zarr] [--tokenizer-steps 30] [--fusion-steps 100] [--generation-steps 4]

Without ``--tokenizers``/``--fusion`` it trains tiny ones for a few steps on the 32-sample demo cube (built in
``--work`` unless ``--demo-cube`` names one), so it runs on its own. Five places cannot rank methods: see
docs/experiments/realdata.md.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.warp
import shapely
import torch
import xarray as xr
from shapely.geometry import mapping

from eo_models.convert.terramind import table

#: The five TerraMind places and the month of their scenes (shared/realdata/README.md); the day is nominal.
PLACES = {"282D_485L_3_3": "2021-07-15", "38D_378R_2_3": "2023-06-15", "433D_629L_3_1": "2020-04-15",
          "609U_541L_3_0": "2020-01-15", "637U_59R_1_3": "2017-10-15"}

#: TerraMesh land cover index -> Esri / Impact Observatory class code (0 is no data in both): TerraMind's LULC
#: channel order, the same table the TerraMind LULC tokenizer's conversion uses (eo_models/convert/terramind.yaml).
LULC_INDEX_TO_ESRI = dict(enumerate(table()["tokenizers"]["LULC"]["classes"]))

#: The demo's modality names -> (TerraMind folder, how the file is converted, temporal, selection rule).
TERRAMIND = {
    "s2l2a": ("S2L2A", None, "dynamic", {"type": "least_cloudy"}),
    "s1rtc": ("S1RTC", "db_to_linear", "dynamic", {"type": "nearest", "tolerance_days": 1}),
    "dem": ("DEM", None, "static", {"type": "static"}),
    "lulc": ("LULC", "lulc_to_esri", "static", {"type": "static"}),
}
SOURCE, TARGET = "s2l2a", "lulc"  # fusion generation: land cover from Sentinel-2
TILE_PX = 224  # each TerraMind tile: 224 x 224 px at 10 m, the top-left corner of its sample's patch
ROOT = Path(__file__).resolve().parents[1]


def fail(message: str) -> None:
    """A user error: one line on stderr, exit code 2."""
    print(message, file=sys.stderr)
    raise SystemExit(2)


def default_realdata() -> Path:
    return Path(os.environ.get("EO_REALDATA", ROOT.parent / "shared" / "realdata"))


# -- the real cube -----------------------------------------------------------------------------------------------
def convert(src_path: Path, how: str | None, out_dir: Path) -> Path:
    """The tile as the demo's collection stores it: unchanged, dB -> linear power, or land cover index -> Esri."""
    if how is None:
        return src_path
    out = out_dir / src_path.parent.name / src_path.name
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(src_path) as src:
        data, profile = src.read(), src.profile
    if how == "db_to_linear":
        data = (10.0 ** (data.astype(np.float64) / 10.0)).astype(np.float32)
        profile.update(dtype="float32")
    elif how == "lulc_to_esri":
        found = set(np.unique(data).tolist()) - set(LULC_INDEX_TO_ESRI)
        if found:
            fail(f"error: {src_path} has land cover values {sorted(found)}; expected TerraMesh indices 0..9")
        data = np.vectorize(LULC_INDEX_TO_ESRI.get, otypes=[np.uint8])(data)
    tmp = out.with_suffix(".tmp.tif")
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data)
    tmp.replace(out)
    return out


def write_catalog(realdata: Path, names: list[str], out_dir: Path) -> Path:
    """A static catalog (GeoJSON FeatureCollection of STAC items) over the five places' tiles of ``names``."""
    features = []
    for sid, date in PLACES.items():
        for m in names:
            folder, how, _, _ = TERRAMIND[m]
            path = convert(realdata / "terramind" / folder / f"{sid}.tif", how, out_dir / "tiles")
            with rasterio.open(path) as src:
                b = src.bounds
                lon, lat = rasterio.warp.transform(src.crs, "EPSG:4326", [b.left, b.right, b.right, b.left],
                                                   [b.bottom, b.bottom, b.top, b.top])
            geom = shapely.Polygon(zip(lon, lat, strict=True))
            features.append({
                "type": "Feature", "stac_version": "1.0.0", "id": f"{folder}_{sid}", "collection": f"terramind-{m}",
                "geometry": mapping(geom), "bbox": list(geom.bounds), "properties": {"datetime": f"{date}T10:00:00Z"},
                "links": [],
                "assets": {"data": {"href": str(path.resolve()), "type": "image/tiff; application=geotiff"}},
            })
    out = out_dir / "catalog.json"
    out.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return out


def collection_for(m: str, modality: Any) -> dict[str, Any]:
    """A collection spec for the real tiles of ``m`` from what its tokenizer was trained on (bands, kind, classes,
    transform, scale), so the cube's modality matches the tokenizer."""
    _, _, temporal, _ = TERRAMIND[m]
    spec: dict[str, Any] = {
        "name": f"terramind-{m}", "kind": modality.kind, "temporal": temporal,
        "units": modality.units or "as the demo", "licence": "CC-BY-SA-4.0 (TerraMesh)", "cloud_cover_property": None,
        "bands": [{"name": b, "asset": "data", "index": i + 1} for i, b in enumerate(modality.bands)],
    }
    if modality.kind == "categorical":
        spec.update(dtype="uint8", nodata=0,
                    classes={int(c): n for c, n in zip(modality.classes, modality.class_names, strict=True)})
    else:
        spec.update(dtype="float32", nodata=-32768, scale=modality.scale, offset=modality.offset)
        if modality.transform != "none":
            spec["transform"] = modality.transform
    return spec


def build_real_cube(realdata: Path, modalities: dict[str, Any], work: Path) -> Path:
    """The 5-sample cube of the real places with ``modalities`` ({name: ModalityConfig}) in ``work/real.zarr``."""
    from eo_dataset import Grid, build, parse_recipe

    unknown = sorted(set(modalities) - set(TERRAMIND))
    if unknown:
        fail(f"error: no TerraMind tiles for modalities {unknown}; this smoke test knows {sorted(TERRAMIND)}")
    catalog = write_catalog(realdata, sorted(modalities), work)
    recipe = parse_recipe({
        "name": "terramind-realdata",
        "time": {"anchor": SOURCE, "start": dt.date(2017, 1, 1), "end": dt.date(2023, 12, 31)},
        "sources": {"tm": {"type": "static_catalog", "href": str(catalog)}},
        "modalities": {m: {"collection": collection_for(m, cfg), "source": "tm", "resolution_m": cfg.resolution_m,
                           "rule": TERRAMIND[m][3]} for m, cfg in modalities.items()},
        "build": {"shard_samples": 5},
    })
    grid = Grid(recipe.grid.spec())
    out = work / "real.zarr"
    build(recipe, [grid.sample(sid) for sid in PLACES], out, scheduler="sync", overwrite=True)
    return out


# -- tiny models on the demo cube (when none are given) ----------------------------------------------------------
def demo_cube(work: Path) -> Path:
    from eo_dataset import Grid, build, load_recipe
    from eo_dataset.demo.world import demo_sources, make_world

    world = make_world(work / "demo-world")
    recipe = load_recipe("demo").with_sources(demo_sources(world))
    grid = Grid(recipe.grid.spec())
    with open(world.parent / "samples.csv") as f:
        samples = [grid.sample(r["sample_id"]) for r in csv.DictReader(f)]
    out = work / "demo.zarr"
    build(recipe, samples, out, scheduler="sync")
    return out


def train_tiny(cube: Path, work: Path, tokenizer_steps: int, fusion_steps: int) -> tuple[list[Path], Path]:
    from eo_models.fusion import train_fusion
    from eo_models.tokens.store import tokenize_cube
    from eo_models.training.tokenizer import train_tokenizer

    toks = {}
    for m in TERRAMIND:
        ds = xr.open_zarr(cube)
        crop = 48 if float(ds[m].attrs.get("resolution_m", 10)) != 10 else 64  # 30 m: a multiple of 24 (tiny config)
        toks[m] = train_tokenizer(cube, m, work / "tokenizers" / m, config="tiny", steps=tokenizer_steps,
                                  progress=False, crop=crop).out
    tokens = tokenize_cube(cube, [toks[SOURCE], toks[TARGET]], work / "tokens.zarr", progress=False)
    fusion = train_fusion(work / "fusion", tokens=tokens, config="tiny", steps=fusion_steps, progress=False).out
    return list(toks.values()), Path(fusion)


def inside_tile(tok: Any, patch_px: int) -> Any:
    """``tok`` evaluated on the largest centre crop (in 10 m px, as ``train.crop``) that lies inside the real tile
    (the top-left ``TILE_PX`` of a ``patch_px`` patch) and that the encoder takes (whole tokens, whole pixels)."""
    cfg = tok.cfg
    step = cfg.encoder.patch * max(1, round(cfg.modality.resolution_m / 10))
    crop = (2 * TILE_PX - patch_px) // step * step  # a centre crop c ends at (patch_px + c) / 2 <= TILE_PX
    tok.cfg = cfg.with_train(crop=crop)
    return tok


# -- metrics -----------------------------------------------------------------------------------------------------
def generation_scores(fusion: Path, cube: Path, work: Path, steps: int) -> dict[str, Any]:
    """Land cover generated from Sentinel-2 against the real land cover: pixel accuracy, mIoU, per class IoU."""
    from eo_models.evaluation.evaluate import confusion_scores
    from eo_models.fusion import Schedule, generate_cube

    gen = generate_cube(fusion, cube, work / "generated.zarr", source=SOURCE, target=TARGET,
                        schedule=Schedule(steps=steps), progress=False)
    g, c = xr.open_zarr(gen), xr.open_zarr(cube)
    classes = np.array(sorted(int(k) for k in c[TARGET].attrs["classes"]))
    names = [c[TARGET].attrs["classes"][str(k)] for k in classes]
    off, size = g[TARGET].attrs["crop_offset_px"], g[TARGET].attrs["crop_px"]
    inside = (slice(None), slice(off[0], off[0] + size), slice(off[1], off[1] + size))
    have = g[f"{TARGET}_available"].values & c[f"{TARGET}_available"].values & c[f"{SOURCE}_available"].values
    pred = g[TARGET].values[have][:, 0][inside]
    true = c[TARGET].values[have][:, 0][inside]
    valid = c[f"{TARGET}_valid"].values[have][inside]
    p, t = np.searchsorted(classes, pred[valid]), np.searchsorted(classes, true[valid])
    ok = (p < len(classes)) & (t < len(classes))
    ok[ok] &= (classes[p[ok]] == pred[valid][ok]) & (classes[t[ok]] == true[valid][ok])
    if not ok.all():
        fail(f"error: generated or real land cover has codes outside the class table {classes.tolist()}")
    confmat = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(confmat, (t, p), 1)
    s = confusion_scores(torch.from_numpy(confmat))
    present = [names[i] for i in np.flatnonzero(confmat.sum(1))]
    return {"samples": int(have.sum()), "pixels": s["pixels"], "accuracy": s["accuracy"], "miou": s["miou"],
            "iou": {n: v for n, v in zip(names, s["iou"], strict=True) if v is not None},
            "classes_present": present}


def fmt(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def table(recon: dict[str, dict[str, Any]], gen: dict[str, Any], command: str, date: str) -> str:
    """The markdown report: one row per tokenizer (reconstruction) and one for generation."""
    rows = ["| modality | task | samples | real px scored | PSNR (dB) | SSIM | MAE | accuracy | mIoU |",
            "|---|---|---|---|---|---|---|---|---|"]
    for m, r in recon.items():
        px = round(r["samples"] * r["crop_px"] ** 2 * r["valid_fraction"])
        if r["kind"] == "categorical":
            cells = ["", "", "", fmt(r["accuracy"]), fmt(r["miou"])]
        else:
            units = r["mae_units"].split(" (")[0]
            cells = [fmt(r["psnr_mean"], 2), fmt(r["ssim_mean"]), f"{fmt(r['mae_mean'], 4)} {units}", "", ""]
        rows.append("| " + " | ".join([m, "tokenizer reconstruction", str(r["samples"]), str(px), *cells]) + " |")
    cells = [f"{SOURCE} -> {TARGET}", "fusion generation", str(gen["samples"]), str(gen["pixels"]), "", "", "",
             fmt(gen["accuracy"]), fmt(gen["miou"])]
    rows.append("| " + " | ".join(cells) + " |")
    return "\n".join([
        f"Command: `{command}`  ", f"Date: {date}", "", *rows, "",
        "Reconstruction: the largest centre crop of each sample that lies inside the real tile and that the "
        "tokenizer takes, continuous metrics averaged over bands. Generation: every real pixel of the generated "
        f"crop. Classes in the real land cover: {', '.join(gen['classes_present'])}.", ""])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--realdata", type=Path, default=default_realdata(), help="the shared/realdata folder")
    p.add_argument("--work", type=Path, default=Path("scratch/realdata"), help="everything lands here")
    p.add_argument("--tokenizers", type=Path, nargs="+", help="trained tokenizer folders (default: train tiny ones)")
    p.add_argument("--fusion", type=Path, help="a trained fusion model folder (S2 -> land cover; default: tiny)")
    p.add_argument("--demo-cube", type=Path, help="demo cube to train tiny models on (default: built in --work)")
    p.add_argument("--tokenizer-steps", type=int, default=30)
    p.add_argument("--fusion-steps", type=int, default=100)
    p.add_argument("--generation-steps", type=int, default=4, help="MaskGIT steps for land cover")
    args = p.parse_args()
    if not (args.realdata / "terramind").is_dir():
        fail(f"error: no TerraMind places in {args.realdata}/terramind; pass --realdata (the shared/realdata "
                 "folder) or set EO_REALDATA")
    if (args.tokenizers is None) != (args.fusion is None):
        fail("error: give both --tokenizers and --fusion (trained ones), or neither (tiny ones are trained)")
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "examples/realdata_smoke.py", *sys.argv[1:]])
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")

    from eo_models.evaluation.evaluate import evaluate_tokenizer, load_tokenizer

    tokenizers, fusion = args.tokenizers, args.fusion
    if tokenizers is None:
        cube = args.demo_cube or demo_cube(work)
        tokenizers, fusion = train_tiny(cube, work, args.tokenizer_steps, args.fusion_steps)
        print(f"trained tiny tokenizers and a fusion model on {cube}")
    configs = {}
    for path in tokenizers:
        tok = load_tokenizer(path)
        configs[tok.cfg.modality.name] = (tok, tok.cfg.modality)
    for need in (SOURCE, TARGET):
        if need not in configs:
            fail(f"error: no {need} tokenizer among --tokenizers; S2 -> land cover generation needs both")
    real = build_real_cube(args.realdata, {m: cfg for m, (_, cfg) in configs.items()}, work)
    print(f"real cube: {real} ({len(PLACES)} samples, modalities {sorted(configs)})")

    patch_px = xr.open_zarr(real)[SOURCE].shape[-1]  # 10 m pixels per sample side
    recon = {m: evaluate_tokenizer(inside_tile(tok, patch_px), real, batch_size=len(PLACES), workers=0)
             for m, (tok, _) in configs.items()}
    gen = generation_scores(fusion, real, work, args.generation_steps)
    md = table(recon, gen, command, date)
    (work / "realdata.md").write_text(md)
    (work / "realdata.json").write_text(json.dumps({"command": command, "date": date, "reconstruction": recon,
                                                    "generation": gen}, indent=1))
    print(md)
    print(f"written: {work / 'realdata.md'}, {work / 'realdata.json'}")


if __name__ == "__main__":
    main()
