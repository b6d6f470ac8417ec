"""TerraMind-1.0's LULC tokenizer (a VQ-VAE: ViT-B encoder over a one-hot of 10 classes, FSQ 7-5-5-5-5, ViT-B
decoder to class logits) converted into an eo_models tokenizer.

Against the reference (terratorch's source in ``.terratorch``, ``bash .ci/terratorch.sh``; skipped without it, failed
in CI): terratorch's registered ``terramind_v1_tokenizer_lulc`` at full size with random weights
(``terramind_lulc_reference.py``), its state dict converted with ``eo-models convert terramind``; the one-hot the
head builds from the cube's class codes, the encoder latents, FSQ ids and decoder logits must equal terratorch's.
Without the reference: a TerraMind-layout LULC state dict from our own modules converts, reads its architecture
back, and tokenizes the demo cube's land cover end to end.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from eo_models.cli.main import main
from eo_models.convert.terramind import PREFIXES, architecture, convert_tokenizer, entry_for, tokenizer_config
from eo_models.errors import CheckpointError
from eo_models.tokenizers.tokenizer import Tokenizer
from tests.eo_models.convert.test_terramind import need_reference, reference_env, upstream_state_dict

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SCRIPT = Path(__file__).with_name("terramind_lulc_reference.py")
FILE = "TerraMind_Tokenizer_LULC.pt"
CODES = [0, 1, 2, 4, 5, 7, 8, 9, 10, 11]  #: io-lulc-annual-v02 codes of TerraMind's one-hot channels 0..9


def test_lulc_table_entry_maps_terramind_channels_to_the_cube_codes() -> None:
    _, entry = entry_for(None, FILE)
    assert entry["classes"] == CODES and entry["nodata"] == 0 and entry["levels"] == [7, 5, 5, 5, 5]
    assert entry["class_names"][7] == "snow/ice" and entry["class_names"][6] == "bare ground"


def test_converted_lulc_equals_terratorch(tmp_path: Path) -> None:
    """Full-size ViT-B/16 at 256 px, one sample: every intermediate to 1e-5 (measured: 0 for the one-hot, latents
    and quantised latents, about 2e-6 for the logits)."""
    need_reference()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 10, (1, 256, 256), generator=g)  # TerraMind's channel of each pixel
    valid = torch.rand((1, 256, 256), generator=g) > 0.05
    ids[~valid] = 0  # not valid: TerraMind's "no data" channel
    codes = torch.tensor(CODES)[ids]
    codes[~valid] = 255  # whatever a not-valid pixel holds in the cube: an unknown code here
    torch.save(ids, tmp_path / "ids.pt")
    (tmp_path / "spec.json").write_text(json.dumps({"seed": 5, "file": FILE, "inputs": str(tmp_path / "ids.pt")}))
    r = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "spec.json"), str(tmp_path)],
                       capture_output=True, text=True, timeout=600, env=reference_env())
    assert r.returncode == 0, r.stderr[-3000:]
    ref = torch.load(tmp_path / "ref.pt", weights_only=True)
    assert main(["convert", "terramind", "--from", str(tmp_path / FILE), "--out", str(tmp_path / "tm-lulc")]) == 0
    (tmp_path / FILE).unlink()  # 700 MB

    cfg = json.loads((tmp_path / "tm-lulc" / "config.json").read_text())
    assert cfg["decoder"] == {**cfg["decoder"], "type": "terramind_vit", "dim": 768, "layers_per_block": 12}
    assert cfg["encoder"] == {**cfg["encoder"], "type": "terramind_vit", "dim": 768, "depth": 12, "heads": 12,
                              "patch": 16, "latent_dim": 5}
    assert cfg["modality"]["classes"] == CODES and cfg["modality"]["embed_dim"] == 10
    assert "| 7 | 9 | snow/ice |" in (tmp_path / "tm-lulc" / "README.md").read_text()

    tok = Tokenizer.from_pretrained(tmp_path / "tm-lulc")
    back = {v: k for k, v in PREFIXES.items()}
    ours = {next(back[p] + k[len(p):] for p in back if k.startswith(p)): list(v.shape)
            for k, v in tok.state_dict().items() if not k.startswith("head.")}
    assert ours == ref["shapes"]  # exactly terramind_v1_tokenizer_lulc's tensors: the released weights load
    x = codes.unsqueeze(1)
    with torch.no_grad():
        onehot = tok.head.inputs(x, valid)
        latents = tok.encoder(onehot)
        q = tok.quantizer(latents)
    assert torch.equal(onehot, ref["onehot"])
    assert torch.equal(onehot, F.one_hot(ids, 10).permute(0, 3, 1, 2).float())
    assert latents.shape == ref["latents"].shape == (1, 5, 16, 16)
    assert (latents - ref["latents"]).abs().max() <= 1e-5
    assert (q.latents - ref["quant"]).abs().max() <= 1e-5
    assert torch.equal(tok.tokenize(x, valid), ref["tokens"])
    assert len(torch.unique(ref["tokens"])) > 8  # random weights spread the ids: the comparison means something
    logits = tok.detokenize(ref["tokens"])
    assert logits.shape == ref["logits"].shape == (1, 10, 256, 256)
    assert (logits - ref["logits"]).abs().max() <= 1e-5 and ref["logits"].std() > 0.1
    pred = tok.head.predict(logits)  # logits back to the cube's codes
    assert torch.equal(pred, torch.tensor(CODES)[ref["logits"].argmax(1)].unsqueeze(1))


# -- without the reference: TerraMind-layout LULC state dicts made from our own modules ----------------------------
def _lulc_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict laid out as TerraMind's LULC tokenizer file (small sizes), from eo_models' own modules."""
    _, entry = entry_for("LULC", "")
    arch = {"channels": 10, "encoder": {"type": "terramind_vit", "patch": 16, "dim": 64, "depth": 1, "heads": 1,
                                        "latent_dim": 5},
            "decoder": {"type": "terramind_vit", "dim": 64, "layers_per_block": 2}}
    torch.manual_seed(seed)
    return upstream_state_dict(Tokenizer(tokenizer_config("LULC", entry, arch).to_dict()))


def test_vit_decoder_architecture_is_read_from_the_shapes() -> None:
    sd = _lulc_state_dict()
    assert architecture(sd) == {"channels": 10, "encoder": {"type": "terramind_vit", "patch": 16, "dim": 64,
                                                            "depth": 1, "heads": 1, "latent_dim": 5},
                                "decoder": {"type": "terramind_vit", "dim": 64, "layers_per_block": 2}}
    sd["decoder.out_proj.weight"] = sd["decoder.out_proj.weight"][:-1]
    with pytest.raises(CheckpointError, match="not TerraMind's ViT decoder"):
        architecture(sd)


def test_converted_lulc_tokenizes_the_demo_cube(demo_cube: Path, tmp_path: Path) -> None:
    import xarray as xr

    from eo_models.tokens.store import tokenize_cube

    torch.save(_lulc_state_dict(), tmp_path / FILE)
    r = convert_tokenizer(tmp_path / FILE, tmp_path / "tm-lulc")
    assert r.name == "LULC" and r.tokenizer.modality == "lulc"
    out = tokenize_cube(demo_cube, [r.out], tmp_path / "tokens.zarr", progress=False)
    ds = xr.open_zarr(out)
    ids = ds["lulc_tokens"].values
    cube = xr.open_zarr(demo_cube)
    avail = cube["lulc_available"].values
    assert avail.any() and ids.shape[1:] == (16, 16)
    assert ((ids[avail] >= 0) & (ids[avail] < 7 * 5 * 5 * 5 * 5)).all() and (ids[~avail] == -1).all()
    assert len(set(ids[avail].ravel().tolist())) > 1
    # the head feeds the encoder TerraMind's one-hot of the cube's codes
    x = torch.from_numpy(cube["lulc"].values[avail][:2, :, :64, :64].astype("int64"))
    valid = torch.ones(x.shape[0], 64, 64, dtype=torch.bool)
    channel = torch.tensor([CODES.index(int(c)) for c in x.flatten()]).view(x.shape[0], 64, 64)
    assert torch.equal(r.tokenizer.head.inputs(x, valid), F.one_hot(channel, 10).permute(0, 3, 1, 2).float())
    recon = r.tokenizer.reconstruct(x.float(), valid)
    assert recon.shape == x.shape and set(recon.unique().tolist()) <= set(CODES)
