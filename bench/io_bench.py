"""DICOM I/O benchmark: our loader vs SimpleITK, and header discovery of a 10,000-file tree.

    .venv/bin/python bench/io_bench.py                 # full run (writes ~450 MB under a temp folder)
    .venv/bin/python bench/io_bench.py --slices 60 --files 1000   # quick look

1. A 512 x 512 x N CT series (uncompressed, int16 + rescale, written by pydicom through
   ``write_dicom_series``) is loaded by ``hlip_engine.load_study`` and by SimpleITK's ``ImageSeriesReader``
   (GDCM file ordering + Execute + GetArrayFromImage), alternating, page cache warm for both; same voxels checked.
2. A tree of small CT series totalling ``--files`` files is discovered from headers (``hlip_engine.discover``),
   next to a plain ``pydicom.dcmread(stop_before_pixels=True)`` loop over the same files.
Targets: our load time <= SimpleITK's; discovery of 10,000 files <= 10 s.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hlip_engine import Scan, discover, load_study  # noqa: E402
from hlip_engine.io import write_dicom_series  # noqa: E402


def _head_phantom(n_slices: int, size: int = 512) -> np.ndarray:
    """An ellipsoid 'head' in HU: air -1000, skull 1000, brain 35, with noise (int16-valued)."""
    z, y, x = np.ogrid[-1:1:complex(0, n_slices), -1:1:complex(0, size), -1:1:complex(0, size)]
    r = (x / 0.8) ** 2 + (y / 0.9) ** 2 + (z / 1.1) ** 2
    vol = np.full((n_slices, size, size), -1000.0, dtype=np.float32)
    vol[r < 1.0] = 1000.0
    vol[r < 0.85] = 35.0
    vol += np.random.default_rng(0).normal(0, 5, size=(1, size, size)).astype(np.float32)
    return np.round(vol)


def _warm(paths) -> None:
    for p in paths:
        with open(p, "rb") as f:
            while f.read(1 << 20):
                pass


def _sitk_load(folder: str) -> np.ndarray:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(folder))
    return sitk.GetArrayFromImage(reader.Execute())


def bench_series(root: Path, n_slices: int, rounds: int) -> None:
    folder = root / "ct512"
    aff = np.diag([0.45, 0.45, 1.0, 1.0])
    aff[:3, 3] = (-115.0, -115.0, -150.0)
    t = time.perf_counter()
    paths = write_dicom_series(Scan(_head_phantom(n_slices), aff, modality="CT", description="bench CT"), folder,
                               study_uid="1.2.826.0.1.3680043.8.498.4242", series_number=2)
    print(f"wrote {len(paths)} slices 512x512 ({sum(p.stat().st_size for p in paths) / 1e6:.0f} MB) "
          f"in {time.perf_counter() - t:.1f} s")
    _warm(paths)
    ours, theirs = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        study = load_study(folder)
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        arr = _sitk_load(str(folder))
        theirs.append(time.perf_counter() - t)
    same = np.array_equal(study.scans[0].voxels, arr.astype(np.float32))
    print(f"\n== load a 512x512x{n_slices} CT series (warm cache, {rounds} rounds, alternating) ==")
    print(f"{'reader':<34}{'median s':>10}{'best s':>10}")
    print(f"{'hlip_engine.load_study':<34}{statistics.median(ours):>10.3f}{min(ours):>10.3f}")
    print(f"{'SimpleITK ImageSeriesReader':<34}{statistics.median(theirs):>10.3f}{min(theirs):>10.3f}")
    print(f"same voxels: {same}; ratio ours/SimpleITK (median): {statistics.median(ours) / statistics.median(theirs):.2f}")


def bench_discovery(root: Path, n_files: int) -> None:
    import pydicom

    tree = root / "tree"
    per_series, series_per_study = 250, 4
    n_series = max(1, n_files // per_series)
    t = time.perf_counter()
    written = []
    for s in range(n_series):
        study, series = divmod(s, series_per_study)
        n = per_series if s < n_series - 1 else n_files - per_series * (n_series - 1)
        vox = np.zeros((n, 32, 32), np.float32)
        aff = np.diag([0.7, 0.7, 1.0, 1.0])
        written += write_dicom_series(Scan(vox, aff, modality="CT", description=f"series {series}"),
                                      tree / f"patient{study:03d}" / f"series{series}",
                                      study_uid=f"1.2.826.0.1.3680043.8.498.{1000 + study}",
                                      series_number=series + 1, study_description=f"study {study}",
                                      study_date="20240101")
        print(f"\rwriting tree: {len(written)}/{n_files} files", end="", flush=True, file=sys.stderr)
    print(file=sys.stderr)
    print(f"wrote {len(written)} files in {n_series} series in {time.perf_counter() - t:.1f} s")
    _warm(written)
    t = time.perf_counter()
    refs = discover(tree)
    ours = time.perf_counter() - t
    t = time.perf_counter()
    for p in written:
        pydicom.dcmread(p, stop_before_pixels=True)
    plain = time.perf_counter() - t
    print(f"\n== header discovery of {len(written)} files (warm cache) ==")
    print(f"{'reader':<44}{'seconds':>10}{'ms/file':>10}")
    print(f"{'hlip_engine.discover (studies + series)':<44}{ours:>10.2f}{ours / len(written) * 1e3:>10.3f}")
    print(f"{'pydicom.dcmread(stop_before_pixels) loop':<44}{plain:>10.2f}{plain / len(written) * 1e3:>10.3f}")
    print(f"studies found: {len(refs)}; target <= 10 s: {'met' if ours <= 10 else 'NOT met'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=300, help="CT series length (0: skip that part)")
    parser.add_argument("--files", type=int, default=10_000, help="discovery tree size (0: skip that part)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    args = parser.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="hlip_io_bench_"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}; work folder {root}")
    try:
        if args.slices > 0:
            bench_series(root, args.slices, args.rounds)
        if args.files > 0:
            bench_discovery(root, args.files)
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
