"""Pretrained backbones from other projects, held in eo_models' stack: :mod:`eo_models.backbones.terramind`
(TerraMind-1.0's encoder; ``eo-models convert terramind`` writes its folders)."""
