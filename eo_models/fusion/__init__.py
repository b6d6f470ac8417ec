"""Stage 2: the 4M-style fusion transformer over the tokens of every modality (masked multimodal token
reconstruction). Its place is here; the model lands with the fusion issue."""
