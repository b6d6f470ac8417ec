"""The baseline networks: MLP late fusion (unimodal with one modality) and a small U-Net, each with three heads
(per-cell segmentation logits, per-sample composition logits, per-sample regression), saved and loaded with
``save_pretrained`` / ``from_pretrained`` (``config.json`` + ``model.safetensors`` + a model card ``README.md``) like
every eo_models model: a kind of the hub layer (``baseline``: ``eo-models push``, ``pull``, the registry).

Inputs are ``{modality: (B, C, G, G)}`` on the task grid and ``{modality: (B,) bool}`` availability; a missing
modality's input is zeroed here whatever it holds, and its flag is 0.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub import ModelCard, PyTorchModelHubMixin
from torch import Tensor, nn

from eo_models.baselines.config import BaselineConfig
from eo_models.errors import CheckpointError, ConfigError
from eo_models.hub.card import CardContent, build_card, render_card
from eo_models.hub.resolve import local_or_hub


@dataclass
class BaselineOutput:
    """``seg (B, K, G, G)`` logits, ``composition (B, K)`` logits, ``height (B,)`` in target units,
    ``embedding (B, D)`` pooled features."""

    seg: Tensor
    composition: Tensor
    height: Tensor
    embedding: Tensor


def _encoder(kind: str, cin: int, dim: int) -> nn.Module:
    k, p = (3, 1) if kind == "conv" else (1, 0)
    return nn.Sequential(nn.Conv2d(cin, dim, k, padding=p), nn.GELU(), nn.Conv2d(dim, dim, k, padding=p), nn.GELU())


def _block(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.GELU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.GELU())


class BaselineModel(nn.Module, PyTorchModelHubMixin, library_name="eo-models",
                    tags=["earth-observation", "4m4eo", "baseline"],
                    coders={BaselineConfig: (BaselineConfig.to_dict, BaselineConfig.from_dict)}):
    """A supervised baseline (see :mod:`eo_models.baselines.config` for the kinds).

    Args:
        config: A :class:`BaselineConfig` or its dict.
    """

    def __init__(self, config: dict[str, Any] | BaselineConfig) -> None:
        super().__init__()
        self.cfg = BaselineConfig.from_dict(config)
        cfg = self.cfg
        if not cfg.modalities or len(cfg.modalities) != len(cfg.channels):
            raise ConfigError(f"baseline config: modalities {list(cfg.modalities)} and channels {list(cfg.channels)}"
                              " must be given, one channel count per modality")
        m, d, h, k = len(cfg.modalities), cfg.dim, cfg.head_dim, cfg.classes
        if cfg.kind == "late":
            self.encoders = nn.ModuleDict({name: _encoder(cfg.encoder, c, d)
                                           for name, c in zip(cfg.modalities, cfg.channels, strict=True)})
            width = m * d + m
            self.seg_head = nn.Sequential(nn.Conv2d(width, h, 1), nn.GELU(), nn.Conv2d(h, k, 1))
        else:
            cin = sum(cfg.channels) + m
            self.down1, self.down2, self.mid = _block(cin, d), _block(d, 2 * d), _block(2 * d, 4 * d)
            self.up2, self.up1 = _block(6 * d, 2 * d), _block(3 * d, d)
            self.seg_head = nn.Conv2d(d, k, 1)
            width = 4 * d
        self.pool_head = nn.Sequential(nn.Linear(width, h), nn.GELU(), nn.Linear(h, k + 1))
        self.embedding_dim = width

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike[str], *args: Any,
                        **kwargs: Any) -> BaselineModel:
        """The library's ``from_pretrained`` after :func:`eo_models.hub.resolve.local_or_hub` (a local path that is
        no folder fails at once)."""
        where = local_or_hub(pretrained_model_name_or_path, what="baseline model",
                             writer="train_baseline (eo-models experiment fusion-vs-late)")
        return super().from_pretrained(where, *args, **kwargs)

    def generate_model_card(self, *args: Any, metrics: dict[str, Any] | None = None, **kwargs: Any) -> ModelCard:
        """A model card stating inputs (channels, normalisation), tasks and classes, training cube and metrics."""
        return build_card(card_content(self.cfg, sum(p.numel() for p in self.parameters()), metrics))

    def flags(self, available: Mapping[str, Tensor], batch: int, device: torch.device) -> Tensor:
        """``(B, M)`` float availability flags in the model's modality order (absent keys: missing)."""
        cols = [available[n].to(device=device, dtype=torch.float32) if n in available
                else torch.zeros(batch, device=device) for n in self.cfg.modalities]
        return torch.stack(cols, 1)

    def forward(self, inputs: Mapping[str, Tensor], available: Mapping[str, Tensor]) -> BaselineOutput:
        """Predictions from ``inputs`` (modalities the model does not know are ignored; missing ones zero-filled)."""
        first = next(iter(inputs.values()))
        b, g = first.shape[0], first.shape[-1]
        flags = self.flags(available, b, first.device)
        xs = []
        for i, name in enumerate(self.cfg.modalities):
            x = inputs.get(name)
            if x is None:
                x = torch.zeros(b, self.cfg.channels[i], g, g, device=first.device)
            xs.append(x.float() * flags[:, i, None, None, None])
        grid_flags = flags[:, :, None, None].expand(-1, -1, g, g)
        if self.cfg.kind == "late":
            feats = [enc(x) * flags[:, i, None, None, None] for i, (enc, x) in enumerate(zip(self.encoders.values(),
                                                                                          xs, strict=True))]
            fused = torch.cat([*feats, grid_flags], 1)
            seg = self.seg_head(fused)
            pooled = fused.mean((2, 3))
        else:
            x = torch.cat([*xs, grid_flags], 1)
            s1 = self.down1(x)
            s2 = self.down2(F.max_pool2d(s1, 2, ceil_mode=True))
            mid = self.mid(F.max_pool2d(s2, 2, ceil_mode=True))
            u2 = self.up2(torch.cat([F.interpolate(mid, size=s2.shape[-2:], mode="nearest"), s2], 1))
            u1 = self.up1(torch.cat([F.interpolate(u2, size=s1.shape[-2:], mode="nearest"), s1], 1))
            seg = self.seg_head(u1)
            pooled = mid.mean((2, 3))
        out = self.pool_head(pooled)
        height = out[:, -1] * self.cfg.height_std + self.cfg.height_mean
        return BaselineOutput(seg=seg, composition=out[:, :-1], height=height, embedding=pooled)


CARD_TITLE = "# 4M4EO baseline: "  #: the start of every baseline's card title
KIND_NAMES = {"late": "MLP late fusion", "unet": "U-Net"}


def kind_name(cfg: BaselineConfig) -> str:
    """``MLP late fusion``, ``unimodal`` (late fusion of one modality) or ``U-Net``."""
    return "unimodal" if cfg.kind == "late" and len(cfg.modalities) == 1 else KIND_NAMES[cfg.kind]


def card_content(cfg: BaselineConfig, parameters: int, metrics: dict[str, Any] | None = None) -> CardContent:
    """What a baseline's card says: inputs (channels, their names, normalisation), tasks with the class table,
    architecture, training cube (recipe hash) and training, metrics."""
    d = cfg.trained_on
    inputs = ["| modality | channels | channel names |", "|---|---:|---|"]
    for m, c in zip(cfg.modalities, cfg.channels, strict=True):
        inputs.append(f"| {m} | {c} | {', '.join(d.channel_names.get(m, ())) or 'not recorded'} |")
    inputs += ["", f"- normalisation: {d.normalisation or 'not recorded (the inputs as the caller prepared them)'}",
               "- shape: `{modality: (B, C, G, G)}` on the task grid, availability `{modality: (B,) bool}`; a missing "
               "modality is zero-filled and flagged"]
    grid = f"{d.grid} x {d.grid} cells" if d.grid else "the task grid"
    target = f"{d.target or 'the target'}{f' in {d.units}' if d.units else ''}"
    tasks = [f"- segmentation: {cfg.classes} classes per cell of {grid}"
             f"{f' (label modality {d.label})' if d.label else ''}, `out.seg` logits `(B, {cfg.classes}, G, G)`",
             "- composition: which classes a sample holds (multi-label), `out.composition` logits "
             f"`(B, {cfg.classes})`",
             f"- regression: the sample's mean of {target}, `out.height` `(B,)`, trained standardised with mean "
             f"{cfg.height_mean:.6g} and std {cfg.height_std:.6g}",
             ""]
    if d.class_names:
        tasks += ["| class id | name |", "|---:|---|", *(f"| {i} | {n} |" for i, n in enumerate(d.class_names))]
    else:
        tasks.append(f"- class names: not recorded (class ids 0 to {cfg.classes - 1})")
    width = (cfg.dim + 1) * len(cfg.modalities) if cfg.kind == "late" else 4 * cfg.dim
    arch = [f"- kind: {kind_name(cfg)} (`{cfg.kind}`), encoder `{cfg.encoder}`, width {cfg.dim}, head width "
            f"{cfg.head_dim}, embedding {width} wide, {parameters:,} parameters"]
    t = cfg.train
    training = [f"- cube: {d.cube or 'not recorded'}", f"- cube recipe hash: {d.recipe_hash or 'not recorded'}",
                f"- config: {cfg.name}, {t.steps} steps, batch {t.batch_size}, lr {t.lr:g} (warm-up {t.warmup}, "
                f"cosine), modality dropout {cfg.modality_dropout:g}, seed {cfg.seed}"]
    return CardContent(
        title=f"{CARD_TITLE}{kind_name(cfg)} ({'+'.join(cfg.modalities)})",
        summary=(f"A supervised {kind_name(cfg)} baseline of 4M4EO over {', '.join(cfg.modalities)}: per-cell "
                 "segmentation, per-sample composition and a per-sample regression, the reference the fusion model "
                 "is compared with."),
        tags=("earth-observation", "4m4eo", "baseline", cfg.kind, *cfg.modalities),
        sections=(("Inputs", tuple(inputs)), ("Tasks", tuple(tasks)), ("Architecture", tuple(arch)),
                  ("Training", tuple(training))),
        metrics=metrics, recipe_hash=d.recipe_hash,
        usage=("from eo_models.baselines.model import BaselineModel",
               "model = BaselineModel.from_pretrained(\"<this repo or folder>\").eval()",
               "out = model(inputs, available)  # {modality: (B, C, G, G)}, {modality: (B,) bool}",
               "out.seg, out.composition, out.height, out.embedding"))


def model_card(cfg: BaselineConfig, parameters: int, metrics: dict[str, Any] | None = None) -> str:
    """The markdown of a baseline's card (:func:`card_content` rendered by :mod:`eo_models.hub.card`)."""
    return render_card(card_content(cfg, parameters, metrics))


def load_baseline(model: BaselineModel | str | os.PathLike[str]) -> BaselineModel:
    """A baseline object as it is, or loaded from a folder written by ``save_pretrained``.

    Raises:
        CheckpointError: it cannot be loaded.
    """
    if isinstance(model, BaselineModel):
        return model
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # huggingface_hub prints "Loading weights from local ..."
            return BaselineModel.from_pretrained(os.fspath(model))
    except Exception as exc:  # huggingface_hub, safetensors and torch raise many types
        raise CheckpointError(f"cannot load the baseline model {os.fspath(model)!r} ({type(exc).__name__}); train it "
                              "again (eo-models experiment fusion-vs-late reruns what is missing)") from exc
