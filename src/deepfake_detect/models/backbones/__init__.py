"""Backbones built from libraries other than timm (HF transformers)."""
