"""Looking at a cube: quicklooks of a sample's modalities, drawn from the cube's metadata (``quicklook``)."""
