"""Training: the tokenizer trainer (``tokenizer``); the fusion model reuses the same core."""
