"""PACS as a source of studies: find, retrieve and cache studies over DICOMweb or DIMSE.

    from hlip_engine.pacs import connect, StudyCache
    with connect("https://pacs.example.org/dicom-web") as pacs:     # or "dicom://PACS@host:104", or a name
        for study in pacs.find_studies(modality="CT", date_from="2024-01-01"):
            folder = pacs.retrieve(study["study_uid"], StudyCache())  # then hlip_engine.io.load_study(folder)

Nothing downstream knows where a study came from: a retrieved study is an ordinary DICOM folder.
"""
from __future__ import annotations

from .cache import StudyCache, default_cache_dir
from .client import PacsClient
from .connect import connect
from .errors import PacsCancelled, PacsError
from .nodes import Node, load_nodes, nodes_path, parse_node
from .query import FILTERS, normalize_filters
from .stream import iter_node_studies

__all__ = ["FILTERS", "Node", "PacsCancelled", "PacsClient", "PacsError", "StudyCache", "connect",
           "default_cache_dir", "iter_node_studies", "load_nodes", "nodes_path", "normalize_filters", "parse_node"]
