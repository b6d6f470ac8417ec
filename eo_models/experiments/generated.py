"""The figure of generated modalities next to the truth: the fusion model generates one input modality of a few test
samples from the others (MaskGIT, greedy), and both the true tokens and the generated ones are decoded by the same
tokenizer (so the figure compares what the fusion model predicts, not the tokenizer's own loss); first band shown,
both panels on the truth's 2-98 % range."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from eo_models.fusion.generation import Schedule, generate
from eo_models.fusion.model import FusionModel
from eo_models.tokenizers.tokenizer import load_tokenizer
from eo_models.tokens.dataset import TokenDataset


@torch.no_grad()
def generated_figure(model: FusionModel, store: str | os.PathLike[str], tokenizer: str | os.PathLike[str],
                     target: str, sources: Sequence[str], rows: np.ndarray, path: Path, stamp: str,
                     limit: int = 4) -> list[int]:
    """Draw ``target`` generated from ``sources`` beside its true tokens, decoded, for up to ``limit`` of ``rows``
    that have the target and a source; returns the rows drawn (none: no figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = TokenDataset(store)
    chosen = [int(i) for i in rows if ds.availability[i, ds.modalities.index(target)]
              and any(ds.availability[i, ds.modalities.index(s)] for s in sources)][:limit]
    if not chosen:
        return []
    items = ds.__getitems__(chosen)
    batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
    ids = generate(model.eval(), batch, [target], conditioning=list(sources),
                   schedule=Schedule(steps=4, temperature=0.0), generator=torch.Generator().manual_seed(0))[target]
    tok = load_tokenizer(tokenizer).eval()
    grid = model.cfg.modality(target).grid
    truth = tok.head.predict(tok.detokenize(batch[target].reshape(-1, *grid))).float()[:, 0].numpy()
    gen = tok.head.predict(tok.detokenize(ids.reshape(-1, *grid))).float()[:, 0].numpy()
    fig, axes = plt.subplots(2, len(chosen), figsize=(2.2 * len(chosen), 4.6), dpi=100, squeeze=False)
    for j in range(len(chosen)):
        lo, hi = np.percentile(truth[j], [2, 98])
        for i, (img, name) in enumerate(((truth[j], "truth (tokens decoded)"), (gen[j], "generated"))):
            axes[i, j].imshow(img, vmin=lo, vmax=hi if hi > lo else lo + 1, cmap="gray")
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            if j == 0:
                axes[i, j].set_ylabel(name, fontsize=8)
    fig.suptitle(f"{target} (band 1) generated from {', '.join(sources)}", fontsize=9)
    fig.text(0.01, 0.01, stamp, fontsize=5, color="0.4")
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    fig.savefig(path)
    plt.close(fig)
    return chosen
