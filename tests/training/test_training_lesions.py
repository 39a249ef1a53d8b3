"""Lesion-guided training: lesion centres land on the right tokens, and the guidance term moves attention there."""
import numpy as np
import pytest
import torch

from hlip_engine.model.vit import HLIPVisualEncoder, VisualConfig
from training.lesions import (
    StudyAttentionTap,
    guidance_loss,
    kept_masks,
    lesion_entries,
    lesions_of_library,
    main,
    token_mask,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    from hlip_engine.demo import make_studies

    out = tmp_path_factory.mktemp("lib")
    records = make_studies(out, 4, seed=11)  # normal / tumour / infarct / haemorrhage / atrophy in turn
    return out, records


def test_lesion_tokens_are_the_tokens_near_the_lesion_in_patient_space(library):
    """Model-grid lesion entries (what prepare stores) select the same tokens as token centres in LPS mm."""
    from hlip_engine.io import load_study
    from hlip_engine.preprocessing import preprocess
    from hlip_engine.relevance import token_centres

    folder, records = library
    lesions = lesions_of_library(folder)
    focal = [r for r in records if r["uid"] in lesions]
    assert focal and all(r["findings"][0] in ("tumour", "infarct", "haemorrhage") for r in focal)
    assert len(lesions) == len(focal)  # normal and atrophy studies have no focal lesion
    checked = 0
    for r in focal:
        study = load_study(r["path"])
        prepared = preprocess(study, "auto", slices=32, size=112, crop=96)
        entries = lesion_entries(study, prepared, lesions[r["uid"]])
        centres = token_centres(prepared, study, (4, 6, 6), (8, 16, 16))  # [N, d, h, w, 3]
        les = lesions[r["uid"]][0]
        for i, e in enumerate(entries):
            mask = token_mask(e, (4, 6, 6), (8, 16, 16))
            dist = np.linalg.norm(centres[i] - np.asarray(les["centre_lps"]), axis=-1)
            near = dist <= les["radius_mm"] + 10.0
            assert np.array_equal(mask | near, mask)  # every token within reach is marked
            assert (mask & ~near).sum() <= 1  # plus at most the token holding the centre
            assert mask[np.unravel_index(int(np.argmin(dist)), dist.shape)]
            checked += 1
    assert checked >= 3


def test_lesions_file_command(library, tmp_path, capsys):
    folder, _ = library
    out = tmp_path / "lesions.json"
    assert main([str(folder), "--out", str(out)]) == 0
    import json

    data = json.loads(out.read_text())
    assert data and all(v[0]["radius_mm"] > 0 and len(v[0]["centre_lps"]) == 3 for v in data.values())
    assert main([str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "no studies.json" in capsys.readouterr().err


def tiny(dropout=0.0):
    cfg = VisualConfig(input_size=(8, 16, 16), patch_size=(4, 8, 8), width=32, depth=2, heads=2,
                       blocks=["scan", "study"], patch_dropout=dropout)
    torch.manual_seed(0)
    return HLIPVisualEncoder(cfg, embed_dim=16)


def test_kept_masks_follow_patch_dropout():
    """With patch dropout, mask token j of the kept order <=> the kept token j is a masked one. The patch
    embedding is made to write each token's own position into its features, so the test reads it back."""
    visual = tiny(dropout=0.5).train()
    x = torch.zeros(2, 3, 1, 8, 16, 16)
    with torch.no_grad():
        visual.patch_embed.proj.weight.zero_()
        visual.patch_embed.proj.bias.zero_()
        visual.spatial_posemb.zero_()
        visual.scan_posemb.zero_()
    ident = torch.arange(2 * 3 * 2 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2, 2)  # token ids, study order
    x[:, :, 0] = ident.repeat_interleave(4, 2).repeat_interleave(8, 3).repeat_interleave(8, 4)
    with torch.no_grad():
        visual.patch_embed.proj.weight[0, 0, 0, 0, 0] = 1.0  # channel 0 = the token's id
    tokens, layout = visual.embed(x)
    kept_ids = tokens[:, layout.prefix:, 0].reshape(2, -1)  # first-level units are scans: [B*N, keep]
    masks = ident % 3 == 0
    got = kept_masks(masks, visual)
    assert got.shape == (2, kept_ids.numel() // 2)
    assert torch.equal(got, (kept_ids.reshape(2, -1) % 3 == 0))


@pytest.mark.parametrize("levels", [("study",), ("study", "scan")])
def test_guidance_moves_the_cls_attention_onto_the_lesion(levels):
    visual = tiny().train()
    torch.manual_seed(1)
    x = torch.randn(4, 2, 1, 8, 16, 16)
    masks = torch.zeros(4, 2, 2, 2, 2, dtype=torch.bool)
    masks[:, :, 1, 0, 1] = True  # one token per scan: 2 of 16
    has = torch.tensor([True, True, True, False])
    opt = torch.optim.Adam(visual.parameters(), lr=3e-3)

    def share():  # of the study-level CLS attention (the block the official relevance reads)
        with torch.no_grad(), StudyAttentionTap(visual) as tap:
            visual(x)
        a = tap.image_attention()[0].mean(dim=1)
        return float(((a * masks.reshape(4, -1)).sum(1) / a.sum(1))[:3].mean())

    before = share()
    for _ in range(60):
        with StudyAttentionTap(visual, levels) as tap:
            visual(x)
        assert len(tap.rows) == len(levels)  # tiny(): one scan-level and one study-level block
        loss = guidance_loss(tap.image_attention(), kept_masks(masks, visual), has)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = share()
    assert before < 0.25 and after > 0.8, (before, after)
    # a batch with no lesion adds nothing (and no NaN)
    with StudyAttentionTap(visual) as tap:
        visual(x)
    zero = guidance_loss(tap.image_attention(), kept_masks(masks, visual), torch.zeros(4, dtype=torch.bool))
    assert float(zero.detach()) == 0.0


def test_guidance_needs_a_study_level_block():
    cfg = VisualConfig(input_size=(8, 16, 16), patch_size=(4, 8, 8), width=32, depth=1, heads=2, blocks=["scan"])
    with pytest.raises(ValueError, match="study-level block"):
        StudyAttentionTap(HLIPVisualEncoder(cfg, embed_dim=16))


def test_prepare_lesions_then_guided_training(library, tmp_path):
    """phantoms -> lesions.json -> prepare --lesions (tiny grid) -> masks follow the scans through --flip-lr ->
    pretrain --lesion-guidance runs and reports the term."""
    import json

    from training.config import parse_config
    from training.data import StudyDataset
    from training.prepare import main as prepare_main
    from training.pretrain import train

    folder, records = library
    lesions = tmp_path / "lesions.json"
    assert main([str(folder), "--out", str(lesions)]) == 0
    cache = tmp_path / "cache"
    assert prepare_main([str(folder), "--out", str(cache), "--recipe", "auto", "--reports",
                         str(folder / "reports.json"), "--workers", "0", "--lesions", str(lesions),
                         "--option", "slices=16", "--option", "size=36", "--option", "crop=32"]) == 0
    manifest = json.loads((cache / "manifest.json").read_text())
    with_lesions = [e for e in manifest.values() if any(s.get("lesions") for s in e["series"].values())]
    assert len(with_lesions) == len(json.loads(lesions.read_text())) >= 2

    grid = ((4, 4, 4), (4, 8, 8))
    plain = StudyDataset(cache / "manifest.json", size=(16, 32, 32), num_scans=2, token_grid=grid)
    flipped = StudyDataset(cache / "manifest.json", size=(16, 32, 32), num_scans=2, token_grid=grid, flip_lr=1.0)
    n_marked = 0
    for i, rec in enumerate(plain.records):
        x0, _, _, m0 = plain[(i, 0)]
        x1, _, _, m1 = flipped[(i, 0)]
        assert m0.shape == (2, 4, 4, 4) and m0.dtype == torch.bool
        for k, path in enumerate(rec.draw_scans(2, np.random.default_rng((0, 0, i)))):
            axis = rec.lr_axes[path]
            assert torch.equal(x1[k], torch.flip(x0[k], dims=(1 + axis,)))  # same draw, mirrored
            assert torch.equal(m1[k], torch.flip(m0[k], dims=(axis,)))  # the mask mirrored with it
        n_marked += int(m0.any())
    assert n_marked == len(with_lesions)  # every study with a lesion marks tokens, the others none

    torch.set_num_threads(1)
    cfg = parse_config(["--arch", "hlip_tiny", "--data", str(cache / "manifest.json"), "--batch-size", "2",
                        "--num-scans", "2", "--steps", "3", "--lock-text", "--workers", "0", "--lesion-guidance",
                        "1.0", "--flip-lr", "0.5", "--patch-dropout", "0.5", "--out", str(tmp_path / "run")])
    train(cfg)
    from hlip_engine.model import load_model

    exported = load_model(tmp_path / "run" / "model.safetensors", device="cpu")
    assert exported.visual.cfg.patch_dropout == 0.0  # a training-only setting
    assert json.loads((tmp_path / "run" / "config.json").read_text())["lesion_guidance"] == 1.0
    with pytest.raises(ValueError, match="lesion-guidance needs"):
        train(parse_config(["--arch", "hlip_tiny", "--synthetic", "--steps", "1", "--lesion-guidance", "1",
                            "--out", str(tmp_path / "bad")]))
