"""What to build: the recipe and its collection specs (``recipe``), and the Major TOM sample grid (``grid``)."""
