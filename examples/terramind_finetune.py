"""TerraMind-1.0 backbone on a cube: convert, embed, fine-tune a land-cover head, save, reload.

    python examples/terramind_finetune.py --weights TerraMind_v1_tiny.pt --cube demo.zarr --work tm-work
    python examples/terramind_finetune.py --cube demo.zarr --work tm-work   # offline, no weights: random ones

``--weights``: TerraMind's ``TerraMind_v1_<size>.pt`` (download it where the Hub is reachable, e.g.
``eo-models pull ibm-esa-geospatial/TerraMind-1.0-tiny``) or its repo id; converted into ``WORK/backbone`` with
``eo-models convert terramind``'s function. Without it the example builds TerraMind-tiny's architecture with random
weights (the whole path runs, the numbers mean nothing). The cube needs ``s2l2a`` and ``lulc`` (the demo cube has
both: ``eo-dataset demo``). Writes ``WORK/tuned`` (the fine-tuned backbone) and ``WORK/head.safetensors``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from eo_dataset.torch import CubeDataset
from eo_models.backbones.terramind import BackboneInput, TerraMindBackbone, TerraMindConfig
from eo_models.convert.terramind import modality_config, table
from eo_models.convert.terramind_backbone import convert_backbone


def random_tiny() -> TerraMindBackbone:
    """TerraMind-tiny's architecture (192 wide, 12 blocks of 3 heads, GELU MLP with biases) with random weights and
    one input, S2 L2A pixels."""
    entry = table()["tokenizers"]["S2L2A"]
    s2 = BackboneInput(name=entry["modality"], kind="pixels", upstream="untok_sen2l2a@224",
                       modality=modality_config("S2L2A", entry))
    return TerraMindBackbone(TerraMindConfig(inputs=(s2,), dim=192, depth=12, heads=3, hidden=768,
                                             name="random-terramind-tiny").to_dict())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cube", required=True, help="an eo-dataset cube with s2l2a and lulc (e.g. demo.zarr)")
    p.add_argument("--work", required=True, help="a new folder for the converted and fine-tuned backbones")
    p.add_argument("--weights", help="TerraMind_v1_<size>.pt or its Hub repo id (default: random weights)")
    p.add_argument("--steps", type=int, default=20, help="fine-tuning steps (default 20)")
    p.add_argument("--batch-size", type=int, default=4)
    args = p.parse_args()
    torch.manual_seed(0)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    if args.weights:
        backbone = convert_backbone(args.weights, work / "backbone").model
    else:
        backbone = random_tiny()
        print("no --weights: TerraMind-tiny's architecture with random weights (the numbers below mean nothing)")
    print(repr(backbone))

    # embeddings of every sample: 224 px centre crops, the cube's stored values
    ds = CubeDataset(args.cube, ["s2l2a", "lulc"], crop=224, crop_mode="center", normalize=False)
    bands = {m: ds.info[m].meta.bands for m in ds.modalities}
    pooled = []
    for batch in DataLoader(ds, batch_size=args.batch_size, collate_fn=ds.collate_fn):
        pooled.append(backbone.embed(**backbone.inputs_of(batch, bands)).pooled)
    print(f"embeddings: {tuple(torch.cat(pooled).shape)} pooled")

    # fine-tuning: one land-cover class per 16 x 16 px token (the class at its centre pixel)
    train = CubeDataset(args.cube, ["s2l2a", "lulc"], crop=224, normalize=False)
    classes = sorted(train.info["lulc"].meta.classes)
    index = torch.full((max(classes) + 1,), -100)
    index[classes] = torch.arange(len(classes))
    head = torch.nn.Linear(backbone.dim, len(classes))
    optimizer = torch.optim.AdamW([*backbone.parameters(), *head.parameters()], lr=1e-4, weight_decay=0.05)
    backbone.train()
    losses, step, start = [], 0, time.perf_counter()
    while step < args.steps:
        for batch in DataLoader(train, batch_size=args.batch_size, shuffle=True, collate_fn=train.collate_fn):
            out = backbone(**backbone.inputs_of(batch, bands))
            logits = head(out.tokens["s2l2a_pixels"])
            centre = batch["lulc"][:, 0, 8::16, 8::16].long()
            ok = batch["lulc_valid"][:, 8::16, 8::16] & batch["lulc_available"][:, None, None]
            target = torch.where(ok, index[centre.clamp(0, max(classes))], -100)
            loss = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-100)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss))
            step += 1
            if step == args.steps:
                break
    print(f"fine-tuned {step} steps in {time.perf_counter() - start:.1f} s: loss {losses[0]:.3f} -> {losses[-1]:.3f}")

    backbone.save_pretrained(work / "tuned")
    save_file(head.state_dict(), work / "head.safetensors")
    again = TerraMindBackbone.from_pretrained(work / "tuned")
    batch = ds.collate_fn([ds[0]])
    same = torch.equal(backbone.embed(**backbone.inputs_of(batch, bands)).pooled,
                       again.embed(**again.inputs_of(batch, bands)).pooled)
    print(f"saved {work / 'tuned'} and {work / 'head.safetensors'}; reloaded embeddings equal: {same}")


if __name__ == "__main__":
    main()
