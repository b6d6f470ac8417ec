"""``eo-dataset browse``: a local web page over a cube (overview with a map, filters and availability counts; a
page per sample with every modality drawn by its display spec, legends, valid masks, provenance), served by
FastAPI + uvicorn on 127.0.0.1, or written as a static site.

- :mod:`.index`: the per-sample table, the filters and what they match (counted and aggregated server-side);
- :mod:`.render`: the pictures (PNG at each modality's own pixel size), overlays, legends, token maps;
- :mod:`.browser`: :class:`CubeBrowser`, the cube and its attachments as JSON-able dicts and PNG bytes;
- :mod:`.generated`: a store of ``eo-models generate`` (``--generated``), checked against the cube;
- :mod:`.app`: the FastAPI app and the uvicorn server; :mod:`.export`: the static site; :mod:`.command`: the CLI.

Needs the ``browse`` extra (``pip install 'eo-dataset[browse]'``: FastAPI, uvicorn, matplotlib).
"""

from eo_dataset.view.browse.browser import CubeBrowser, NotFound
from eo_dataset.view.browse.command import browse

__all__ = ["CubeBrowser", "NotFound", "browse"]
