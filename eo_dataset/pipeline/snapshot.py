"""Item snapshots: freeze a recipe's searches into one stac-geoparquet file.

``eo-dataset snapshot RECIPE --region ... --out items.parquet`` runs exactly the searches a build of those samples
would run (per block of ``build.shard_samples`` samples and per modality: the block's lon/lat box, the rule's time
window, the modality's ``query`` and ``filter``) and writes the union of the items found, unsigned, with
stac-geoparquet. A build then runs from the snapshot alone (``--source NAME=items.parquet``, or a source of type
``geoparquet``) and picks the same items, so a corpus is reproducible item for item.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pystac
import shapely

from eo_dataset._version import __version__
from eo_dataset.engine.select import search_bbox, search_window
from eo_dataset.errors import SourceError
from eo_dataset.outputs import check_output_file
from eo_dataset.sources import open_source
from eo_dataset.sources.signing import redact_urls
from eo_dataset.spec.grid import Sample
from eo_dataset.spec.recipe import Recipe

METADATA_KEY = b"eo-dataset"


@dataclass(frozen=True)
class SnapshotReport:
    """What a snapshot holds."""

    path: Path
    n_items: int
    per_collection: dict[str, int]
    n_searches: int
    seconds: float
    failed: dict[str, str] = field(default_factory=dict)  # "<modality> block <i>" -> why the search failed


def snapshot_items(recipe: Recipe, samples: Sequence[Sample], *, modalities: Sequence[str] | None = None,
                   progress: Callable[[int, int], None] | None = None) -> tuple[list[pystac.Item], int, dict]:
    """Run a build's searches and return the distinct items found (in first-found order).

    Args:
        recipe: The recipe.
        samples: The samples a build would build, in cube order (they are blocked as the build blocks them).
        modalities: Only these modalities (default all).
        progress: Called with (searches done, total).

    Returns:
        (items, number of searches, failures: ``"<modality> block <i>"`` -> reason).
    """
    names = list(modalities or recipe.read_modalities)  # derived modalities search nothing
    unknown = sorted(set(names) - set(recipe.read_modalities))
    if unknown:
        raise SourceError(f"--modalities names {unknown}, but the recipe's modalities read from sources are "
                          f"{sorted(recipe.read_modalities)}")
    b = recipe.build.shard_samples
    blocks = [samples[i:i + b] for i in range(0, len(samples), b)]
    total = len(blocks) * len(names)
    seen: dict[tuple[str, str], pystac.Item] = {}
    failed: dict[str, str] = {}
    done = 0
    for bi, block in enumerate(blocks):
        bbox = search_bbox(shapely.union_all([s.footprint() for s in block]).bounds)
        for name in names:
            m = recipe.modalities[name]
            start, end = search_window(recipe, m)
            try:
                found = open_source(recipe.sources[m.source]).search(m.collection.name, bbox, start, end, m.query,
                                                                      m.filter)
            except Exception as exc:  # record it; a snapshot with holes is reported, not silently written
                failed[f"{name} block {bi}"] = redact_urls(str(exc))
                found = []
            for item in found:
                seen.setdefault((item.collection_id or "", item.id), item)
            done += 1
            if progress:
                progress(done, total)
    return list(seen.values()), total, failed


def write_snapshot(items: Sequence[pystac.Item], out: str | Path, *, metadata: dict[str, Any] | None = None) -> Path:
    """Write items as stac-geoparquet (GeoParquet 1.1), with ``metadata`` under the file's ``eo-dataset`` key.

    Raises:
        SourceError: nothing to write.
    """
    import pyarrow.parquet as pq
    from stac_geoparquet.arrow import parse_stac_items_to_arrow, to_parquet

    out = check_output_file(out, what=SNAPSHOT, is_ours=_is_snapshot)
    if not items:
        raise SourceError("the searches found no items, so there is nothing to snapshot; check the region, the "
                          "time window and the recipe's sources")
    tmp = out.with_name(out.name + ".tmp")
    dicts = [i.to_dict(include_self_link=False, transform_hrefs=False) for i in items]
    to_parquet(parse_stac_items_to_arrow(dicts), tmp)
    if metadata:
        table = pq.read_table(tmp)
        meta = dict(table.schema.metadata or {})
        meta[METADATA_KEY] = json.dumps(metadata).encode()
        pq.write_table(table.replace_schema_metadata(meta), tmp)
    tmp.replace(out)
    return out


SNAPSHOT = "snapshot written by eo-dataset"


def _is_snapshot(path: Path) -> bool:
    """Whether a file is a snapshot this package wrote (a parquet file with our metadata key)."""
    try:
        return bool(snapshot_metadata(path))
    except Exception:  # not parquet at all
        return False


def snapshot_metadata(path: str | Path) -> dict[str, Any]:
    """The ``eo-dataset`` metadata of a snapshot (recipe name/hash, region, when), or {} if it has none."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta[METADATA_KEY]) if METADATA_KEY in meta else {}


def snapshot(recipe: Recipe, samples: Sequence[Sample], out: str | Path, *, modalities: Sequence[str] | None = None,
             progress: Callable[[int, int], None] | None = None) -> SnapshotReport:
    """Freeze a recipe's searches over ``samples`` into a stac-geoparquet file.

    Args:
        recipe: The recipe (its sources are searched: STAC APIs, static catalogs or other snapshots).
        samples: The samples a build would build.
        out: The ``.parquet`` file to write.
        modalities: Only these modalities (default all).
        progress: Called with (searches done, total).

    Raises:
        SourceError: a source cannot be opened, or nothing was found.
    """
    t0 = time.perf_counter()
    check_output_file(out, what=SNAPSHOT, is_ours=_is_snapshot)  # before searching: fail fast, lose no work
    items, n_searches, failed = snapshot_items(recipe, samples, modalities=modalities, progress=progress)
    ids = [s.id for s in samples]
    meta = {"recipe": recipe.name, "recipe_hash": recipe.hash, "eo_dataset_version": __version__,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "n_samples": len(ids),
            "first_sample": ids[0] if ids else None, "last_sample": ids[-1] if ids else None,
            "modalities": list(modalities or recipe.read_modalities),
            "sources": {k: redact_urls(v.href) for k, v in recipe.sources.items()},
            "failed_searches": failed}
    path = write_snapshot(items, out, metadata=meta)
    per: dict[str, int] = {}
    for item in items:
        per[item.collection_id or ""] = per.get(item.collection_id or "", 0) + 1
    return SnapshotReport(path, len(items), dict(sorted(per.items())), n_searches, time.perf_counter() - t0, failed)
