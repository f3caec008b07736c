"""Parameter-efficient adapters that replace layers of a pretrained backbone."""
