"""``python -m hlip_engine.index build ...``: the ``hlip index`` command, runnable by torchrun.

    torchrun --nproc_per_node=4 -m hlip_engine.index build LIBRARY --model CKPT --index DIR
"""
from __future__ import annotations

import sys

from hlip_engine.cli import main

if __name__ == "__main__":
    sys.exit(main(["index", *sys.argv[1:]]))
