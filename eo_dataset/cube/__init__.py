"""The cube on disk: its metadata schema (``schema``), the Zarr store (``store``), the manifest of done shards
(``manifest``), appends and updates (``update``) and per-band statistics (``stats``)."""
