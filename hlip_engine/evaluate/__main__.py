"""``torchrun --nproc_per_node N -m hlip_engine.evaluate BENCHMARK ...``: the ``hlip evaluate`` arguments,
encoding sharded over the ranks, metrics on rank 0."""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from ..cli import main as cli_main

    return cli_main(["evaluate", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
