"""A build from start to finish: the run over shards on Dask (``run``), the plan before it (``plan``), the
coverage checks (``coverage``) and snapshots of sources (``snapshot``)."""
