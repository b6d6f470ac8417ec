"""The conversion commands of ``eo-models``: ``convert terramind``.

    eo-models convert terramind --from ibm-esa-geospatial/TerraMind-1.0-Tokenizer-S2L2A --out tm-s2l2a
    eo-models convert terramind --from TerraMind_Tokenizer_S2L2A.pt --out tm-s2l2a
    eo-models convert terramind --from TerraMind_v1_tiny.pt --out tm-tiny

A tokenizer or a backbone: told by ``--tokenizer`` / ``--size``, else by the repo or file name, else (a renamed
file) by its tensors.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


def _terramind(args: argparse.Namespace) -> None:
    from eo_models.convert.terramind import convert_tokenizer
    from eo_models.convert.terramind_backbone import convert_backbone, source_kind

    if source_kind(args.source, tokenizer=args.tokenizer, size=args.size) == "backbone":
        b = convert_backbone(args.source, args.out, size=args.size, revision=args.revision, cache_dir=args.cache_dir)
        cfg = b.model.cfg
        inputs = ", ".join(f"{i.name} ({i.kind})" for i in cfg.inputs)
        print(f"TerraMind-1.0 {b.name} backbone -> {b.out}: {cfg.dim} wide, {cfg.depth} blocks; inputs {inputs}; "
              "load with eo_models.backbones.terramind.TerraMindBackbone.from_pretrained")
        return
    r = convert_tokenizer(args.source, args.out, name=args.tokenizer, revision=args.revision,
                          cache_dir=args.cache_dir, sample_steps=args.sample_steps)
    tok = r.tokenizer
    print(f"TerraMind-1.0 {r.name} -> {r.out}: {tok.modality} ({', '.join(tok.cfg.modality.bands)}), "
          f"{tok.codebook_size} codes, {tok.patch} px per token; use with eo-models tokenize --tokenizers {r.out}")


def add_commands(command: Callable[[str, str, str], argparse.ArgumentParser],
                 workers: Callable[[argparse.ArgumentParser, str], None]) -> None:
    """Add ``convert`` (``command(name, help, example)`` makes a subparser)."""
    s = command("convert", "convert another project's weights into an eo-models folder",
                "eo-models convert terramind --from ibm-esa-geospatial/TerraMind-1.0-Tokenizer-S2L2A --out tm-s2l2a")
    sub = s.add_subparsers(dest="source_kind", required=True, metavar="SOURCE", help="where the weights come from "
                           "(required, no default; today: terramind)")
    t = sub.add_parser("terramind", help="a TerraMind-1.0 tokenizer (S2L2A, S1RTC, S1GRD, DEM, LULC) or backbone "
                       "(tiny, small, base, large; its encoder) (IBM & ESA, Apache-2.0)",
                       description="Convert a TerraMind-1.0 tokenizer's or backbone's .pt weights into an eo-models "
                       "folder (safetensors, config.json, a card naming the upstream licence and source). Which of "
                       "the two: --tokenizer / --size, else the repo or file name, else the file's tensors.",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  eo-models convert terramind --from "
                       "ibm-esa-geospatial/TerraMind-1.0-Tokenizer-S2L2A --out tm-s2l2a\n"
                       "  eo-models convert terramind --from TerraMind_v1_tiny.pt --out tm-tiny")
    t.add_argument("--from", dest="source", required=True, metavar="PATH_OR_REPO", help="TerraMind's .pt file "
                   "(TerraMind_Tokenizer_<MOD>.pt, TerraMind_v1_<size>.pt) or its Hub repo id (downloaded into the "
                   "Hub cache; offline: HF_HUB_OFFLINE=1 and a cached copy)")
    t.add_argument("--out", required=True, help="the folder to write (new, empty, or one this command wrote)")
    t.add_argument("--tokenizer", metavar="NAME", help="which TerraMind tokenizer the weights are (S2L2A, S1RTC, "
                   "S1GRD, DEM, LULC), when the file or repo name does not say")
    t.add_argument("--size", metavar="SIZE", help="which TerraMind backbone the weights are (tiny, small, base, "
                   "large), when the file or repo name does not say")
    t.add_argument("--revision", help="with a repo id: the Hub revision (branch, tag or commit; default: main)")
    t.add_argument("--cache-dir", help="with a repo id: the Hugging Face cache folder (default: huggingface_hub's, "
                   "$HF_HUB_CACHE)")
    t.add_argument("--sample-steps", type=int, default=50, metavar="N", help="DDIM steps the decoder takes when "
                   "not told (default: 50, TerraMind's)")
    t.set_defaults(func=_terramind)
