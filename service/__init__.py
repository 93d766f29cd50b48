"""The loss service: classification losses and accuracy metrics over HTTP, Keras 3's numbers."""

__version__ = "0.1.0"
