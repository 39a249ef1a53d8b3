"""`hlip evaluate` vs the official evaluation code, on the same fixture and the same random checkpoint.

Not part of the package or the tests: it runs the official scripts (github Zch0414/hlip, MIT), imported
from the git-ignored ``.ref/`` folder only when run (set-up as in bench/official_equivalence.py: the
official ``src`` under ``.ref/hlip/src``, timm 1.0.15 / open_clip / torchvision under ``.ref/site``).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/evaluate_official.py [--volumes 6]

For the paper protocols of CT-RATE and Rad-ChestCT (``src/hlip_test/zeroshot_ct_rate.py`` and
``zeroshot_rad_chestct.py``): build the official open_clip model of vit_base_singlescan_h2_token2744 (MiniLM
text tower, as no CXR-BERT is on this machine), randomise every tensor, save it in the official ``.pt``
format, write random HU volumes in each official layout with a labels CSV, then run the official
``get_data`` + ``zero_shot`` (fp32: its CPU autocast replaced by none) and ``hlip evaluate`` (the same
checkpoint through ``hlip_engine.load_model``). Prints the largest difference of every per-class metric.
Pub-Brain-5 (paper): the same with vit_base_multiscan_h2_token588, the official ``pub_brain_5_embed.py``
(144 slices) then ``zeroshot_pub_brain_5.py``, whose printed figures are compared (``--skip-brain``: not).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import importlib
import os
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def official_script(name: str):
    mod = importlib.import_module(f"hlip_test.{name}")
    mod.get_autocast = lambda *a, **k: contextlib.nullcontext  # fp32, as hlip evaluate on CPU
    return mod


def write_fixture(root: Path, n: int, classnames: list[str], layout: str) -> tuple[Path, list[list[int]]]:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        shape = [(100, 300, 350), (120, 340, 320)][i % 2]  # pad one axis, crop another
        volume = torch.from_numpy(rng.normal(-400, 500, shape).astype(np.float32))
        if layout == "ct-rate":
            name = f"valid_{i // 2 + 1}_a_{i % 2 + 1}"
            folder = root / "valid" / f"valid_{i // 2 + 1}" / f"valid_{i // 2 + 1}_a"
            ident = f"{name}.nii.gz"
        else:
            name = ident = f"tst{1000 + i}"
            folder = root
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(volume, folder / f"{name}.pt")
        rows.append([ident, *[int((i + k) % 3 == 0) for k in range(len(classnames))]])
    for k in range(len(classnames)):  # every class holds both values
        rows[k % n][1 + k], rows[(k + 1) % n][1 + k] = 1, 0
    return root, rows


def pub_brain_5(open_clip, official_model, randomise, text: str) -> float:
    """Official embed + zero-shot scripts vs hlip evaluate on six float studies; -> largest difference."""
    import io
    import re

    from hlip_engine.evaluate import evaluate
    from hlip_engine.model import load_model

    arch = "vit_base_multiscan_h2_token588"
    off, tokenizer = official_model(open_clip, arch, text, 512, None)
    randomise(off, seed=3)
    off.output_dict = True
    embed, zeroshot = official_script("pub_brain_5_embed"), official_script("zeroshot_pub_brain_5")
    rng = np.random.default_rng(1)
    kinds = [("open_bhb/sub-01", 0), ("open_bhb/sub-02", 0), ("stroke/sub-03", 1),
             ("brats23/train/adult_glioma/BraTS-G-1", 2), ("brats23/train/adult_meningioma/BraTS-M-2", 3),
             ("nyu_mets/NYU_Mets_1", 4)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "data" / "pub_brain_5"  # the official embed folder is the study path with 'data' -> 'embed'
        rows = []
        for i, (kind, label) in enumerate(kinds):
            folder = data / kind
            folder.mkdir(parents=True)
            for k in range(1 + i % 2):
                shape = [(30, 60, 50), (24, 48, 64)][k]
                torch.save(torch.from_numpy(rng.random(shape).astype(np.float32)), folder / f"scan{k}.pt")
            rows.append([str(folder), *np.eye(5, dtype=int)[label]])
        labels = tmp / "pub_brain_5.csv"
        with open(labels, "w", newline="") as f:
            csv.writer(f).writerows([["study", "Normal", "Stroke", "Glioma", "Meningioma", "Metastasis"], *rows])
        ckpt = tmp / f"{arch}.pt"
        torch.save({"epoch": 1, "name": arch,
                    "state_dict": {f"module.{k}": v.clone() for k, v in off.state_dict().items()}}, ckpt)
        ns = types.SimpleNamespace(input_filename=str(labels), num_slices=144, device="cpu", workers=0, model=arch,
                                   tasks=["stroke", "glioma", "meningioma", "metastasis", "tumor", "disease"],
                                   zeroshot_prompt="prompt", zeroshot_template="template")
        cwd = Path.cwd()
        os.chdir(tmp)
        printed = io.StringIO()
        try:
            embed.embed(off, embed.get_data(ns, None), ns)
            with contextlib.redirect_stdout(printed):
                zeroshot.zero_shot(off, tokenizer, zeroshot.get_data(ns), ns)
        finally:
            os.chdir(cwd)
        ours = load_model(ckpt, arch=arch, text_model=text, device="cpu")
        result = evaluate("pub-brain-5", data, labels, model=ours, protocol="paper", allow_text_tower=True,
                          progress=False)["metrics"]
    diffs = []
    for line in printed.getvalue().splitlines():
        match = re.match(r"^(.+\)): (.*)$", line)
        if not match:
            continue
        task, figures = match.groups()
        task = task.strip()
        for part in figures.split("; "):
            name, value = part.rsplit(": ", 1)
            mine = result[task][name]
            diffs.append(abs(float(value) - mine) if not (np.isnan(float(value)) and np.isnan(mine)) else 0.0)
    print(f"pub-brain-5 (paper) 6 studies, {len(diffs)} printed figures: max |official - hlip evaluate| "
          f"{max(diffs):.2e}", flush=True)
    return max(diffs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--volumes", type=int, default=6)
    ap.add_argument("--skip-brain", action="store_true")
    ap.add_argument("--skip-chest", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(max(1, os.cpu_count() or 2))
    from official_equivalence import REF, import_official, official_model, randomise

    open_clip, _ = import_official(REF / "hlip" / "src")
    sys.modules.setdefault("hlip_test", types.ModuleType("hlip_test"))
    sys.modules["hlip_test"].__path__ = [str(REF / "hlip" / "src" / "hlip_test")]
    from hlip_engine.evaluate import evaluate
    from hlip_engine.model import load_model
    from hlip_engine.model.text import minilm_folder

    arch = "vit_base_singlescan_h2_token2744"
    text = str(minilm_folder())
    off, tokenizer = official_model(open_clip, arch, text, 512, None)
    randomise(off)
    off.output_dict = True  # as the official scripts create it (output_dict=True)
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = tmp / f"{arch}.pt"
        torch.save({"epoch": 1, "name": arch,
                    "state_dict": {f"module.{k}": v.clone() for k, v in off.state_dict().items()}}, ckpt)
        ours = load_model(ckpt, arch=arch, text_model=text, device="cpu")
        chest = () if args.skip_chest else (("ct-rate", "zeroshot_ct_rate", "VolumeName", "ct-rate"),
                                             ("rad-chestct", "zeroshot_rad_chestct", "NoteAcc_DEID", "rad"))
        for bench, script, id_col, layout in chest:
            mod = official_script(script)
            data, rows = write_fixture(tmp / bench, args.volumes, list(mod.CLASSNAMES), layout)
            labels = tmp / f"{bench}.csv"
            with open(labels, "w", newline="") as f:
                csv.writer(f).writerows([[id_col, *mod.CLASSNAMES], *rows])
            # what the official main() does before zero_shot for the 'volume' template
            mod.PROMPTS["Lung nodule"] = ("Not lung nodule", "Lung nodule")
            mod.PROMPTS["Lung opacity"] = ("Not lung opacity", "Lung opacity")
            ns = types.SimpleNamespace(data_root=str(data), input_info=["-1150", "350", "crop"],
                                       zeroshot_template="volume", device="cpu", workers=0, model=arch,
                                       zeroshot_ct_rate=str(labels), zeroshot_rad_chestct=str(labels))
            cwd = Path.cwd()
            os.chdir(tmp)
            try:
                official = mod.zero_shot(off, tokenizer, mod.get_data(ns, None), ns)
            finally:
                os.chdir(cwd)
            result = evaluate(bench, data, labels, model=ours, protocol="paper", allow_text_tower=True,
                              progress=False)["metrics"]
            diffs = []
            for key, values in official.items():
                for name, value in values.items():
                    mine = result[key][name]
                    diffs.append(abs(float(value) - float(mine)) if not (np.isnan(value) and np.isnan(mine)) else 0.0)
            print(f"{bench} (paper) {args.volumes} volumes, {len(diffs)} metrics: max |official - hlip evaluate| "
                  f"{max(diffs):.2e}; official mean auc {official['* mean']['mean auc']:.6f}, "
                  f"ours {result['* mean']['mean auc']:.6f}", flush=True)
            worst = max(worst, max(diffs))
    if not args.skip_brain:
        worst = max(worst, pub_brain_5(open_clip, official_model, randomise, text))
    print(f"worst {worst:.2e} -> {'PASS' if worst <= 1e-6 else 'FAIL'} (target <= 1e-6)")
    return 0 if worst <= 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
