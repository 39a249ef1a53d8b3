"""Triage: studies received over DICOM are indexed, scored by rules and ranked on a worklist.

``rules.py`` (rules as data), ``score.py`` (a study's verdict), ``worklist.py`` (SQLite beside the index),
``spool.py`` (durable receiving area), ``receive.py`` (the C-STORE SCP's checks and handler), ``stream.py`` (its
fast path), ``headers.py`` (the few attributes it reads), ``receivers.py`` (receiver processes), ``stow.py``
(STOW-RS on ``hlip serve``), ``listen.py`` (the whole listener).
"""
