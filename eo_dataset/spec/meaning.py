"""What a modality *is*, as data: its kind, the transform its values are modelled in, how it is drawn, and what a
caption may say about it. These come from the collection YAML (``catalogs/collections/*.yaml``), travel into the
cube's attrs (:mod:`eo_dataset.cube.schema`) and from there to every reader: the loader, the tokenizers, the
quicklooks. No code path looks at a modality's or a collection's *name* to decide what to do with it.

In a collection YAML::

    kind: continuous            # continuous | categorical | multilabel (| text, for derived stores)
    transform: db               # optional: model SAR power in decibels, 10 log10(x)
    caption_role: elevation     # optional: land_cover | elevation | canopy | osm
    display:                    # optional: how to draw it
      rgb: [B04, B03, B02]      #   three bands as red, green, blue ...
      range: [0, 0.3]           #   ... physical values (after the transform) mapped to the colour scale
      # band: vv, colormap: gray, hillshade: true, or, for classes and layers, colours: {10: "#006400", ...}
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: The one vocabulary of modality kinds: ``continuous`` (physical values, normalised per band), ``categorical``
#: (one band of class ids with a class table), ``multilabel`` (0/1 presence layers, e.g. OpenStreetMap),
#: ``text`` (a sequence, e.g. captions).
Kind = Literal["continuous", "categorical", "multilabel", "text"]
#: A transform of physical values before they are modelled: ``db`` is ``10 log10(max(x, 1e-6))`` for SAR power.
Transform = Literal["db"]
#: What a caption may take from a modality.
CaptionRole = Literal["land_cover", "elevation", "canopy", "osm"]
#: Kinds that older cubes and collection files spell otherwise.
KIND_ALIASES = {"osm": "multilabel"}


class DisplaySpec(BaseModel):
    """How a modality is drawn (quicklooks, the browser, comparison figures). Exactly one style applies:

    - ``rgb``: three band names as red, green, blue;
    - ``band``: one band with a matplotlib ``colormap`` (``hillshade`` shades it as terrain);
    - ``colours``: a colour per class id (categorical) or per layer (multilabel, drawn in this order, last on top).

    ``range`` maps physical values (after the modality's ``transform``) onto the colour scale; without it, the 2nd
    to 98th percentile of the sample is used.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    title: str | None = Field(None, description="what the picture shows, e.g. 'true colour'")
    rgb: tuple[str, str, str] | None = None
    band: str | None = None
    colormap: str | None = None
    range: tuple[float, float] | None = None
    hillshade: bool = False
    colours: dict[str, str] | None = Field(None, description="class id or layer name -> colour ('#rrggbb')")

    @field_validator("colours", mode="before")
    @classmethod
    def _keys_as_text(cls, v: Any) -> Any:  # class ids are written as YAML numbers
        return {str(k): c for k, c in v.items()} if isinstance(v, dict) else v

    @model_validator(mode="after")
    def _one_style(self) -> DisplaySpec:
        styles = [s for s, v in (("rgb", self.rgb), ("colours", self.colours)) if v]
        if len(styles) > 1:
            raise ValueError(f"give one of rgb or colours, found {' and '.join(styles)}")
        if self.range is not None and not self.range[0] < self.range[1]:
            raise ValueError(f"range: expected [LOW, HIGH] with LOW < HIGH, found {list(self.range)}")
        return self

    def bands_used(self) -> tuple[str, ...]:
        """The band names this spec refers to (to check them against the modality's bands)."""
        return tuple(self.rgb or ()) + ((self.band,) if self.band else ())
