"""Exports of trained models to other runtimes (``onnx``: encoder-only ONNX files checked with onnxruntime)."""
