"""HLIP model: hierarchical ViT (vit.py) + Hugging Face text tower (text.py) + the pair (clip.py);
factory.py builds and loads them, checkpoint.py reads and writes the files.

API note (for the training, relevance, index, plugin and demo code)::

    from hlip_engine.model import create_model, load_model, list_architectures
    model = create_model("hlip_tiny")            # random visual tower, pretrained MiniLM text tower
    model = create_model("hlip_demo", depth=4)   # overrides: top-level keys, or visual keys directly
    model = load_model(path, arch=None, text_model=None, device=None)   # eval mode; CUDA+bf16 or CPU fp32
        # path: our .safetensors (config embedded), an official 2025 .pt, or a 2026 Hugging Face folder
    model.encode_image(x)          # x [B, N, 1, D, H, W] float -> L2-normalised [B, E]
    model.encode_image([s1, s2])   # studies with different scan counts, each [N_i, 1, D, H, W]
    model.encode_image(x, scan_counts=[3, 1])   # padded batch; equals encoding each study alone
    model.encode_image(x, all_outputs=True)     # [B, outputs, E] (2 for the 2026 DINO.txt models)
    model.encode_text(["a", "b"])  # -> L2-normalised [T, E]; model.tokenize(texts) -> ids [T, L]
    model.encode_query(["left frontal mass"])  # search text, with the training report prefix
    model(image=x, text=ids)       # {"image_features", "text_features", "logit_scale" (exp'd), "logit_bias"?}
    model.logit_scale              # nn.Parameter, the LOG scale (exp() it, clamp at 100 in training)
    model.logit_bias               # nn.Parameter or None (2026 models)
    model.encode_study(study, recipe=None) -> [E] on CPU; model.prepare(study) -> PreparedStudy
    model.config                   # JSON dict: name, visual, embed_dim, text, preprocess {"recipe", ...}
    model.embed_dim; model.save("m.safetensors"); model.set_grad_checkpointing(True)
    model.lock_text(unlocked_layers=0); model.no_weight_decay() -> set of parameter names
    model.autocast_dtype           # torch.bfloat16 after load_model on CUDA, else None

Relevance maps (only the last block matters)::

    v = model.visual
    tokens, last_in, layout = v.forward_features(x, return_last_block_input=True)
    # last_in [U, P + L, C]: the rows blocks[-1] receives, one row per unit of its level
    # (v.cfg.blocks[-1] in "study" | "scan" | "slice"; layout.units(level) == U; P = v.num_prefix_tokens,
    #  tokens inside a study are ordered (scan, slice, row, column); layout has scans/slices/rows/cols).
    blk = v.blocks[-1]                     # blk.norm1, blk.attn.qkv_heads(h) -> q, k, v [U, heads, T, hd]
    out = v.forward_head(v.finish(blk(last_in), layout))   # == v(x): [B, outputs, E]

Architectures are JSON files in ``configs/`` (``list_architectures()``): the four 2025 official ones,
the five 2026 ``dualdinotxt`` ones, ``hlip_tiny`` (tests) and ``hlip_demo`` (CPU demo).
"""
from .clip import HLIPModel, query_bank
from .factory import create_model, default_device, get_config, infer_arch, list_architectures, load_model
from .vit import HLIPVisualEncoder, TokenLayout, VisualConfig

__all__ = ["HLIPModel", "HLIPVisualEncoder", "TokenLayout", "VisualConfig", "create_model", "default_device",
           "get_config", "infer_arch", "list_architectures", "load_model", "query_bank"]
