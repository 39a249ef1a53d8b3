"""A benchmark's labels CSV as the official dataset class reads it: one id column, one 0/1 column per label."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class LabelRows:
    path: Path
    ids: list[str]
    targets: np.ndarray  # [R, K] int, columns in the protocol's label order


def read_labels(path, protocol) -> LabelRows:
    """Rows of ``path`` in file order; ValueError naming the file for a missing column or a non-number."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: labels CSV not found")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        rows = list(reader)
    if not rows:
        raise ValueError(f"{path}: no rows")
    missing = [c for c in (protocol.id_column, *protocol.labels) if c not in header]
    if missing:
        raise ValueError(f"{path}: columns {missing} missing for {protocol.benchmark} ({protocol.version}); "
                         f"it has {header[:8]}{' ...' if len(header) > 8 else ''}")
    targets = np.zeros((len(rows), len(protocol.labels)), dtype=int)
    for i, row in enumerate(rows):
        for k, col in enumerate(protocol.labels):
            try:
                targets[i, k] = int(float(row[col]))  # "1.0" as in Rad-ChestCT's CSV; int() as the official astype
            except (TypeError, ValueError):
                raise ValueError(f"{path}: row {i + 2}, column {col!r}: {row[col]!r} is not a number") from None
    return LabelRows(path, [row[protocol.id_column] for row in rows], targets)
