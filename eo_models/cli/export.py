"""The export command of ``eo-models``: ``export --onnx``, the encoder of a tokenizer or a fusion model as ONNX.

    eo-models export --onnx eo-tokenizers/s2l2a-fsq-gan --out s2l2a-encoder.onnx
    eo-models export --onnx eo-fusion/tiny --modalities s2l2a,s1rtc --out fusion-encoder.onnx
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable


def _shape(spec: list) -> str:
    shape, dtype = spec
    return f"({', '.join(map(str, shape))}) {dtype}"


def _export(args: argparse.Namespace) -> None:
    from eo_models.export.onnx import export_onnx

    modalities = [m.strip() for m in args.modalities.split(",") if m.strip()] if args.modalities else None
    r = export_onnx(args.onnx, args.out, modalities=modalities, size=args.size, opset=args.opset)
    what = f"tokenizer encoder of {r.metadata['modality']}" if r.kind == "tokenizer" else "fusion encoder"
    ins = ", ".join(f"{n} {_shape(s)}" for n, s in r.inputs.items())
    outs = ", ".join(f"{n} {_shape(s)}" for n, s in r.outputs.items())
    print(f"{r.path}: {what}; inputs {ins} -> outputs {outs}")
    check = f"max abs diff {max(r.max_abs_diff.values()):.2g}"
    if r.tokens_equal is not None:
        check += f", {r.tokens_equal[0]} of {r.tokens_equal[1]} token ids equal"
    print(f"checked with onnxruntime against torch on a batch of 3: {check}")
    if r.kind == "tokenizer":
        norm = json.loads(r.metadata["normalisation"])
        bands = ", ".join(json.loads(r.metadata["bands"]))
        print(f"feed it stored {r.metadata['modality']} values as float32 (bands {bands}; normalised inside: "
              f"{norm['formula']}); the metadata says the rest (onnxruntime: "
              "session.get_modelmeta().custom_metadata_map)")
    else:
        print("feed it token ids per modality (-1 where there is no token); the metadata says the rest "
              "(onnxruntime: session.get_modelmeta().custom_metadata_map)")


def add_commands(command: Callable[[str, str, str], argparse.ArgumentParser]) -> None:
    """Add the ``export`` command (``command(name, help, example)`` makes a subparser)."""
    s = command("export", "write the encoder of a tokenizer or a fusion model to a file for other runtimes (ONNX)",
                "eo-models export --onnx eo-tokenizers/s2l2a-fsq-gan --out s2l2a-encoder.onnx")
    fmt = s.add_mutually_exclusive_group(required=True)
    fmt.add_argument("--onnx", metavar="MODEL", help="export MODEL to ONNX: an image tokenizer folder "
                     "(train-tokenizer), a fusion model folder (train-fusion), or a Hub repo id org/name of either; "
                     "a tokenizer's file maps stored values and valid mask to token ids, a fusion model's maps token "
                     "ids to embeddings; checked with onnxruntime before it is written (required, no default: the "
                     "only format)")
    s.add_argument("--out", required=True, metavar="FILE", help="the .onnx file to write (weights inside); an "
                   "existing file is replaced only if eo-models export wrote it")
    s.add_argument("--modalities", help="fusion model: comma-separated modalities the encoder reads, one input each "
                   "(default: all of the model's)")
    s.add_argument("--size", type=int, metavar="PX", help="tokenizer: side of the input in the modality's pixels, a "
                   "multiple of the tokenizer's patch (default: what 'eo-models tokenize' reads from a 264 px sample "
                   "at 10 m, e.g. 264 for patch 8 at 10 m)")
    s.add_argument("--opset", type=int, default=17, metavar="N", help="ONNX opset (default: 17)")
    s.set_defaults(func=_export)
