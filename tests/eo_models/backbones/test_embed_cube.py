"""``eo-models embed --backbone``: a tiny randomly initialised TerraMind backbone saved to a folder embeds the
32-sample demo cube into the same aligned store as ``embed --fusion``: centre crops of the size the backbone expects,
bands picked by the cube's names in the backbone's order, normalisation inside the backbone, a sample's missing
modality left out (NaN patches, ``<m>_available`` False); errors are one line with exit status 2."""

from __future__ import annotations

import shlex
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
xr = pytest.importorskip("xarray")

from eo_dataset.torch import CubeDataset  # noqa: E402
from eo_models.backbones.embed import embed_cube_with_backbone  # noqa: E402
from eo_models.backbones.terramind import BackboneInput, TerraMindBackbone, TerraMindConfig  # noqa: E402
from eo_models.cli.main import main  # noqa: E402
from eo_models.config import ModalityConfig  # noqa: E402
from eo_models.convert.terramind import modality_config, table  # noqa: E402
from eo_models.errors import ConfigError  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GRID, PATCH, DIM = (4, 4), 16, 16  # the backbone expects 64 px crops


def tiny(s2: ModalityConfig | None = None, seed: int = 0) -> TerraMindBackbone:
    """A two-modality backbone (S2 L2A and S1 RTC pixels, S2 L2A tokens) with random weights and positions."""
    entries = table()["tokenizers"]
    inputs = (BackboneInput(name="s2l2a", kind="pixels", modality=s2 or modality_config("S2L2A", entries["S2L2A"]),
                            grid=GRID),
              BackboneInput(name="s1rtc", kind="pixels", modality=modality_config("S1RTC", entries["S1RTC"]),
                            grid=GRID),
              BackboneInput(name="s2l2a", kind="tokens", vocab_size=32, grid=GRID))
    torch.manual_seed(seed)
    model = TerraMindBackbone(TerraMindConfig(inputs=inputs, dim=DIM, depth=1, heads=2, hidden=32, patch=PATCH,
                                              name="tiny-terramind").to_dict())
    with torch.no_grad():
        for emb in model.embeddings.values():
            emb.positions.normal_()
            emb.modality.normal_()
    return model.eval()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("backbone") / "tm-tiny"
    tiny().save_pretrained(out)
    return out


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(argv)
    got = capsys.readouterr()
    return rc, got.out, got.err


def documented_command() -> list[str]:
    """The ``eo-models embed --backbone`` example of docs/zoo.md, as argv."""
    text = (Path(__file__).resolve().parents[3] / "docs" / "zoo.md").read_text()
    lines = [line for line in text.splitlines() if line.startswith("eo-models embed --backbone ")]
    assert len(lines) == 1, "docs/zoo.md should show one 'eo-models embed --backbone' example"
    return shlex.split(lines[0], comments=True)[1:]


def test_embed_backbone_writes_the_aligned_store(folder: Path, demo_cube: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "emb.zarr"
    where = {"tm-tiny": str(folder), "demo.zarr": str(demo_cube), "tm-emb.zarr": str(out)}
    argv = [where.get(a, a) for a in documented_command()]  # the docs' example, on this test's folders
    assert argv[argv.index("--modalities") + 1] == "s2l2a,s1rtc" and set(where.values()) <= set(argv)
    rc, said, err = run([*argv, "--quiet"], capsys)
    assert rc == 0 and err == "" and str(out) in said
    cube, store = xr.open_zarr(demo_cube), xr.open_zarr(out)
    n = cube.sizes["sample"]
    assert n == 32 and (store["sample_id"].values == cube["sample_id"].values).all()
    assert store["embedding"].shape == (n, DIM) and store["s2l2a_patch"].shape == (n, *GRID, DIM)
    assert store["s1rtc_patch"].shape == (n, *GRID, DIM)
    assert store.attrs["eo_store"] == "embeddings" and store.attrs["backbone"] == str(folder)
    assert store.attrs["identity"]["crop_px"] == GRID[0] * PATCH
    for m in ("s2l2a", "s1rtc"):
        has = cube[f"{m}_available"].values
        assert (store[f"{m}_available"].values == has).all() and 0 < has.sum() < n  # the cube has samples without
        patch = store[f"{m}_patch"].values
        assert np.isfinite(patch[has]).all() and np.isnan(patch[~has]).all()
    either = cube["s2l2a_available"].values | cube["s1rtc_available"].values
    assert np.isfinite(store["embedding"].values[either]).all() and np.isnan(store["embedding"].values[~either]).all()

    # the same numbers as the backbone on 64 px centre crops of the cube's stored values
    model = TerraMindBackbone.from_pretrained(folder)
    ds = CubeDataset(demo_cube, ["s2l2a", "s1rtc"], crop=64, crop_mode="center", normalize=False)
    bands = {m: ds.info[m].meta.bands for m in ds.modalities}
    rows = [i for i in range(n) if either[i]][:6]
    direct = model.embed(**model.inputs_of(ds.collate_fn([ds[i] for i in rows]), bands))
    np.testing.assert_allclose(store["embedding"].values[rows], direct.pooled.numpy(), rtol=1e-5, atol=1e-5)
    both = [j for j, i in enumerate(rows) if cube["s2l2a_available"].values[i]]
    np.testing.assert_allclose(store["s2l2a_patch"].values[[rows[j] for j in both]].astype(np.float32),
                               direct.tokens["s2l2a_pixels"][both].reshape(-1, *GRID, DIM).numpy(), atol=2e-2)

    # a second run of the same call finds the store complete and leaves it as it is
    stamp = (out / "embedding" / "zarr.json").stat().st_mtime_ns
    assert run(["embed", "--backbone", str(folder), "--cube", str(demo_cube), "--modalities", "s2l2a,s1rtc",
                "--out", str(out), "--quiet"], capsys)[0] == 0
    assert (out / "embedding" / "zarr.json").stat().st_mtime_ns == stamp


def test_bands_are_picked_by_the_cube_names_in_the_backbone_order(demo_cube: Path, tmp_path: Path) -> None:
    """A backbone whose S2 bands come in another order (its statistics and patch weights permuted with them) gives
    the same embeddings: the cube's bands are matched by name, not by position."""
    a = tiny()
    s2 = a.cfg.input("s2l2a", "pixels").modality
    order = list(reversed(range(len(s2.bands))))
    permuted = replace(s2, bands=tuple(s2.bands[i] for i in order), mean=tuple(s2.mean[i] for i in order),
                       std=tuple(s2.std[i] for i in order))
    b = tiny(permuted)
    state = a.state_dict()
    w = state["embeddings.s2l2a_pixels.proj.weight"]  # (dim, p * q * c), channels innermost
    state["embeddings.s2l2a_pixels.proj.weight"] = w.reshape(DIM, -1, len(order))[:, :, order].reshape(DIM, -1)
    b.load_state_dict(state)
    ea = embed_cube_with_backbone(a, demo_cube, tmp_path / "a.zarr", modalities="s2l2a", progress=False)
    eb = embed_cube_with_backbone(b, demo_cube, tmp_path / "b.zarr", modalities=["s2l2a"], progress=False)
    x, y = xr.open_zarr(ea)["embedding"].values, xr.open_zarr(eb)["embedding"].values
    assert np.isfinite(x).sum() == 31 * DIM  # one demo sample has no S2 L2A
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
    assert "s1rtc_patch" not in xr.open_zarr(ea).data_vars


def test_embed_errors_are_one_line(folder: Path, demo_cube: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--cube", str(demo_cube), "--out", str(tmp_path / "e.zarr"), "--quiet"]
    rc, _, err = run(["embed", *common], capsys)
    assert rc == 2 and err.count("\n") == 1 and "exactly one of --fusion" in err and "neither" in err
    rc, _, err = run(["embed", "--fusion", str(folder), "--backbone", str(folder), *common], capsys)
    assert rc == 2 and err.count("\n") == 1 and "both were given" in err
    rc, _, err = run(["embed", "--backbone", str(folder), "--modalities", "s2l2a,landsat", *common], capsys)
    assert rc == 2 and err.count("\n") == 1 and "no pixel input for landsat" in err and "knows s2l2a, s1rtc" in err
    rc, _, err = run(["embed", "--backbone", str(folder), "--crop", "72", *common], capsys)
    assert rc == 2 and err.count("\n") == 1 and "multiple of 16" in err
    rc, _, err = run(["embed", "--backbone", str(tmp_path / "nope"), *common], capsys)
    assert rc == 2 and err.count("\n") == 1 and "no such folder" in err
    assert not (tmp_path / "e.zarr").exists()  # nothing written by a refused call


def test_a_band_the_cube_lacks_is_named(demo_cube: Path, tmp_path: Path) -> None:
    s2 = tiny().cfg.input("s2l2a", "pixels").modality
    other = replace(s2, bands=("B10", *s2.bands[1:]))
    with pytest.raises(ConfigError, match=r"the cube's s2l2a lacks bands \['B10'\]"):
        embed_cube_with_backbone(tiny(other), demo_cube, tmp_path / "e.zarr", modalities="s2l2a", progress=False)
