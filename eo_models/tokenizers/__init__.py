"""Per-modality tokenizers: VQ or FSQ quantizers, GAN or diffusion decoders, a head per modality kind."""

from eo_models.tokenizers.heads import CategoricalHead, ContinuousHead, Head, MultilabelHead, make_head
from eo_models.tokenizers.quantizers.base import Quantized, Quantizer
from eo_models.tokenizers.text import CaptionTokenizer, train_caption_tokenizer
from eo_models.tokenizers.tokenizer import Tokenizer, make_decoder, make_quantizer

__all__ = [
    "CaptionTokenizer", "CategoricalHead", "ContinuousHead", "Head", "MultilabelHead", "Quantized", "Quantizer",
    "Tokenizer", "make_decoder", "make_head", "make_quantizer", "train_caption_tokenizer",
]
