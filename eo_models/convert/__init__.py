"""Converters of other projects' weights into eo_models artifacts (:mod:`.terramind`: TerraMind-1.0)."""
