"""The corpus's sample list: drawn over land, stratified, reproducible; read lazily by build and plan."""

from __future__ import annotations

import csv
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xarray as xr

from eo_dataset.cli.main import main
from eo_dataset.pipeline.sample_list import SampleList, write_sample_list
from eo_dataset.pipeline.sampling import LAT_BANDS, STRATA, draw_samples
from eo_dataset.spec.grid import Grid

VENICE = (11.9, 45.0, 12.7, 45.8)  # the Venetian plain and the Adriatic coast: inland and coast samples
VENICE_ARG = ",".join(map(str, VENICE))


@pytest.fixture(scope="module")
def globe():
    from global_land_mask import globe

    return globe


@pytest.fixture(scope="module")
def drawn():
    return draw_samples(300, seed=0, region=VENICE)


def test_the_same_seed_draws_the_same_ids(drawn) -> None:
    again = draw_samples(300, seed=0, region=VENICE)
    other = draw_samples(300, seed=1, region=VENICE)
    assert again.ids() == drawn.ids()
    assert other.ids() != drawn.ids()
    assert len(set(drawn.ids())) == 300


def test_strata_counts_are_proportional_to_their_land(drawn) -> None:
    counts, cand = drawn.counts(), drawn.candidates
    total = sum(cand.values())
    assert sum(counts.values()) == 300
    for name in STRATA:  # each stratum gets n x its share, rounded down or up (largest remainders)
        share = 300 * cand[name] / total
        assert math.floor(share) <= counts[name] <= math.ceil(share), name
    assert counts["n-temperate/coast"] > 0 and counts["n-temperate/inland"] > 0  # the coast and the plain


def test_each_sample_is_in_its_documented_stratum(drawn, globe) -> None:
    grid = Grid()
    bands = [b for b, _, _ in LAT_BANDS]
    for sid, stratum, lat in zip(drawn.ids(), drawn.stratum.tolist(), drawn.lat.tolist(), strict=True):
        band = next(name for name, s, n in LAT_BANDS if s <= lat < n)
        centres = [s.center_lonlat for s in grid.samples_of_cell(sid.rsplit("_", 2)[0])]
        land = globe.is_land(np.array([c[1] for c in centres]), np.array([c[0] for c in centres]))
        surface = "inland" if land.all() else "coast"
        assert STRATA[stratum] == f"{band}/{surface}", sid
        assert band in bands


def test_every_sample_is_over_land_and_placed_as_the_grid_places_it(drawn, globe) -> None:
    grid = Grid()
    for i, sid in enumerate(drawn.ids()):
        s = grid.sample(sid)
        lon, lat = s.center_lonlat
        assert globe.is_land(lat, lon), sid
        assert (s.epsg, s.x0, s.y0) == (int(drawn.epsg[i]), float(drawn.x0[i]), float(drawn.y0[i]))
        assert (lon, lat) == pytest.approx((drawn.lon[i], drawn.lat[i]), abs=1e-9)
        w, south, e, n = VENICE
        assert w <= lon <= e and south <= lat <= n


def test_per_stratum_takes_the_same_count_from_every_stratum() -> None:
    d = draw_samples(per_stratum=7, seed=0, region=VENICE)
    for name, c in d.counts().items():
        assert c == min(7, d.candidates[name]), name


def test_exclude_never_draws_the_cubes_samples(tmp_path) -> None:
    everything = draw_samples(per_stratum=10**6, seed=0, region=VENICE)  # every land sample of the region
    cell = everything.ids()[len(everything) // 2].rsplit("_", 2)[0]
    cube = tmp_path / "cube.zarr"
    assert main(["build", "synthetic", "--cells", cell, "--out", str(cube), "--scheduler", "sync"]) == 0
    cube_ids = set(map(str, xr.open_zarr(cube)["sample_id"].values))
    assert set(everything.ids()) & cube_ids
    rest = draw_samples(per_stratum=10**6, seed=0, region=VENICE, exclude=cube_ids)
    assert set(rest.ids()) == set(everything.ids()) - cube_ids
    out = tmp_path / "rest.parquet"
    assert main(["sample", "--per-stratum", "1000000", "--region", VENICE_ARG, "--exclude", str(cube),
                 "--out", str(out)]) == 0
    assert set(pq.read_table(out).column("sample_id").to_pylist()) == set(rest.ids())


def test_cli_sample_writes_a_list_and_is_reproducible(tmp_path, capsys) -> None:
    out, again = tmp_path / "a.parquet", tmp_path / "b.parquet"
    assert main(["sample", "--n", "40", "--seed", "3", "--region", VENICE_ARG, "--out", str(out)]) == 0
    assert main(["sample", "--n", "40", "--seed", "3", "--region", VENICE_ARG, "--out", str(again)]) == 0
    assert main(["sample", "--n", "40", "--seed", "3", "--region", VENICE_ARG, "--out", str(out)]) == 0  # ours
    t = pq.read_table(out)
    assert t.num_rows == 40
    assert {"sample_id", "cell", "row", "col", "a", "b", "epsg", "x0", "y0", "lon", "lat", "stratum"} <= set(
        t.column_names)
    assert t.column("sample_id").to_pylist() == pq.read_table(again).column("sample_id").to_pylist()
    assert "wrote" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["sample", "--n", "0", "--out", "{tmp}/x.parquet"],
    ["sample", "--n", "-5", "--out", "{tmp}/x.parquet"],
    ["sample", "--out", "{tmp}/x.parquet"],
    ["sample", "--n", "5", "--out", "{tmp}/foreign.parquet"],
    ["sample", "--n", "5", "--out", "{tmp}/x.parquet", "--region", "1,2,3"],
    ["build", "synthetic", "--samples", "{tmp}/missing.parquet", "--out", "{tmp}/c.zarr"],
    ["plan", "synthetic", "--samples", "{tmp}/missing.parquet"],
    ["plan", "synthetic", "--samples", "{tmp}/no-ids.parquet"],
    ["build", "synthetic", "--samples", "{tmp}/no-ids.parquet", "--out", "{tmp}/c.zarr"],
])
def test_bad_input_is_one_line_and_exit_2(argv, tmp_path, capsys) -> None:
    (tmp_path / "foreign.parquet").write_text("not mine")
    pq.write_table(pa.table({"id": ["282D_485L_3_3"]}), tmp_path / "no-ids.parquet")
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x.parquet").exists() and not (tmp_path / "c.zarr").exists()


def test_the_list_is_read_lazily_by_row_group(tmp_path) -> None:
    d = draw_samples(50, seed=0, region=VENICE)
    path = write_sample_list(d, tmp_path / "l.parquet", row_group=16)
    lst = SampleList(path, Grid())
    assert len(lst) == 50 and pq.ParquetFile(path).metadata.num_row_groups == 4
    grid, ids = Grid(), d.ids()
    assert [s.id for s in lst[10:40]] == ids[10:40]  # across row groups
    assert lst[-1] == grid.sample(ids[-1]) and lst[17] == grid.sample(ids[17])
    assert list(lst) == [grid.sample(i) for i in ids]
    assert lst.ids() == ids and lst[::7] == [grid.sample(i) for i in ids[::7]]
    with pytest.raises(IndexError):
        lst[50]


def test_a_parquet_list_builds_the_same_cube_as_a_csv_list(tmp_path, capsys) -> None:
    d = draw_samples(20, seed=0, region=VENICE)
    plist = write_sample_list(d, tmp_path / "l.parquet", row_group=8)
    clist = tmp_path / "l.csv"
    with open(clist, "w", newline="") as f:
        csv.writer(f).writerows([["sample_id"], *[[i] for i in d.ids()]])
    for name, lst in (("p", plist), ("c", clist)):
        assert main(["build", "synthetic", "--samples", str(lst), "--out", str(tmp_path / f"{name}.zarr"),
                     "--scheduler", "sync"]) == 0
    a, b = xr.open_zarr(tmp_path / "p.zarr").load(), xr.open_zarr(tmp_path / "c.zarr").load()
    xr.testing.assert_identical(a, b)
    assert list(a.sample_id.values) == d.ids() and bool(a.s2l2a_available.all())
    capsys.readouterr()
    assert main(["plan", "synthetic", "--samples", str(plist)]) == 0
    out = capsys.readouterr().out
    assert "20 samples" in out and "sample list" in out
