"""The model API others build on: overrides, registry, training helpers, the open_clip-style forward."""
import math

import pytest
import torch

from hlip_engine import create_model as create_model_lazy
from hlip_engine.model import create_model, get_config, list_architectures

torch.set_num_threads(2)

OFFICIAL = {"vit_base_singlescan_h2_token2744", "vit_base_multiscan_h2_token588", "vit_base_multiscan_h2_token1176",
            "vit_base_multiscan_h3_token1176", "vit_base_scan_study_dualdinotxt1568",
            "vit_base_slice_scan_study_dualdinotxt1568", "vit_large_scan_study_dualdinotxt1568",
            "vit_large_slice_scan_study_dualdinotxt1568", "vit_base_slice_scan_dualdinotxt2744"}


def test_registry_holds_every_official_architecture_as_data():
    names = list_architectures()
    assert OFFICIAL <= set(names) and {"hlip_tiny", "hlip_demo", "hlip_tiny_dinotxt"} <= set(names)
    h3 = get_config("vit_base_multiscan_h3_token1176")["visual"]
    assert [i for i, b in enumerate(h3["blocks"]) if b == "slice"] == [0, 3, 6, 9]
    large = get_config("vit_large_slice_scan_study_dualdinotxt1568")["visual"]
    assert (large["width"], large["depth"], large["heads"], large["register_tokens"]) == (1024, 24, 16, 1)
    assert [i for i, b in enumerate(large["blocks"]) if b == "scan"] == [4, 10, 16, 22]
    demo = get_config("hlip_demo")
    assert demo["preprocess"] == {"recipe": "auto", "slices": 32, "size": 112, "crop": 96}
    assert [s // p for s, p in zip(demo["visual"]["input_size"], demo["visual"]["patch_size"])] == [4, 6, 6]


def test_overrides_training_helpers_and_forward():
    model = create_model_lazy("hlip_tiny", depth=2, blocks=["scan", "study"], embed_dim=32)
    assert model is not None and len(model.visual.blocks) == 2 and model.embed_dim == 32
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07)) and model.logit_bias is None

    nwd = model.no_weight_decay()
    assert {"logit_scale", "visual.cls_token", "visual.norm.weight", "visual.blocks.0.attn.qkv.bias"} <= nwd
    assert "visual.blocks.0.attn.qkv.weight" not in nwd and "visual.proj.weight" not in nwd
    assert not any("posemb" in n for n, _ in model.named_parameters())  # frozen tables are buffers

    model.lock_text(unlocked_layers=1)
    trainable = {n for n, p in model.text.named_parameters() if p.requires_grad}
    assert "proj.weight" in trainable and any(n.startswith("transformer.encoder.layer.5.") for n in trainable)
    assert not any(n.startswith(("transformer.encoder.layer.4.", "transformer.embeddings.")) for n in trainable)

    model.train()
    model.set_grad_checkpointing(True)
    ids = model.tokenize(["glioma", "a normal brain MRI"])
    out = model(image=torch.randn(2, 2, 1, 16, 32, 32), text=ids)
    assert out["image_features"].shape == out["text_features"].shape == (2, 32)
    loss = (out["logit_scale"] * out["image_features"] @ out["text_features"].T).diag().sum()
    loss.backward()
    assert model.visual.blocks[0].attn.qkv.weight.grad is not None and model.logit_scale.grad is not None


def test_dinotxt_model_has_two_outputs_and_a_logit_bias():
    model = create_model("hlip_tiny_dinotxt").eval()
    x = torch.randn(1, 2, 1, 16, 32, 32)
    with torch.no_grad():
        both = model.encode_image(x, all_outputs=True)
    assert both.shape == (1, 2, 64) and model.logit_bias is not None
    torch.testing.assert_close(both.norm(dim=-1), torch.ones(1, 2))
    with pytest.raises(ValueError, match="unknown visual config keys"):
        create_model("hlip_tiny", visual={"layers": 3})
