"""One Hub layer for every artifact kind: which arguments are folders or Hub repo ids (``resolve``), model cards
(``card``), the artifact kinds (``artifacts``), the zoo registry ``catalogs/models.yaml`` (``registry``), and
``eo-models pull`` / ``push`` (``pull``, ``push``). See docs/zoo.md."""
