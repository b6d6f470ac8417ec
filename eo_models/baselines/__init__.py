"""Supervised baselines beside the fusion model: MLP late fusion, unimodal models, a small U-Net."""
