"""Frozen encoder → projector → LoRA decoder, with the input splice and batched generation.

Layout of one example: ``[audio frames][prompt tokens][target tokens + EOS]``; the loss covers
only the target tokens and EOS.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from xares.encoders.contract import normalise_output

IGNORE_INDEX = -100


def apply_lora(decoder: nn.Module, lora: Mapping[str, Any] | None) -> nn.Module:
    """Wrap ``decoder`` with peft LoRA (``lora=None`` or ``enabled: false`` fine-tunes nothing)."""
    if not lora or not lora.get("enabled", True):
        for parameter in decoder.parameters():
            parameter.requires_grad_(False)
        return decoder
    from peft import LoraConfig, get_peft_model

    targets = lora.get("target_modules", "all-linear")
    config = LoraConfig(
        r=int(lora.get("r", 8)),
        lora_alpha=int(lora.get("alpha", 32)),
        lora_dropout=float(lora.get("dropout", 0.1)),
        target_modules=targets if isinstance(targets, str) else list(targets),
        bias=lora.get("bias", "none"),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(decoder, config)


class AudioLLM(nn.Module):
    """The audio language model that xares trains and scores.

    The encoder is owned here: frozen, always in eval mode, run without gradients.
    """

    def __init__(
        self,
        encoder: nn.Module,
        projector: nn.Module,
        decoder: nn.Module,
        tokenizer: Any,
        lora: Mapping[str, Any] | None = None,
        generation: Mapping[str, Any] | None = None,
        pack: bool = False,
    ):
        super().__init__()
        self.encoder = encoder
        for parameter in self.encoder.parameters():
            parameter.requires_grad_(False)
        self.encoder.eval()
        self.projector = projector
        self.decoder = apply_lora(decoder, lora)
        self.tokenizer = tokenizer
        self.generation = dict(generation or {})
        # Training only: the whole batch as one row, each clip attending only to itself.
        self.pack = bool(pack)
        self._mask_warning: dict = {}
        self._token_cache: dict[str, list[int]] = {}
        # from_pretrained returns decoders in eval mode; training must see LoRA dropout.
        self.train()

    # The encoder stays in eval mode whatever mode the rest of the model is put in.
    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()
        return self

    @property
    def embed_tokens(self) -> nn.Module:
        return self.decoder.get_input_embeddings()

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the weights that training changes (projector + LoRA): small checkpoints."""
        names = {name for name, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in self.state_dict().items() if k in names}

    # ------------------------------------------------------------------ encoding
    def encode(
        self, audio: torch.Tensor, audio_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Audio ``[B, T]`` → projected frames ``[B, N, H]`` and their mask ``[B, N]``."""
        with torch.no_grad():
            output = self.encoder(audio, audio_mask)
        features, mask = normalise_output(
            output,
            audio_mask,
            encoder_name=type(self.encoder).__name__,
            warn_state=self._mask_warning,
        )
        dtype = next(self.projector.parameters()).dtype
        embeds, mask = self.projector(features.detach().to(dtype), mask)
        return embeds, mask.long()

    def _tokens(self, text: str) -> list[int]:
        ids = self._token_cache.get(text)
        if ids is None:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(self._token_cache) < 4096:  # prompts repeat; targets mostly do not
                self._token_cache[text] = ids
        return ids

    def _splice(
        self,
        audio_embeds: torch.Tensor,
        audio_mask: torch.Tensor,
        prompts: Sequence[str],
        targets: Sequence[str] | None,
        left_pad: bool,
        pack: bool = False,
    ):
        """Concatenate each row's real audio frames, prompt and target, then pad the batch.

        ``pack=True`` instead returns one row holding every example back to back (no padding,
        ``attention`` is ``None``, positions restart at each example).
        """
        device = audio_embeds.device
        eos = self.tokenizer.eos_token_id
        embed = self.embed_tokens
        rows, labels = [], []
        lengths = audio_mask.sum(-1).tolist()
        for row, prompt in enumerate(prompts):
            prompt_ids = self._tokens(prompt)
            target_ids = self._tokens(targets[row]) + [eos] if targets is not None else []
            text = torch.tensor(prompt_ids + target_ids, device=device, dtype=torch.long)
            frames = audio_embeds[row, : int(lengths[row])]
            rows.append((frames, text))
            label = torch.full((frames.shape[0] + len(prompt_ids),), IGNORE_INDEX, device=device)
            labels.append(torch.cat([label, text[len(prompt_ids) :]]))
        total = max(f.shape[0] + t.shape[0] for f, t in rows)
        text_embeds = embed(torch.cat([t for _, t in rows]))
        hidden = audio_embeds.shape[-1]
        inputs = audio_embeds.new_zeros(len(rows), total, hidden, dtype=text_embeds.dtype)
        attention = torch.zeros(len(rows), total, dtype=torch.long, device=device)
        label_out = torch.full((len(rows), total), IGNORE_INDEX, dtype=torch.long, device=device)
        offset = 0
        for row, (frames, text) in enumerate(rows):
            length = frames.shape[0] + text.shape[0]
            start = total - length if left_pad else 0
            sequence = torch.cat(
                [frames.to(text_embeds.dtype), text_embeds[offset : offset + len(text)]]
            )
            offset += len(text)
            inputs[row, start : start + length] = sequence
            attention[row, start : start + length] = 1
            label_out[row, start : start + length] = labels[row]
        positions = (attention.cumsum(-1) - 1).clamp_min(0)
        if pack:
            # Packed rows carry no attention mask: the decoder reads the restarting position
            # ids as sequence boundaries and attends block-diagonally, so there is no padding
            # and clips of different lengths (hence different tasks) can share a batch cheaply.
            real = attention.bool()
            return inputs[real][None], None, positions[real][None], label_out[real][None]
        return inputs, attention, positions, label_out

    # ------------------------------------------------------------------ training
    def forward(
        self,
        audio: torch.Tensor,
        audio_mask: torch.Tensor,
        prompts: Sequence[str],
        targets: Sequence[str],
    ) -> torch.Tensor:
        """Mean cross-entropy over target tokens (+ EOS) of the batch."""
        audio_embeds, frame_mask = self.encode(audio, audio_mask)
        inputs, attention, positions, labels = self._splice(
            audio_embeds, frame_mask, prompts, targets, left_pad=False, pack=self.pack
        )
        # Each example starts with audio frames (labelled IGNORE_INDEX), so in a packed row no
        # position is trained to predict the next example's first token.
        targets_next = labels[:, 1:]
        selected = targets_next != IGNORE_INDEX
        base = (
            self.decoder.get_base_model()
            if hasattr(self.decoder, "get_base_model")
            else self.decoder
        )
        body = base.get_decoder() if hasattr(base, "get_decoder") else None
        call = dict(
            inputs_embeds=inputs, attention_mask=attention, position_ids=positions, use_cache=False
        )
        if body is None or body is base:
            logits = self.decoder(**call).logits[:, :-1][selected]
        else:
            # The vocabulary projection is the largest matmul per position; only target
            # positions need it, so run the body and project just those.
            hidden = body(**call).last_hidden_state
            logits = base.get_output_embeddings()(hidden[:, :-1][selected])
        return nn.functional.cross_entropy(logits.float(), targets_next[selected])

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(
        self,
        audio: torch.Tensor,
        audio_mask: torch.Tensor,
        prompts: Sequence[str],
        **overrides: Any,
    ) -> list[str]:
        """Greedy answers, one per row; left padding so each row continues from its own end."""
        audio_embeds, frame_mask = self.encode(audio, audio_mask)
        inputs, attention, positions, _ = self._splice(
            audio_embeds, frame_mask, prompts, None, left_pad=True
        )
        settings = {
            "do_sample": False,
            "num_beams": 1,
            "repetition_penalty": 1.05,
            "max_new_tokens": 150,
        }
        settings.update(self.generation)
        settings.update(overrides)
        output = self.decoder.generate(
            inputs_embeds=inputs,
            attention_mask=attention,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
            **settings,
        )
        return [
            text.strip() for text in self.tokenizer.batch_decode(output, skip_special_tokens=True)
        ]
