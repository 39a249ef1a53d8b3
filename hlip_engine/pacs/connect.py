"""``connect(node) -> PacsClient``: the one door to a PACS, DICOMweb or DIMSE by the node's kind.

Its own module so that the protocol clients (which subclass ``client.PacsClient``) and the base class
import one way only.
"""
from __future__ import annotations

from .client import PacsClient
from .dicomweb import DicomWebClient
from .dimse import DimseClient
from .nodes import Node, parse_node


def connect(node: Node | str, **options) -> PacsClient:
    """A client for ``node``: a :class:`Node`, a URL, or a nodes-file name (``options`` as :func:`parse_node`)."""
    if not isinstance(node, Node):
        node = parse_node(node, **options)
    if node.kind == "dicomweb":
        return DicomWebClient(node)
    return DimseClient(node)
