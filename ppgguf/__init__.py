"""ppgguf: prune a general chat model down to one character and ship it as a GGUF."""

__version__ = "0.1.0"
