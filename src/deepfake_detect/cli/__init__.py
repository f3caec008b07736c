from deepfake_detect.cli.app import app, main

__all__ = ["app", "main"]
