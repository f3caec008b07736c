"""Exceptions whose messages are shown to users as they are (the CLI prints them without a trace)."""


class DeepfakeDetectError(Exception):
    """Base class: the message names the file or key at fault and how to fix it."""


class ConfigError(DeepfakeDetectError):
    pass


class DataError(DeepfakeDetectError):
    pass


class CheckpointError(DeepfakeDetectError):
    pass


class OutputError(DeepfakeDetectError):
    """An output the command may not write: outside its folder, over an input, into a folder in
    use or made by someone else, or not writable."""
