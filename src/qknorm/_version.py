"""The version of qknorm: the one place it is written.

``pyproject.toml`` reads it at build time (``[tool.setuptools.dynamic] version``) and
``qknorm.__version__`` re-exports it.
"""

__version__ = "0.1.0"
