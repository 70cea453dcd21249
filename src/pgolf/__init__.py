"""pgolf: Parameter Golf, reimplemented as a small package (see README.md)."""

__version__ = "0.1.0"
