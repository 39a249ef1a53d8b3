"""HLIP Explorer's napari plugin: a thin GUI over :mod:`hlip_engine` (reader, widgets, sample data)."""

__version__ = "0.1.0"
