"""`eo-dataset report CUBE --html FILE`: one self-contained page whose numbers are the cube's (checked here against
counts computed independently with xarray and the manifest's JSON), whose pictures are PNGs, which replaces only a
report of its own, and which works on a cube served over HTTP."""

from __future__ import annotations

import base64
import io
import json
from collections import Counter
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

pytest.importorskip("matplotlib")

from PIL import Image  # noqa: E402

from eo_dataset.cli import main  # noqa: E402
from eo_dataset.cube.manifest import read_manifest  # noqa: E402
from eo_dataset.view.quality import block_entries, quality  # noqa: E402
from eo_dataset.view.report import GENERATOR, is_report_html  # noqa: E402
from tests.servers import serve_folder  # noqa: E402

SECTIONS = ["overview", "availability", "valid", "masked", "gaps", "missing", "stats", "timings"]
VOID = {"meta", "img", "br", "hr", "link", "input"}


# -- a small DOM from html.parser ------------------------------------------------------------------------------------
class Node:
    def __init__(self, tag: str, attrs: dict[str, str | None]) -> None:
        self.tag, self.attrs, self.children = tag, attrs, []

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children).strip()

    def iter(self, tag: str | None = None) -> Iterator[Node]:
        for c in self.children:
            if isinstance(c, Node):
                if tag is None or c.tag == tag:
                    yield c
                yield from c.iter(tag)

    def find(self, tag: str, **attrs: str) -> Node:
        found = [n for n in self.iter(tag) if all(n.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())]
        assert len(found) == 1, f"expected one <{tag} {attrs}>, found {len(found)}"
        return found[0]

    def rows(self) -> list[list[str]]:
        """The cells' texts, row by row (a table)."""
        return [[c.text() for c in tr.children if isinstance(c, Node) and c.tag in ("td", "th")]
                for tr in self.iter("tr")]

    def records(self) -> dict[str, dict[str, str]]:
        """A table as ``first cell -> {header: cell}``."""
        header, *body = self.rows()
        return {r[0]: dict(zip(header, r, strict=True)) for r in body}


class _Tree(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.root = Node("#root", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, dict(attrs))
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        while len(self.stack) > 1 and self.stack.pop().tag != tag:
            pass

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(path: Path) -> Node:
    tree = _Tree()
    tree.feed(path.read_text(encoding="utf-8"))
    tree.close()
    return tree.root


def num(cell: str) -> float:
    return float(cell.replace(",", "").rstrip("%"))


# -- fixtures ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def report(demo_cube: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of the demo cube, written by the command line."""
    out = tmp_path_factory.mktemp("report") / "report.html"
    assert main(["report", str(demo_cube), "--html", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def page(report: Path) -> Node:
    return parse(report)


@pytest.fixture(scope="module")
def ds(demo_cube: Path) -> xr.Dataset:
    return xr.open_zarr(demo_cube).load()


def _modalities(ds: xr.Dataset) -> list[str]:
    return list(ds.attrs["modalities"])


# -- the page ----------------------------------------------------------------------------------------------------------
def test_one_self_contained_page_with_every_section(page: Node, report: Path) -> None:
    assert [s.attrs["id"] for s in page.iter("section")] == SECTIONS
    assert page.find("meta", name="generator").attrs["content"] == GENERATOR
    assert not list(page.iter("script")) and not list(page.iter("link")) and not list(page.iter("iframe"))
    for node in page.iter():
        for key in ("src", "href"):
            value = node.attrs.get(key)
            assert value is None or value.startswith(("data:image/png;base64,", "#")), (node.tag, value[:60])
    assert is_report_html(report)


def test_pictures_are_png(page: Node) -> None:
    images = {img.attrs["id"]: img.attrs["src"] for img in page.iter("img")}
    assert set(images) == {"valid-histograms", "masked-histograms", "gaps-histograms", "timing-chart"}
    for name, src in images.items():
        data = base64.b64decode(src.removeprefix("data:image/png;base64,"), validate=True)
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == "PNG" and im.size[0] >= 300 and im.size[1] >= 150, (name, im.size)
            assert len(np.unique(np.asarray(im.convert("L")))) > 2, f"{name} is blank"


def test_availability_and_co_availability_are_the_cube_s(page: Node, ds: xr.Dataset) -> None:
    names = _modalities(ds)
    n = ds.sizes["sample"]
    avail = {m: ds[f"{m}_available"].values.astype(bool) for m in names}
    table = page.find("table", id="availability-table").records()
    assert list(table) == names
    for m in names:
        assert int(table[m]["available"]) == int(avail[m].sum()), m
        assert table[m]["collection"] == ds.attrs["modalities"][m]["collection"]
    co = page.find("table", id="coavailability-table").rows()
    assert co[0][1:] == names
    for row in co[1:]:
        a = row[0]
        assert [int(c) for c in row[1:]] == [int((avail[a] & avail[b]).sum()) for b in names], a
    overview = dict(page.find("table", id="overview-table").rows())
    assert num(overview["samples"]) == n
    assert num(overview["sample/modality pairs without data"]) == sum(int((~avail[m]).sum()) for m in names)
    patterns = page.find("table", id="patterns-table").rows()[1:]
    expected = Counter(" + ".join(m for m in names if avail[m][i]) or "(none)" for i in range(n))
    for count, combo in patterns:
        assert expected[combo] == int(count), combo
    assert sum(int(c) for c, _ in patterns) <= n and int(patterns[0][0]) == max(expected.values())


def test_valid_and_cloud_fractions_are_the_cube_s(page: Node, ds: xr.Dataset) -> None:
    names = _modalities(ds)
    valid = page.find("table", id="valid-table").records()
    for m in names:
        a = ds[f"{m}_available"].values.astype(bool)
        frac = ds[f"{m}_valid"].astype(bool).isel(sample=np.flatnonzero(a)).mean(ds[f"{m}_valid"].dims[1:]).values
        row = valid[m]
        assert int(row["samples"]) == a.sum()
        assert num(row["mean"]) == pytest.approx(frac.mean(), rel=1e-2, abs=1e-3), m
        assert num(row["min"]) == pytest.approx(frac.min(), rel=1e-2, abs=1e-3), m
        assert int(row["below 50%"]) == int((frac < 0.5).sum()), m
    masked = page.find("table", id="masked-table").records()
    collections = {m: ds.attrs["recipe"]["modalities"][m]["collection"] for m in names}
    with_mask = [m for m in names if collections[m].get("quality")]
    assert list(masked) == with_mask and with_mask  # the demo's Sentinel-2 and Landsat carry quality masks
    for m in with_mask:
        nodata = ds.attrs["modalities"][m]["nodata"]
        keep = np.flatnonzero(ds[f"{m}_available"].values)
        data = ds[m].values[keep]
        ok = ds[f"{m}_valid"].values[keep].astype(bool)
        has = np.isfinite(data).any(1) if nodata is None else (data != nodata).any(1)
        share = (has & ~ok).sum((1, 2)) / has.sum((1, 2))
        assert int(masked[m]["samples"]) == share.size
        assert num(masked[m]["max"]) == pytest.approx(share.max(), rel=1e-2, abs=1e-3), m
        assert num(masked[m]["mean"]) == pytest.approx(share.mean(), rel=1e-2, abs=1e-3), m
        assert share.max() > 0, f"{m}: the demo world has clouds"


def test_time_gaps_are_the_cube_s(page: Node, ds: xr.Dataset) -> None:
    gaps = page.find("table", id="gaps-table").records()
    anchor = ds.attrs["anchor"]
    assert list(gaps) == [m for m in _modalities(ds) if m != anchor]
    for m, row in gaps.items():
        days = ((ds[f"{m}_time"] - ds["anchor_time"]) / np.timedelta64(1, "D")).where(ds[f"{m}_available"])
        days = days.values[np.isfinite(days.values)]
        assert int(row["samples"]) == days.size, m
        for key, value in (("min", days.min()), ("median", np.median(days)), ("max", days.max())):
            assert num(row[key]) == pytest.approx(value, rel=5e-3, abs=5e-3), (m, key)
        tolerance = ds.attrs["modalities"][m]["rule"].get("tolerance_days")
        if tolerance is not None:
            assert f"within {tolerance:g} d" in row["rule"] and np.abs(days).max() <= tolerance


def test_missing_reasons_are_the_manifest_s(page: Node, ds: xr.Dataset, demo_cube: Path) -> None:
    recorded: Counter = Counter()
    for path in sorted((demo_cube / "_build" / "blocks").glob("*.json")):
        for per in json.loads(path.read_text())["missing"].values():
            recorded.update(per.items())
    rows = page.find("table", id="missing-table").rows()[1:]
    shown = {(m, why): int(k) for m, k, why, _ in rows}
    assert shown == dict(recorded)
    ids = [str(i) for i in ds.sample_id.values]
    unavailable = sum(int((~ds[f"{m}_available"].values).sum()) for m in _modalities(ds))
    assert sum(shown.values()) == unavailable  # every missing pair has its reason
    for m, _, _, examples in rows:
        for sid in examples.split(", "):
            assert not bool(ds[f"{m}_available"].values[ids.index(sid)]), (m, sid)


def test_band_statistics_are_the_cube_s(page: Node, ds: xr.Dataset) -> None:
    stats = ds.attrs["stats"]
    tables = {t.attrs["data-modality"]: t.records() for t in page.iter("table") if t.attrs.get("class") ==
              "stats-table"}
    assert list(tables) == list(stats)
    for m, rows in tables.items():
        assert list(rows) == list(stats[m]["bands"])
        meta = ds.attrs["modalities"][m]
        for band, row in rows.items():
            s = stats[m]["bands"][band]
            assert num(row["valid pixels"]) == s["count"]
            assert num(row["mean"]) == pytest.approx(s["mean"], rel=1e-5)
            assert num(row["physical mean"]) == pytest.approx(s["mean"] * meta["scale"] + meta["offset"], rel=1e-5)
    # and the stats are those of the pixels: the DEM's mean over valid pixels of available samples, with xarray
    keep = ds.dem_available & ds.dem_valid.astype(bool)
    elevation = ds.dem.isel(dem_band=0).where(keep)
    assert num(tables["dem"]["elevation"]["mean"]) == pytest.approx(float(elevation.mean()), rel=1e-5)
    assert num(tables["dem"]["elevation"]["valid pixels"]) == int(keep.sum())
    classes = next(t for t in page.iter("table") if t.attrs.get("class") == "classes-table").records()
    lulc = ds.lulc.isel(lulc_band=0).values[(ds.lulc_available & ds.lulc_valid.astype(bool)).values]
    ids, counts = np.unique(lulc, return_counts=True)
    assert {int(k): num(r["pixels"]) for k, r in classes.items()} == dict(zip(ids.tolist(), counts.tolist(),
                                                                             strict=True))
    names = {int(k): v for k, v in ds.attrs["modalities"]["lulc"]["classes"].items()}
    assert all(r["name"] == names[int(k)] for k, r in classes.items())


def test_build_timings_are_the_manifest_s(page: Node, demo_cube: Path) -> None:
    entries = {int(p.stem): json.loads(p.read_text()) for p in (demo_cube / "_build" / "blocks").glob("*.json")}
    rows = page.find("table", id="blocks-table").records()
    assert sorted(int(k) for k in rows) == sorted(entries)
    for k, row in rows.items():
        e = entries[int(k)]
        t = e["timing"]
        assert int(row["samples"]) == e["samples"][1] - e["samples"][0]
        assert num(row["CPU s"]) == pytest.approx(t["cpu_s"], rel=1e-2)
        assert num(row["samples/s"]) == pytest.approx(int(row["samples"]) / (t["align_s"] + t["write_s"]), rel=1e-2)
        assert row["host"] == t["host"] and int(row["pid"]) == t["pid"]
    hosts = page.find("table", id="hosts-table").records()
    assert set(hosts) == {e["timing"]["host"] for e in entries.values()}
    assert sum(int(h["samples"]) for h in hosts.values()) == read_manifest(demo_cube)["n_samples"]


def test_an_incomplete_build_is_said_not_hidden(demo_cube: Path) -> None:
    manifest, entries = block_entries(demo_cube)
    q = quality(demo_cube, entries={k: v for k, v in entries.items() if k != 3}, manifest=manifest)
    assert q.n_blocks == 4 and len(q.blocks) == 3
    assert any(n.startswith("incomplete build: 3 of 4 blocks done") for n in q.notes)
    q = quality(demo_cube, entries={}, manifest=None)
    assert q.n_blocks is None and not q.missing and any("no build manifest found" in n for n in q.notes)


# -- the file ----------------------------------------------------------------------------------------------------------
def test_replaces_its_own_report_and_refuses_anything_else(demo_cube: Path, report: Path, tmp_path: Path,
                                                          capsys) -> None:
    copy = tmp_path / "ours.html"
    copy.write_bytes(report.read_bytes())
    inode = copy.stat().st_ino
    assert main(["report", str(demo_cube), "--html", str(copy)]) == 0  # a report of ours: replaced
    assert is_report_html(copy) and copy.stat().st_ino != inode  # a new file, renamed over the old one
    assert [p.name for p in tmp_path.iterdir()] == ["ours.html"]  # no temporary file left behind
    mine = tmp_path / "mine.html"
    mine.write_text('<html><head><meta name="generator" content="Hugo 0.1"></head><body>my page</body></html>')
    folder = tmp_path / "folder.html"
    folder.mkdir()
    before = mine.read_bytes()
    capsys.readouterr()
    for target, message in ((mine, "is not a data-quality report written by eo-dataset report; it is left untouched"),
                            (folder, "is a folder; it is left untouched"),
                            (tmp_path / "report.txt", "expected a .html file name")):
        assert main(["report", str(demo_cube), "--html", str(target)]) == 2
        captured = capsys.readouterr()
        assert message in captured.err and captured.err.count("\n") == 1 and "Traceback" not in captured.err
        assert captured.out == ""  # refused before any work
    assert mine.read_bytes() == before and folder.is_dir() and not any(folder.iterdir())
    assert not (tmp_path / "report.txt").exists()


def test_is_report_html(tmp_path: Path) -> None:
    cases = {"ours.html": f'<!DOCTYPE html><html><head><meta name="generator" content="{GENERATOR}">',
             "old.html": '<html><head><meta content="eo-dataset report 0.0.1" name="generator"></head></html>',
             "other.html": '<html><head><meta name="generator" content="pandoc"></head></html>',
             "said.html": "<html><body>eo-dataset report</body></html>", "empty.html": ""}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "binary.html").write_bytes(b"\xff\xfe\x00garbage")
    assert {p.name for p in tmp_path.iterdir() if is_report_html(p)} == {"ours.html", "old.html"}
    assert not is_report_html(tmp_path / "absent.html")




def test_a_cube_served_over_http_gives_the_same_report(demo_cube: Path, page: Node, tmp_path: Path) -> None:
    pytest.importorskip("aiohttp")
    with serve_folder(demo_cube.parent) as base:
        url = f"{base}/{demo_cube.name}"
        out = tmp_path / "remote.html"
        assert main(["report", url, "--html", str(out)]) == 0
    remote = parse(out)
    assert url in remote.find("title").text()
    for table in page.iter("table"):
        if table.attrs.get("id") in ("blocks-table", "hosts-table"):
            continue  # formatting of the same timings; compared below
        key = table.attrs.get("id") or f"{table.attrs['class']}/{table.attrs['data-modality']}"
        match = [t for t in remote.iter("table") if (t.attrs.get("id") or
                                                     f"{t.attrs.get('class')}/{t.attrs.get('data-modality')}") == key]
        assert len(match) == 1 and match[0].rows() == table.rows(), key
    assert remote.find("table", id="blocks-table").rows() == page.find("table", id="blocks-table").rows()
