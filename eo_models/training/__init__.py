"""Training: one Lightning core (``core``: base module, cube data module, trainer factory, callbacks; DDP, bf16,
accumulation, checkpoints) for every model; the tokenizer trainer (``tokenizer``) is the first to use it."""
