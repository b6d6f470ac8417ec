"""`eo-dataset show`: one sample, a panel per modality drawn by its display spec, the recorded reason for each
modality the sample lacks, the caption; the PNG is ours to replace and nobody else's file is touched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

pytest.importorskip("matplotlib")

from PIL import Image  # noqa: E402

from eo_dataset.cli import main  # noqa: E402
from eo_dataset.cube.manifest import block_reports  # noqa: E402
from eo_dataset.cube.schema import CubeMeta  # noqa: E402
from eo_dataset.view.sample import SOFTWARE, _reasons, sample_figure  # noqa: E402


def _panels(fig) -> dict[str, object]:
    return {ax.get_title().split(":")[0] if ":" in ax.get_title() else ax.get_title(): ax
            for ax in fig.axes if ax.get_title()}


def test_one_panel_per_modality_drawn_by_its_display_spec(demo_cube: Path) -> None:
    ds = xr.open_zarr(demo_cube)
    meta = CubeMeta.from_attrs(ds.attrs)
    full = np.all([ds[f"{m}_available"].values for m in meta.modalities], axis=0)
    sample = str(ds.sample_id.values[int(np.flatnonzero(full)[0])])
    fig = sample_figure(ds, meta, sample)
    panels = _panels(fig)
    assert list(panels) == [*meta.modalities, "caption"]
    assert panels["s2l2a"].get_title().startswith("s2l2a: true colour B04/B03/B02")
    assert panels["s1rtc"].get_title().startswith("s1rtc: VV backscatter (dB)")
    assert panels["dem"].get_title().startswith("dem: elevation, hillshaded")
    assert sample in fig.get_suptitle() and "EPSG:326" in fig.get_suptitle()
    for m in meta.modalities:  # every available modality is a picture
        image = panels[m].get_images()[0].get_array()
        assert image.shape[0] > 10 and np.ptp(np.asarray(image, dtype=float)) > 0, m
    caption = str(ds.caption.values[int(np.flatnonzero(full)[0])])
    assert panels["caption"].texts[0].get_text().replace("\n", " ") == caption


def test_a_missing_modality_shows_its_recorded_reason(demo_cube: Path) -> None:
    ds = xr.open_zarr(demo_cube)
    meta = CubeMeta.from_attrs(ds.attrs)
    i = int(np.flatnonzero(~ds.s2l2a_available.values)[0])
    sample = str(ds.sample_id.values[i])
    reasons = next(e["missing"][sample] for e in block_reports(demo_cube).values() if sample in e["missing"])
    assert _reasons(demo_cube, ds, sample) == reasons  # what `show` reads: the sample's own block entry
    fig = sample_figure(ds, meta, sample, reasons=reasons)
    panel = _panels(fig)["s2l2a"]
    assert panel.get_title() == "s2l2a: not available" and not panel.get_images()
    assert panel.texts[0].get_text().replace("\n", " ") == reasons["s2l2a"]


def test_cli_writes_replaces_ours_and_refuses_the_rest(demo_cube: Path, tmp_path: Path, capsys) -> None:
    ds = xr.open_zarr(demo_cube)
    sample = str(ds.sample_id.values[0])
    out = tmp_path / "sample.png"
    assert main(["show", str(demo_cube), sample, "--out", str(out), "--modalities", "s2l2a,lulc"]) == 0
    with Image.open(out) as im:
        assert im.info["Software"] == SOFTWARE and im.size[0] > 500
    assert main(["show", str(demo_cube), sample, "--out", str(out)]) == 0  # a figure of ours: replaced
    mine = tmp_path / "holiday.png"
    Image.new("RGB", (4, 4)).save(mine)
    before = mine.read_bytes()
    capsys.readouterr()
    assert main(["show", str(demo_cube), sample, "--out", str(mine)]) == 2
    assert mine.read_bytes() == before
    assert "is not a figure written by eo-dataset show; it is left untouched" in capsys.readouterr().err
    for args, message in ((["nope"], "no sample 'nope'"), ([sample, "--modalities", "zz"], "no modality 'zz'")):
        assert main(["show", str(demo_cube), *args, "--out", str(tmp_path / "x.png")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert main(["show", str(demo_cube), sample, "--out", str(tmp_path / "x.jpg")]) == 2
    assert "expected a .png" in capsys.readouterr().err
