"""Artifacts on the Hugging Face Hub or in local folders (``resolve``: which one an id names)."""
