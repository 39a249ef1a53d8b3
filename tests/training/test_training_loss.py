"""Contrastive losses: the formulas, and the all-gather across two real gloo processes."""
import math

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from training.loss import ClipLoss, SigLipLoss, create_loss


def features(seed=0, b=6, e=8):
    g = torch.Generator().manual_seed(seed)
    return (F.normalize(torch.randn(b, e, generator=g), dim=-1), F.normalize(torch.randn(b, e, generator=g), dim=-1))


def test_clip_loss_is_symmetric_cross_entropy():
    image, text = features()
    scale = torch.tensor(math.log(10.0))
    logits = 10.0 * image @ text.T
    # written out: -log softmax of the diagonal, by rows and by columns
    by_rows = -torch.log_softmax(logits, dim=1).diagonal().mean()
    by_cols = -torch.log_softmax(logits, dim=0).diagonal().mean()
    assert ClipLoss()(image, text, scale).item() == pytest.approx(((by_rows + by_cols) / 2).item(), rel=1e-6)
    # a perfect pairing at a high temperature costs almost nothing; a shuffled one costs more than chance
    assert ClipLoss()(image, image, torch.tensor(math.log(100.0))).item() < 0.05
    assert ClipLoss()(image, image.roll(1, 0), torch.tensor(math.log(100.0))).item() > math.log(6)


def test_soft_text_targets_share_the_target_among_repeated_reports():
    image, text = features(3)
    text = torch.cat([text[:4], text[:1], text[:1]])  # rows 4 and 5 repeat report 0 ("No acute abnormality.")
    scale, tau = torch.tensor(math.log(10.0)), 0.1
    logits = 10.0 * image @ text.T
    targets = torch.softmax(text @ text.T / tau, dim=1)
    # written out: cross-entropy against the soft targets, by rows and by columns
    expected = (-(targets * torch.log_softmax(logits, dim=1)).sum(1).mean()
                - (targets * torch.log_softmax(logits.T, dim=1)).sum(1).mean()) / 2
    soft = ClipLoss(text_target_tau=tau)
    assert soft(image, text, scale).item() == pytest.approx(expected.item(), rel=1e-6)
    # a repeated report's target is shared evenly by its three studies, and is far above any other report's
    assert targets[0, 4] == pytest.approx(targets[0, 0].item()) and targets[0, 5] == pytest.approx(targets[0, 0].item())
    assert targets[0, 0] > 10 * targets[0, 1:4].max()
    # two near-identical reports ("No acute intracranial abnormality." / "... process."), each study on its
    # own report: a step of plain CLIP moves study 1 away from report 0; with soft targets, towards it
    near = text.clone()
    near[1] = F.normalize(near[0] + 0.1 * near[1], dim=-1)
    hi = torch.tensor(math.log(50.0))
    for loss_fn, sign in ((ClipLoss(), -1.0), (soft, 1.0)):
        i = near.clone().requires_grad_(True)
        loss_fn(i, near, hi).backward()
        step = -i.grad[1]  # gradient descent direction of study 1
        assert sign * float(step @ (near[0] - near[1])) > 0
    # sharp temperature and distinct reports: the same as plain CLIP
    distinct = F.normalize(torch.eye(6, 8) + 0.01, dim=-1)
    assert ClipLoss(text_target_tau=0.01)(image, distinct, scale).item() == pytest.approx(
        ClipLoss()(image, distinct, scale).item(), rel=1e-4)
    with pytest.raises(ValueError, match="CLIP loss only"):
        create_loss("siglip", text_target_tau=0.1)
    with pytest.raises(ValueError, match="unknown loss"):
        create_loss("triplet", text_target_tau=0.1)
    with pytest.raises(ValueError, match=">= 0"):
        ClipLoss(text_target_tau=-1.0)


def test_siglip_loss_is_a_sum_of_pairwise_logistic_terms():
    image, text = features(1)
    loss = SigLipLoss(bias_init=-3.0)
    logits = 5.0 * image @ text.T - 3.0
    sign = 2 * torch.eye(6) - 1
    expected = -F.logsigmoid(sign * logits).sum() / 6
    assert loss(image, text, torch.tensor(math.log(5.0))).item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss.logit_bias.requires_grad  # trained along with the model
    with pytest.raises(ValueError, match="unknown loss"):
        create_loss("triplet")


def _rank_worker(rank, world, init_file, image, text, results):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    b = image.shape[0] // world
    scale = torch.tensor(math.log(20.0))
    out = {}
    cases = {"clip": ClipLoss(), "clip_grad": ClipLoss(gather_with_grad=True),
             "clip_local": ClipLoss(local_loss=True, gather_with_grad=True), "siglip": SigLipLoss(bias_init=-2.0),
             "soft": ClipLoss(text_target_tau=0.2),
             "soft_local": ClipLoss(local_loss=True, gather_with_grad=True, text_target_tau=0.2)}
    for name, loss_fn in cases.items():
        i = image[rank * b:(rank + 1) * b].clone().requires_grad_(True)
        t = text[rank * b:(rank + 1) * b].clone().requires_grad_(True)
        loss = loss_fn(i, t, scale)
        loss.backward()
        out[name] = (loss.item(), i.grad.clone(), t.grad.clone())
    results[rank] = out
    dist.destroy_process_group()


def test_all_gather_across_two_gloo_ranks_matches_one_process(tmp_path):
    image, text = features(2, b=8)
    scale = torch.tensor(math.log(20.0))

    def single(loss_fn):
        i, t = image.clone().requires_grad_(True), text.clone().requires_grad_(True)
        loss = loss_fn(i, t, scale)
        loss.backward()
        return loss.item(), i.grad, t.grad

    clip = single(ClipLoss())
    sig = single(SigLipLoss(bias_init=-2.0))
    soft = single(ClipLoss(text_target_tau=0.2))
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_rank_worker, args=(2, str(tmp_path / "rendezvous"), image, text, results), nprocs=2, join=True)
    for rank in range(2):
        rows = slice(rank * 4, rank * 4 + 4)
        r = results[rank]
        # no grad through the gather: every rank computes the global loss, its own rows get their exact gradient
        assert r["clip"][0] == pytest.approx(clip[0], rel=1e-5)
        torch.testing.assert_close(r["clip"][1], clip[1][rows])
        torch.testing.assert_close(r["clip"][2], clip[2][rows])
        # with grad: the gather's backward sums the world's contributions (DDP's mean then undoes the x2)
        assert r["clip_grad"][0] == pytest.approx(clip[0], rel=1e-5)
        torch.testing.assert_close(r["clip_grad"][1], 2 * clip[1][rows])
        # local loss: each rank scores its own rows; the ranks' mean is the global loss
        torch.testing.assert_close(r["clip_local"][1], 2 * clip[1][rows])
        torch.testing.assert_close(r["clip_local"][2], 2 * clip[2][rows])
        torch.testing.assert_close(r["siglip"][1], 2 * sig[1][rows])
        torch.testing.assert_close(r["siglip"][2], 2 * sig[2][rows])
        # soft text targets are built from the gathered reports, so they match one process too
        assert r["soft"][0] == pytest.approx(soft[0], rel=1e-5)
        torch.testing.assert_close(r["soft"][1], soft[1][rows])
        torch.testing.assert_close(r["soft_local"][1], 2 * soft[1][rows])
        torch.testing.assert_close(r["soft_local"][2], 2 * soft[2][rows])
    mean_local = (results[0]["clip_local"][0] + results[1]["clip_local"][0]) / 2
    assert mean_local == pytest.approx(clip[0], rel=1e-5)
    assert (results[0]["siglip"][0] + results[1]["siglip"][0]) / 2 == pytest.approx(sig[0], rel=1e-5)
    assert (results[0]["soft_local"][0] + results[1]["soft_local"][0]) / 2 == pytest.approx(soft[0], rel=1e-5)
