"""How good a model is: tokenizer metrics on a cube (``evaluate``) and the stage-1 comparison (``compare``)."""
