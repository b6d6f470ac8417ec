"""Token stores and token batches: a cube's samples as stage-1 token ids.

- :mod:`~eo_models.tokens.store`: ``tokenize_cube`` (``eo-models tokenize``) writes token ids, per-token validity
  and availability of every image modality and the caption to a Zarr store beside the cube.
- :mod:`~eo_models.tokens.dataset`: ``TokenDataset`` serves a store to PyTorch as token batches; ``token_specs`` and
  ``TokenSpec`` say what each modality's tokens are.
- :mod:`~eo_models.tokens.online`: ``OnlineTokens`` makes the same token batches from cube batches on the fly.
- :mod:`~eo_models.tokens.plan`: what each tokenizer reads and how its tokens are made (shared by the three).
"""
