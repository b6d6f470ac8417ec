"""Stores aligned with a cube (generated modalities, embeddings): layout and alignment with the cube, reading with
xr.open_zarr / CubeDataset / eo-dataset info, resume after a kill, refusals."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from eo_dataset.cli.main import main as eo_dataset_main
from eo_dataset.cube.manifest import block_reports, done_blocks, read_manifest
from eo_dataset.errors import OutputError
from eo_dataset.outputs import foreign_files, zarr_owned
from eo_dataset.torch import CubeDataset
from eo_models.cube import NotACubeError, cube_meta
from eo_models.errors import ConfigError
from eo_models.fusion import aligned
from eo_models.fusion.aligned import (
    AlignedStore,
    GeneratedFrom,
    VarSpec,
    caption_variables,
    embedding_variables,
    generated_variables,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FROM = GeneratedFrom("org/fusion-tiny", "ab12", ("s2l2a", "s1rtc"), {"type": "maskgit", "steps": 8})
IDENTITY = {"model": "org/fusion-tiny", "digest": "ab12", "to": ["lulc", "landsat", "caption"]}


@pytest.fixture(scope="module")
def cube(demo_cube: Path) -> xr.Dataset:
    return xr.open_zarr(demo_cube).load()


@pytest.fixture(scope="module")
def gen_vars(demo_cube: Path, cube: xr.Dataset) -> dict[str, VarSpec]:
    """lulc on the centre 256 px (a patch-16 tokenizer at 10 m), landsat on the whole sample, captions."""
    meta = cube_meta(cube, demo_cube)
    return {**generated_variables(meta.modalities["lulc"], cube["lulc"].dtype, meta, generated_from=FROM, crop_px=256),
            **generated_variables(meta.modalities["landsat"], cube["landsat"].dtype, meta, generated_from=FROM),
            **caption_variables(FROM)}


def gen_block(cube: xr.Dataset, rows: slice) -> dict[str, np.ndarray]:
    """What a generator would write for a block: the cube's own lulc (its centre 256 px) and landsat, where the
    cube has them, and a caption per sample."""
    lulc_av, ls_av = cube["lulc_available"].values[rows], cube["landsat_available"].values[rows]
    lulc = cube["lulc"].values[rows][..., 4:260, 4:260].copy()
    lulc_valid = cube["lulc_valid"].values[rows][..., 4:260, 4:260] & lulc_av[:, None, None]
    lulc[~lulc_av] = 0
    return {"lulc": lulc, "lulc_valid": lulc_valid, "lulc_available": lulc_av,
            "landsat": cube["landsat"].values[rows], "landsat_valid": cube["landsat_valid"].values[rows],
            "landsat_available": ls_av,
            "caption": np.array([f"generated for {s}" for s in cube["sample_id"].values[rows]])}


def run(out: Path, demo_cube: Path, variables: dict[str, VarSpec], block_fn: Callable[[slice], dict[str, np.ndarray]],
        *, kind: str = "generated", block: int = 8, identity: dict | None = None) -> tuple[AlignedStore, list[int]]:
    """A writer as eo-models generate/embed runs it: every block left to do, then finish; returns the blocks done."""
    store = AlignedStore.create_or_resume(out, demo_cube, kind=kind, variables=variables,
                                          identity=IDENTITY if identity is None else identity,
                                          attrs={"written_by": "test"}, block=block)
    done = []
    for b in store.todo():
        rows = store.block_samples(b)
        store.write(b, block_fn(rows), entry={"generated": rows.stop - rows.start})
        done.append(b)
    store.finish()
    return store, done


@pytest.fixture(scope="module")
def generated(demo_cube: Path, cube: xr.Dataset, gen_vars: dict[str, VarSpec],
              tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gen") / "gen.zarr"
    store, done = run(out, demo_cube, gen_vars, lambda rows: gen_block(cube, rows))
    assert done == [0, 1, 2, 3] and store.complete
    return out


def same_store(a: Path, b: Path) -> None:
    da, db = xr.open_zarr(a), xr.open_zarr(b)
    assert set(da.variables) == set(db.variables)
    for name in da.variables:
        np.testing.assert_array_equal(da[name].values, db[name].values, err_msg=name)
        assert da[name].attrs == db[name].attrs, name
    assert {k: v for k, v in da.attrs.items() if k != "cube"} == {k: v for k, v in db.attrs.items() if k != "cube"}


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and mtime, to show a refused run left it untouched."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file()}


# -- generated modalities --------------------------------------------------------------------------------------------
def test_generated_layout_matches_the_cube(generated: Path, cube: xr.Dataset, demo_cube: Path) -> None:
    ds = xr.open_zarr(generated, consolidated=True)  # a finished store has consolidated metadata
    assert foreign_files(generated, zarr_owned(["_build"])) == []
    assert ds.sizes["sample"] == 32
    for k in ("sample_id", "lon", "lat", "epsg", "x0", "y0", "anchor_time"):  # same samples, same order
        assert k in ds.coords
        np.testing.assert_array_equal(ds[k].values, cube[k].values, err_msg=k)
    for m in ("lulc", "landsat"):
        for name in (m, f"{m}_valid", f"{m}_available", f"{m}_band"):  # as the cube writes the modality
            assert ds[name].dims == cube[name].dims and ds[name].shape == cube[name].shape, name
            assert ds[name].dtype == cube[name].dtype, name
        np.testing.assert_array_equal(ds[f"{m}_band"].values, cube[f"{m}_band"].values)
        attrs = ds[m].attrs
        assert {k: attrs[k] for k in cube[m].attrs} == cube[m].attrs  # the cube's schema attrs, all of them
        assert attrs["generated_from"] == {"model": "org/fusion-tiny", "digest": "ab12",
                                           "conditioning": ["s2l2a", "s1rtc"],
                                           "schedule": {"type": "maskgit", "steps": 8}}
        assert ds[m].encoding["chunks"][0] == 1 and ds[m].encoding["shards"][0] == 8
        assert ds.attrs["modalities"][m] == cube.attrs["modalities"][m]
        assert ds.attrs["stats"][m] == cube.attrs["stats"][m]
        assert np.isnat(ds[f"{m}_time"].values).all() and (ds[f"{m}_item"].values == "").all()
        np.testing.assert_array_equal(ds[f"{m}_available"].values, cube[f"{m}_available"].values)
    # lulc: the centre 256 px hold the data, the 4 px frame is nodata and not valid
    assert (ds["lulc"].attrs["crop_px"], ds["lulc"].attrs["crop_offset_px"]) == (256, [4, 4])
    assert (ds["landsat"].attrs["crop_px"], ds["landsat"].attrs["crop_offset_px"]) == (264, [0, 0])
    lulc, valid = ds["lulc"].values, ds["lulc_valid"].values
    np.testing.assert_array_equal(lulc[..., 4:260, 4:260][cube["lulc_available"].values],
                                  cube["lulc"].values[..., 4:260, 4:260][cube["lulc_available"].values])
    frame = np.ones((264, 264), bool)
    frame[4:260, 4:260] = False
    assert (lulc[..., frame] == cube.attrs["modalities"]["lulc"]["nodata"]).all() and not valid[:, frame].any()
    np.testing.assert_array_equal(ds["landsat"].values, cube["landsat"].values)
    assert list(ds["caption"].values) == [f"generated for {s}" for s in cube["sample_id"].values]
    assert ds["caption"].attrs["generated_from"]["model"] == "org/fusion-tiny"
    attrs = ds.attrs
    assert attrs["eo_store"] == "generated" and attrs["complete"] is True and attrs["block_samples"] == 8
    assert attrs["grid"] == cube.attrs["grid"] and attrs["recipe_hash"] == cube.attrs["recipe_hash"]
    assert attrs["samples_hash"] == read_manifest(demo_cube)["samples_hash"] and attrs["cube"] == str(demo_cube)
    assert attrs["identity"] == IDENTITY and attrs["written_by"] == "test" and attrs["eo_models_aligned"] == 1
    record = json.loads((generated / "_build" / "generated.json").read_text())
    assert (record["n_samples"], record["block_samples"], record["n_blocks"]) == (32, 8, 4)
    entries = block_reports(generated, "generated")
    assert [e["samples"] for e in entries.values()] == [[0, 8], [8, 16], [16, 24], [24, 32]]
    assert all(e["generated"] == 8 and e["seconds"] >= 0 for e in entries.values())


def test_cube_dataset_reads_a_generated_store_like_the_cube(generated: Path, demo_cube: Path) -> None:
    """The store holds the cube's own lulc and landsat: a 240 px centre crop (inside lulc's 256 px) loads exactly as
    from the cube, normalised with the cube's statistics, with the same ids, bounds and captions where given."""
    kw = {"crop": 240, "crop_mode": "center"}
    a = CubeDataset(generated, ["lulc", "landsat"], **kw).get_batch(range(32))
    b = CubeDataset(demo_cube, ["lulc", "landsat"], **kw).get_batch(range(32))
    for k in ("lulc", "lulc_valid", "lulc_available", "landsat", "landsat_valid", "landsat_available", "index",
              "bounds"):
        np.testing.assert_array_equal(a[k].numpy(), b[k].numpy(), err_msg=k)
    assert a["sample_id"] == b["sample_id"] and a["crs"] == b["crs"]
    assert a["caption"][0] == f"generated for {a['sample_id'][0]}"
    assert np.isnan(a["lulc_time"].numpy()).all()  # generated: no acquisition time
    assert a["landsat"].dtype == b["landsat"].dtype and a["landsat"][b["landsat_available"]].abs().sum() > 0


def test_eo_dataset_info_describes_aligned_stores(generated: Path, demo_cube: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert eo_dataset_main(["info", str(generated)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"{generated}: 4M4EO generated modalities of eo-models, 32 samples of cube {demo_cube}" in out
    assert "complete" in out and "incomplete" not in out
    cube = xr.open_zarr(demo_cube)
    n_lulc = int(cube["lulc_available"].sum())
    assert f"lulc │ 1 x 264 x 264 │ uint8 │ {n_lulc}/32 │ org/fusion-tiny from s2l2a, s1rtc; crop 256 px" in out
    assert "landsat │ 6 x 88 x 88 │ uint16" in out and "caption │ 1 │ str" in out
    # an embeddings store, interrupted after one block
    meta = cube_meta(cube, demo_cube)
    store = AlignedStore.create_or_resume(tmp_path / "emb.zarr", demo_cube, kind="embeddings",
                                          variables=embedding_variables(4, {"s2l2a": (2, 2)}, meta),
                                          identity={"model": "m"}, block=16)
    store.write(0, {"embedding": np.ones((16, 4), np.float32), "s2l2a_patch": np.ones((16, 2, 2, 4), np.float32),
                    "s2l2a_available": np.arange(16) < 5})
    assert eo_dataset_main(["info", str(tmp_path / "emb.zarr")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "4M4EO embeddings of eo-models, 32 samples" in out and "incomplete: 1 of 2 blocks written" in out
    assert "s2l2a_patch │ 2 x 2 x 4 │ float16 │ 5/32" in out and "embedding │ 4 │ float32 │ -" in out


# -- embeddings ------------------------------------------------------------------------------------------------------
def test_embeddings_layout(demo_cube: Path, cube: xr.Dataset, tmp_path: Path) -> None:
    meta = cube_meta(cube, demo_cube)
    grids = {"s2l2a": (33, 33), "landsat": (11, 11)}
    variables = embedding_variables(8, grids, meta)
    avail = {m: cube[f"{m}_available"].values for m in grids}

    def block(rows: slice) -> dict[str, np.ndarray]:
        idx = np.arange(rows.start, rows.stop, dtype=np.float32)
        out = {"embedding": np.repeat(idx[:, None], 8, axis=1)}
        for m, (ty, tx) in grids.items():
            patch = np.broadcast_to(idx[:, None, None, None], (len(idx), ty, tx, 8)).astype(np.float32).copy()
            patch[~avail[m][rows]] = np.nan
            out[f"{m}_patch"], out[f"{m}_available"] = patch, avail[m][rows]
        return out

    store, done = run(tmp_path / "emb.zarr", demo_cube, variables, block, kind="embeddings", block=16,
                      identity={"model": "m", "pooling": "mean"})
    assert done == [0, 1]
    ds = xr.open_zarr(tmp_path / "emb.zarr")
    np.testing.assert_array_equal(ds["sample_id"].values, cube["sample_id"].values)
    assert ds["embedding"].dims == ("sample", "dim") and ds["embedding"].dtype == np.float32
    np.testing.assert_array_equal(ds["embedding"].values[:, 0], np.arange(32))
    for m, (ty, tx) in grids.items():
        p = ds[f"{m}_patch"]
        assert p.dims == ("sample", f"{m}_ty", f"{m}_tx", "dim") and p.shape == (32, ty, tx, 8)
        assert p.dtype == np.float16 and p.encoding["chunks"] == (1, ty, tx, 8) and p.encoding["shards"][0] == 16
        np.testing.assert_array_equal(ds[f"{m}_available"].values, avail[m])
        assert np.isnan(p.values[~avail[m]]).all() and (p.values[avail[m], 0, 0, 0] == np.flatnonzero(avail[m])).all()
    assert ds.attrs["eo_store"] == "embeddings" and sorted(ds.attrs["modalities"]) == ["landsat", "s2l2a"]
    assert "stats" not in ds.attrs  # statistics are for pixels
    assert ds.attrs["identity"] == {"model": "m", "pooling": "mean"}


# -- resume ----------------------------------------------------------------------------------------------------------
def test_resume_after_a_kill_redoes_only_unfinished_blocks(generated: Path, demo_cube: Path, cube: xr.Dataset,
                                                           gen_vars: dict[str, VarSpec], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "gen.zarr"
    computed: list[int] = []

    def block_fn(rows: slice) -> dict[str, np.ndarray]:
        computed.append(rows.start // 8)
        return gen_block(cube, rows)

    real = aligned.mark_done

    def killed_on_third(path: Path, index: int, entry: dict, sub: str = "blocks") -> None:
        if index == 2:  # block 2's data are written, its entry is not: it must be done again
            raise KeyboardInterrupt("killed")
        real(path, index, entry, sub=sub)

    monkeypatch.setattr(aligned, "mark_done", killed_on_third)
    with pytest.raises(KeyboardInterrupt, match="killed"):
        run(out, demo_cube, gen_vars, block_fn)
    assert computed == [0, 1, 2] and done_blocks(out, "generated") == {0, 1}
    assert zarr.open_group(out, mode="r").attrs["complete"] is False
    torn = out / "lulc" / "c" / "3" / "0" / "0" / "0.a1b2.partial"  # a chunk write the kill tore
    torn.parent.mkdir(parents=True, exist_ok=True)
    torn.write_bytes(b"torn")

    monkeypatch.setattr(aligned, "mark_done", real)
    computed.clear()
    store, done = run(out, demo_cube, gen_vars, block_fn, block=16)  # the store keeps its blocks of 8
    assert computed == done == [2, 3] and store.block == 8
    assert not torn.exists() and foreign_files(out, zarr_owned(["_build"])) == []
    same_store(out, generated)
    computed.clear()
    store, done = run(out, demo_cube, gen_vars, block_fn)  # complete: nothing to do
    assert done == computed == [] and store.complete and store.todo() == []
    same_store(out, generated)


def test_an_interrupted_creation_deletes_only_ours(generated: Path, demo_cube: Path, cube: xr.Dataset,
                                                   gen_vars: dict[str, VarSpec], tmp_path: Path) -> None:
    out = tmp_path / "gen.zarr"
    tmp = tmp_path / ".gen.zarr.creating"  # a creation killed before its rename
    shutil.copytree(generated, tmp)
    run(out, demo_cube, gen_vars, lambda rows: gen_block(cube, rows))
    assert not tmp.exists()
    same_store(out, generated)
    # a store of ours without its creation record is created again, and deleted first only if all of it is ours
    (out / "_build" / "generated.json").unlink()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"also holds other files \(notes.txt\); it is left untouched"):
        run(out, demo_cube, gen_vars, lambda rows: gen_block(cube, rows))
    assert (out / "notes.txt").read_text() == "mine" and (out / "zarr.json").is_file()
    (out / "notes.txt").unlink()
    _, done = run(out, demo_cube, gen_vars, lambda rows: gen_block(cube, rows))
    assert done == [0, 1, 2, 3]
    same_store(out, generated)


# -- refusals --------------------------------------------------------------------------------------------------------
def test_foreign_folders_and_cubes_are_refused_untouched(generated: Path, demo_cube: Path,
                                                         gen_vars: dict[str, VarSpec], tmp_path: Path) -> None:
    def create(out: Path, kind: str = "generated") -> AlignedStore:
        return AlignedStore.create_or_resume(out, demo_cube, kind=kind, variables=gen_vars, identity=IDENTITY)

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("x")
    with pytest.raises(OutputError, match=r"exists and is not a store of generated .*\(no zarr.json\); it is left"):
        create(notes)
    assert [p.name for p in notes.iterdir()] == ["todo.txt"]
    before = snapshot(demo_cube)
    with pytest.raises(OutputError, match=r"is an eo-dataset cube, not a store of generated modalities .*"
                                          r"left untouched"):
        create(demo_cube)
    before_gen = snapshot(generated)
    with pytest.raises(OutputError, match=r"is an eo-models generated store, not a store of embeddings"):
        create(generated, kind="embeddings")
    (tmp_path / "file.zarr").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        create(tmp_path / "file.zarr")
    with pytest.raises(NotACubeError, match="is an eo-dataset generated store, not a cube"):
        AlignedStore.create_or_resume(tmp_path / "x.zarr", generated, kind="generated", variables=gen_vars,
                                      identity=IDENTITY)
    assert snapshot(demo_cube) == before and snapshot(generated) == before_gen
    assert not (tmp_path / "x.zarr").exists()


def test_another_run_is_refused_with_a_clear_message(generated: Path, demo_cube: Path, cube: xr.Dataset,
                                                     gen_vars: dict[str, VarSpec], tmp_path: Path) -> None:
    out = tmp_path / "gen.zarr"
    shutil.copytree(generated, out)
    before = snapshot(out)

    def create(variables: dict[str, VarSpec] = gen_vars, identity: dict = IDENTITY) -> AlignedStore:
        return AlignedStore.create_or_resume(out, demo_cube, kind="generated", variables=variables, identity=identity)

    with pytest.raises(ConfigError, match=r"was written by another run \(identity differs in \['digest'\]: "
                                          r"stored \{'digest': 'ab12'\}, now \{'digest': 'ff00'\}\); pass another"):
        create(identity={**IDENTITY, "digest": "ff00"})
    fewer = {k: v for k, v in gen_vars.items() if k != "caption"}
    with pytest.raises(ConfigError, match=r"holds other variables \(differ in \['caption'\]\)"):
        create(variables=fewer)
    assert snapshot(out) == before
    zarr.open_group(out, mode="r+").attrs["samples_hash"] = "0" * 16
    with pytest.raises(ConfigError, match=r"aligned with another cube .*differs in \['samples_hash'\]"):
        create()


def test_bad_writes(demo_cube: Path, cube: xr.Dataset, gen_vars: dict[str, VarSpec], tmp_path: Path) -> None:
    store = AlignedStore.create_or_resume(tmp_path / "gen.zarr", demo_cube, kind="generated", variables=gen_vars,
                                          identity=IDENTITY, block=8)
    good = gen_block(cube, store.block_samples(1))
    with pytest.raises(ConfigError, match=r"block 4 is not a block of .*blocks 0..3"):
        store.write(4, good)
    with pytest.raises(ConfigError, match=r"missing \['caption'\], unknown \['lulc_time'\]"):
        store.write(1, {**{k: v for k, v in good.items() if k != "caption"}, "lulc_time": good["caption"]})
    with pytest.raises(ConfigError, match=r"lulc: array of shape \(8, 1, 200, 200\); expected \(8, 1, 264, 264\) or "
                                          r"\(8, 1, 256, 256\) \(the window\)"):
        store.write(1, {**good, "lulc": np.zeros((8, 1, 200, 200), np.uint8)})
    with pytest.raises(ConfigError, match="landsat: array of dtype float32, which does not cast safely .* uint16"):
        store.write(1, {**good, "landsat": good["landsat"].astype(np.float32)})
    with pytest.raises(ConfigError, match=r"4 of 4 blocks not written yet"):
        store.finish()
    assert store.todo() == [0, 1, 2, 3] and done_blocks(store.path, "generated") == set()
    for b in store.todo():
        store.write(b, gen_block(cube, store.block_samples(b)))
    store.finish()
    with pytest.raises(ConfigError, match="is finished"):
        store.write(0, good)


def test_bad_layouts(demo_cube: Path, cube: xr.Dataset, tmp_path: Path) -> None:
    meta = cube_meta(cube, demo_cube)
    lulc, landsat = meta.modalities["lulc"], meta.modalities["landsat"]
    with pytest.raises(ConfigError, match=r"generated landsat: crop 250 px .* not a whole number of pixels at 30 m"):
        generated_variables(landsat, "uint16", meta, generated_from=FROM, crop_px=250)
    with pytest.raises(ConfigError, match=r"crop offset \(5, 5\) px does not fit"):
        generated_variables(landsat, "uint16", meta, generated_from=FROM, crop_px=240, crop_offset_px=(5, 5))
    floats = generated_variables(lulc, "float32", meta, generated_from=FROM)  # not the cube's stored dtype
    with pytest.raises(ConfigError, match=r"lulc: dims .* dtype float32; the cube has .* uint8: a generated modality"):
        AlignedStore.create_or_resume(tmp_path / "a.zarr", demo_cube, kind="generated", variables=floats,
                                      identity={})
    clash = {"a": VarSpec(("d",), (3,), "float32"), "b": VarSpec(("d",), (4,), "float32")}
    with pytest.raises(ConfigError, match=r"dim 'd' has size 4 in 'b' but 3"):
        AlignedStore.create_or_resume(tmp_path / "a.zarr", demo_cube, kind="embeddings", variables=clash, identity={})
    with pytest.raises(ConfigError, match=r"attrs \['complete'\] are written by the store itself"):
        AlignedStore.create_or_resume(tmp_path / "a.zarr", demo_cube, kind="embeddings",
                                      variables={"a": clash["a"]}, identity={}, attrs={"complete": True})
    with pytest.raises(ConfigError, match="identity must be JSON-able"):
        AlignedStore.create_or_resume(tmp_path / "a.zarr", demo_cube, kind="embeddings",
                                      variables={"a": clash["a"]}, identity={"x": object()})
    with pytest.raises(ConfigError, match="fill nan is not a uint16 value"):
        VarSpec(("d",), (3,), "uint16", fill=float("nan"))
    with pytest.raises(ConfigError, match="embeddings of modality 'hyper', which the cube does not have"):
        embedding_variables(8, {"hyper": (2, 2)}, meta)
    assert not (tmp_path / "a.zarr").exists() and os.listdir(tmp_path) == []
