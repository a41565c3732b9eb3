"""Frozen encoder → projector → LoRA decoder, with the input splice and batched generation.

Layout of one example: ``[audio frames][prompt tokens][target tokens + EOS]``; the loss covers
only the target tokens and EOS.

The splice is made of tensor operations only (gathers and comparisons), with token ids that
arrive as tensors from the collate: a training step has no Python loop over rows and no
host-device synchronisation, so on a GPU it can be queued ahead and compiled.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

from xares.encoders.contract import normalise_output
from xares.models.shapes import BatchLengths, Padding, choose_shapes, padding
from xares.models.speed import Compiled, Speed
from xares.models.text import TEXT_KEYS, TextEncoder
from xares.settings import from_section

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


@dataclass(frozen=True)
class LoraSettings:
    """The ``lora`` group (``conf/lora/``), typed; its values are the config's alone."""

    enabled: bool
    r: int
    alpha: int
    dropout: float
    target_modules: str | tuple[str, ...]
    bias: str

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> LoraSettings:
        settings = from_section(cls, "llm.lora", values)
        targets = settings.target_modules
        if not isinstance(targets, str):
            settings = cls(**{**asdict(settings), "target_modules": tuple(targets)})
        return settings


@dataclass(frozen=True)
class GenerationSettings:
    """The ``generation`` section of ``conf/train.yaml``, typed: how answers are decoded."""

    do_sample: bool
    num_beams: int
    repetition_penalty: float
    max_new_tokens: int

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> GenerationSettings:
        return from_section(cls, "generation", values)

    def as_kwargs(self) -> dict[str, Any]:
        return asdict(self)


def apply_lora(decoder: nn.Module, lora: LoraSettings | None) -> nn.Module:
    """Wrap ``decoder`` with peft LoRA (``lora=None`` or ``enabled: false`` fine-tunes nothing)."""
    if lora is None or not lora.enabled:
        for parameter in decoder.parameters():
            parameter.requires_grad_(False)
        return decoder
    from peft import LoraConfig, get_peft_model

    targets = lora.target_modules
    config = LoraConfig(
        r=int(lora.r),
        lora_alpha=int(lora.alpha),
        lora_dropout=float(lora.dropout),
        target_modules=targets if isinstance(targets, str) else list(targets),
        bias=lora.bias,  # type: ignore[arg-type]
        task_type="CAUSAL_LM",
    )
    return get_peft_model(decoder, config)


class AudioLLM(nn.Module):
    """The audio language model that xares trains and scores.

    The encoder is owned here: frozen, always in eval mode, run without gradients.
    """

    # A transformers causal LM, or the peft model wrapping it: its methods are duck-typed.
    decoder: Any

    def __init__(
        self,
        encoder: nn.Module,
        projector: nn.Module,
        decoder: nn.Module,
        tokenizer: Any,
        lora: LoraSettings | None,
        generation: GenerationSettings,
        pack: bool = False,
        speed: Speed | None = None,
        feature_cache: Any = None,
    ):
        super().__init__()
        self.encoder = encoder
        for parameter in self.encoder.parameters():
            parameter.requires_grad_(False)
        self.encoder.eval()
        self.projector = projector
        self.decoder = apply_lora(decoder, lora)
        self.tokenizer = tokenizer
        self.generation = generation
        # Training only: the whole batch as one row, each clip attending only to itself.
        self.pack = bool(pack)
        self.speed = speed or Speed()
        self.text = TextEncoder(tokenizer, multiple=self.speed.text_multiple)
        self.feature_cache = feature_cache  # frozen-encoder outputs by clip (None: off)
        self.resolved_speed: dict[str, Any] = {}  # set by configure_speed once a device is known
        self._mask_warning: dict = {}
        self._loss = self._target_loss
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

    # ------------------------------------------------------------------ speed
    def _parts(self) -> tuple[Any, Any]:
        """The causal-LM model and its transformer body (``None`` if it exposes none)."""
        base = (
            self.decoder.get_base_model()
            if hasattr(self.decoder, "get_base_model")
            else self.decoder
        )
        body = base.get_decoder() if hasattr(base, "get_decoder") else None
        return base, (None if body is base else body)

    def configure_speed(self, device: torch.device | str) -> dict[str, Any]:
        """Apply the speed settings that depend on the device; returns what was resolved."""
        resolved = self.speed.resolve(device)
        dtype = resolved["decoder_dtype"]
        if dtype != torch.float32:
            # Only frozen weights change dtype: LoRA and the projector keep fp32 master weights,
            # and peft runs each adapter in its own weights' dtype. Buffers (rotary tables) stay
            # in fp32, where the decoder computes them anyway.
            for parameter in self.decoder.parameters():
                if not parameter.requires_grad and parameter.is_floating_point():
                    parameter.data = parameter.data.to(dtype)
        if resolved["compile"]:
            self._loss = Compiled(self._target_loss, "training loss", **resolved["compile_args"])
        else:
            self._loss = self._target_loss
        self.resolved_speed = resolved
        log.info(
            "speed: %s", ", ".join(f"{k}={v}" for k, v in resolved.items() if k != "compile_args")
        )
        return resolved

    # ------------------------------------------------------------------ shapes
    def training_shape(self, frames: int, prompt: int, target: int) -> tuple[int, int] | None:
        """The compiled (sequence, slots) shape a batch of these padded widths trains on.

        ``None`` when shapes are not fixed (eager, or no buckets): then the batch is padded
        only to its own longest row, exactly as without compiling.
        """
        if not self.speed.shaped:
            return None
        if self.speed.shapes is None:
            self._unplanned()
            return None
        return self.speed.shapes.pick(frames + prompt + target, target)

    def _unplanned(self) -> None:
        if not self._mask_warning.get("unplanned"):
            self._mask_warning["unplanned"] = True
            log.warning(
                "speed.buckets=auto, but no shapes were planned from the task's lengths (the "
                "model runs outside a training run): each new length compiles anew. Call "
                "AudioLLM.plan_shapes, or set speed.buckets to a list of lengths."
            )

    def slot_weight(self) -> float:
        """One target slot's cost in sequence positions: vocabulary projection / decoder body."""
        base, body = self._parts()
        if body is None:
            return 0.25
        embed = {id(p) for p in self.embed_tokens.parameters()}
        per_position = sum(p.numel() for p in body.parameters() if id(p) not in embed)
        return base.get_output_embeddings().weight.numel() / max(per_position, 1)

    @torch.no_grad()
    def frames_for(self, samples: Sequence[int], probes: int = 16) -> dict[int, int]:
        """The encoder's (and projector's) frames for clips of each length in ``samples``.

        Measured by encoding silence at up to ``probes`` of the lengths and interpolated
        between them: exact for the encoders whose frames grow linearly (or stay fixed).
        """
        import numpy as np

        lengths = sorted({int(n) for n in samples})
        if not lengths:
            return {}
        picks = sorted(
            {lengths[(i * (len(lengths) - 1)) // max(probes - 1, 1)] for i in range(probes)}
        )
        device = next(self.projector.parameters()).device
        measured = []
        for n in picks:
            audio = torch.zeros(1, n, device=device)
            _, mask = self.encode(audio, torch.ones_like(audio, dtype=torch.long))
            measured.append(int(mask.sum()))
        frames = np.ceil(np.interp(lengths, picks, measured) - 1e-6).astype(int)
        return dict(zip(lengths, (int(f) for f in frames)))

    def batch_lengths(self, drawn: Sequence[Mapping[str, Any]]) -> list[BatchLengths]:
        """:class:`BatchLengths` of batches drawn by :func:`xares.data.lengths.draw_batches`."""
        samples = [b["samples"] for b in drawn] + [r[0] for b in drawn for r in b["rows"]]
        frames = self.frames_for(samples)
        return [
            BatchLengths.of(
                [(frames[r[0]], r[1], r[2]) for r in b["rows"]],
                frames[b["samples"]],
                b["prompt"],
                b["target"],
            )
            for b in drawn
        ]

    def plan_shapes(self, drawn: Sequence[Mapping[str, Any]]) -> Padding | None:
        """Choose the compiled shapes from the task's drawn batches (``speed.buckets=auto``).

        Logs the set (every graph the training step can need) and its padding overhead, and
        returns the padding; ``None`` (nothing planned) when the run is not compiled on shapes.
        """
        if not self.speed.shaped:
            return None
        batches = self.batch_lengths(drawn)
        if self.speed.buckets == "auto":
            self.speed.shapes = choose_shapes(
                batches,
                int(self.speed.max_shapes),
                slot_weight=self.slot_weight(),
                multiple=max(8, int(self.speed.text_multiple)),
            )
        shapes = self.speed.shapes
        cost = padding(batches, shapes)
        log.info(
            "compiled shapes (sequence x target slots): %d training graph(s): %s; padding "
            "%.2f padded/real tokens over %d drawn batches (eager, unbucketed: %.2f)",
            len(shapes),
            shapes.describe(),
            cost.overhead,
            cost.batches,
            cost.eager_overhead,
        )
        return cost

    def warm_up(self, rows: int, progress: bool = True) -> float:
        """Compile the training step for every planned shape now; returns the seconds taken.

        Dummy batches of each shape go forward and backward once, so compiling happens here,
        visibly, and not in the middle of training. Random state and gradients are put back:
        training afterwards is the same as without the warm-up.
        """
        import time

        from tqdm.auto import tqdm

        shapes = self.speed.shapes
        if shapes is None or not isinstance(self._loss, Compiled):
            return 0.0
        embed: torch.Tensor = self.embed_tokens.weight  # type: ignore[assignment]
        hidden, device = embed.shape[1], embed.device
        started = time.perf_counter()
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            for seq, width in tqdm(list(shapes), desc="compiling shapes", disable=not progress):
                inputs = torch.zeros(rows, seq, hidden, dtype=embed.dtype, device=device)
                inputs.requires_grad_(True)
                positions = torch.arange(seq, device=device).expand(rows, -1).contiguous()
                attention = None if self.speed.causal_train else torch.ones_like(positions)
                slots = torch.arange(width, device=device).expand(rows, -1).contiguous()
                labels = torch.zeros_like(slots)
                self._loss(inputs, attention, positions, slots, labels).backward()
        for parameter in self.parameters():
            parameter.grad = None
        return time.perf_counter() - started

    # ------------------------------------------------------------------ encoding
    def _encode_uncached(
        self, audio: torch.Tensor, audio_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            output = self.encoder(audio, audio_mask)
        features, mask = normalise_output(
            output,
            audio_mask,
            encoder_name=type(self.encoder).__name__,
            warn_state=self._mask_warning,
        )
        return features.detach(), mask.long()

    def encode(
        self,
        audio: torch.Tensor,
        audio_mask: torch.Tensor,
        clip_ids: Sequence[str | None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Audio ``[B, T]`` → projected frames ``[B, N, H]`` and their mask ``[B, N]``.

        ``clip_ids`` (content digests from the collate; ``None`` for a randomly cropped clip)
        let the feature cache return a clip's frozen-encoder output without running the encoder.
        """
        cache = self.feature_cache
        if cache is not None and clip_ids is not None:
            features, mask = cache.encode(self._encode_uncached, audio, audio_mask, clip_ids)
        else:
            features, mask = self._encode_uncached(audio, audio_mask)
        dtype = next(self.projector.parameters()).dtype
        embeds, mask = self.projector(features.to(dtype), mask)
        return embeds, mask.long()

    def text_batch(
        self,
        prompts: Sequence[str],
        targets: Sequence[str] | None,
        device: torch.device,
        text: Mapping[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Token-id tensors on ``device``: the collate's when given, else tokenised here."""
        if text is None or any(key not in text for key in TEXT_KEYS):
            text = self.text(prompts, targets)
        return {key: text[key].to(device, non_blocking=True) for key in TEXT_KEYS}

    def _width(self, needed: int, lengths: torch.Tensor, shaped: bool) -> int:
        """The spliced batch's length: a fixed bucket when compiled, else as short as possible."""
        if shaped:
            return self.speed.bucket(needed)
        if lengths.device.type == "cpu":
            return int(lengths.max()) if lengths.numel() else 0
        return needed  # reading the true maximum would wait for the GPU

    def _splice(
        self,
        audio_embeds: torch.Tensor,
        audio_mask: torch.Tensor,
        text: Mapping[str, torch.Tensor],
        left_pad: bool,
        pack: bool = False,
        with_labels: bool = True,
        width: int | None = None,
    ):
        """Each row's real audio frames, then its prompt, then its target + EOS, padded.

        Returns ``(inputs [B, W, H], attention [B, W], positions [B, W], labels [B, W])``;
        ``labels`` is ``None`` with ``with_labels=False`` (the target-slot loss and generation
        take their labels from the token ids instead).
        ``pack=True`` instead returns one row holding every example back to back (no padding,
        ``attention`` is ``None``, positions restart at each example). ``width``: the padded
        length to use (one of the compiled shapes), instead of the one :meth:`_width` picks.
        """
        batch, frames, hidden = audio_embeds.shape
        prompt_ids, target_ids = text["prompt_ids"], text["target_ids"]
        n_audio = audio_mask.sum(-1)
        n_prompt = text["prompt_lengths"]
        n_text = n_prompt + text["target_lengths"]
        total = n_audio + n_text
        if width is None:
            width = self._width(
                frames + prompt_ids.shape[1] + target_ids.shape[1], total, self.speed.shaped
            )
        embed = self.embed_tokens
        text_embeds = embed(torch.cat([prompt_ids, target_ids], 1))
        source = torch.cat([audio_embeds.to(text_embeds.dtype), text_embeds], 1)
        # k: each output slot's index within its row's real sequence (negative = left padding).
        slots = torch.arange(width, device=audio_embeds.device)[None]
        k = slots - (width - total)[:, None] if left_pad else slots.expand(batch, -1)
        start_text = n_audio[:, None]
        in_audio = (k >= 0) & (k < start_text)
        in_prompt = (k >= start_text) & (k < start_text + n_prompt[:, None])
        real = (k >= 0) & (k < total[:, None])
        # Prompt ids sit at [frames, frames + P) of `source`, target ids right after them.
        offset = frames - start_text
        target_from = frames + prompt_ids.shape[1] - (start_text + n_prompt[:, None])
        index = torch.where(in_audio, k, torch.where(in_prompt, k + offset, k + target_from))
        index = torch.where(real, index, 0)
        inputs = source.gather(1, index[..., None].expand(-1, -1, hidden))
        inputs = inputs.masked_fill(~real[..., None], 0)
        labels = None
        if with_labels:
            in_target = real & ~in_audio & ~in_prompt
            last = max(target_ids.shape[1] - 1, 0)
            target_slot = (k - start_text - n_prompt[:, None]).clamp(0, last)
            if target_ids.shape[1]:
                labels = torch.where(in_target, target_ids.gather(1, target_slot), IGNORE_INDEX)
            else:
                labels = torch.full_like(k, IGNORE_INDEX)
        attention = real.long()
        positions = (attention.cumsum(-1) - 1).clamp_min(0)
        if pack:
            # Packed rows carry no attention mask: the decoder reads the restarting position
            # ids as sequence boundaries and attends block-diagonally, so there is no padding
            # and clips of different lengths (hence different tasks) can share a batch cheaply.
            packed_labels = labels[real][None] if labels is not None else None
            return inputs[real][None], None, positions[real][None], packed_labels
        return inputs, attention, positions, labels

    # ------------------------------------------------------------------ training
    def _target_loss(
        self,
        inputs: torch.Tensor,
        attention: torch.Tensor | None,
        positions: torch.Tensor,
        slots: torch.Tensor,
        labels: torch.Tensor,
    ) -> torch.Tensor:
        """Mean cross-entropy of ``labels`` predicted from the hidden states at ``slots``.

        The vocabulary projection is the largest matmul per position; only the positions
        that predict a target need it, and a fixed number of them (``slots`` is ``[B, L]``)
        keeps the shapes static.
        """
        base, body = self._parts()
        hidden = body(
            inputs_embeds=inputs, attention_mask=attention, position_ids=positions, use_cache=False
        ).last_hidden_state
        picked = hidden.gather(1, slots[..., None].expand(-1, -1, hidden.shape[-1]))
        logits = base.get_output_embeddings()(picked)
        return nn.functional.cross_entropy(
            logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX
        )

    def forward(
        self,
        audio: torch.Tensor,
        audio_mask: torch.Tensor,
        prompts: Sequence[str],
        targets: Sequence[str],
        text: Mapping[str, torch.Tensor] | None = None,
        clip_ids: Sequence[str | None] | None = None,
    ) -> torch.Tensor:
        """Mean cross-entropy over target tokens (+ EOS) of the batch."""
        audio_embeds, frame_mask = self.encode(audio, audio_mask, clip_ids)
        text = self.text_batch(prompts, targets, audio_embeds.device, text)
        base, body = self._parts()
        full = body is None or self.speed.logits == "full"
        shape = None
        if not (full or self.pack):
            shape = self.training_shape(
                audio_embeds.shape[1], text["prompt_ids"].shape[1], text["target_ids"].shape[1]
            )
        inputs, attention, positions, labels = self._splice(
            audio_embeds,
            frame_mask,
            text,
            left_pad=False,
            pack=self.pack,
            with_labels=full or self.pack,
            width=shape[0] if shape else None,
        )
        if full or self.pack:
            call = dict(
                inputs_embeds=inputs,
                attention_mask=attention,
                position_ids=positions,
                use_cache=False,
            )
            targets_next = labels[:, 1:]
            if full:
                # Every position through the vocabulary projection, as the reference computes.
                logits = self.decoder(**call).logits[:, :-1]
                return nn.functional.cross_entropy(
                    logits.flatten(0, 1).float(),
                    targets_next.flatten(),
                    ignore_index=IGNORE_INDEX,
                )
            # A packed row has no fixed target slots: select them (the CPU demo's path). Each
            # example starts with audio frames (labelled IGNORE_INDEX), so no position is
            # trained to predict the next example's first token.
            selected = targets_next != IGNORE_INDEX
            hidden = body(**call).last_hidden_state
            logits = base.get_output_embeddings()(hidden[:, :-1][selected])
            return nn.functional.cross_entropy(logits.float(), targets_next[selected])
        # Right padding comes after every real position, so causal attention alone already
        # hides it from them: without a padding mask the decoder takes its causal fast path.
        mask = None if self.speed.causal_train else attention
        target_ids = text["target_ids"]
        if shape is not None and shape[1] > target_ids.shape[1]:
            # The compiled shape's slot width: the extra slots are never scored.
            target_ids = nn.functional.pad(target_ids, (0, shape[1] - target_ids.shape[1]))
        # Target token j of a row is predicted from the position just before it.
        steps = torch.arange(target_ids.shape[1], device=inputs.device)[None]
        slots = (frame_mask.sum(-1) + text["prompt_lengths"] - 1)[:, None] + steps
        slots = slots.clamp(0, inputs.shape[1] - 1)
        scored = steps < text["target_lengths"][:, None]
        target_labels = torch.where(scored, target_ids, IGNORE_INDEX)
        return self._loss(inputs, mask, positions, slots, target_labels)

    def batch_loss(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """:meth:`forward` on a batch as :func:`xares.data.collate.collate` makes it."""
        return self(
            batch["audio"],
            batch["audio_mask"],
            batch["prompts"],
            batch["targets"],
            text=batch,
            clip_ids=batch.get("clip_ids"),
        )

    # ------------------------------------------------------------------ generation
    def batch_answers(self, batch: Mapping[str, Any], **overrides: Any) -> list[str]:
        """:meth:`generate` on a batch as :func:`xares.data.collate.collate` makes it."""
        return self.generate(
            batch["audio"],
            batch["audio_mask"],
            batch["prompts"],
            text=batch,
            clip_ids=batch.get("clip_ids"),
            **overrides,
        )

    @torch.no_grad()
    def generate(
        self,
        audio: torch.Tensor,
        audio_mask: torch.Tensor,
        prompts: Sequence[str],
        text: Mapping[str, torch.Tensor] | None = None,
        clip_ids: Sequence[str | None] | None = None,
        **overrides: Any,
    ) -> list[str]:
        """Greedy answers, one per row; left padding so each row continues from its own end."""
        audio_embeds, frame_mask = self.encode(audio, audio_mask, clip_ids)
        text = self.text_batch(prompts, None, audio_embeds.device, text)
        text = {**text, "target_ids": text["target_ids"][:, :0]}
        text["target_lengths"] = torch.zeros_like(text["prompt_lengths"])
        rows = audio_embeds.shape[0]
        if self.speed.shaped and rows:
            # Rows padded to a power of two (copies of the last row, answers dropped): the
            # compiled decoding step sees a few batch sizes, not one per test set's remainder.
            extra = (1 << (rows - 1).bit_length()) - rows
            if extra:
                audio_embeds, frame_mask = (
                    _repeat_last(audio_embeds, extra),
                    _repeat_last(frame_mask, extra),
                )
                text = {key: _repeat_last(value, extra) for key, value in text.items()}
        inputs, attention, positions, _ = self._splice(
            audio_embeds, frame_mask, text, left_pad=True, with_labels=False
        )
        settings = self.generation.as_kwargs()
        settings.update(self.speed.generate_settings())
        settings.update(overrides)
        processors = _repetition_penalty(settings)
        output = self.decoder.generate(
            inputs_embeds=inputs,
            attention_mask=attention,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
            logits_processor=processors,
            **settings,
        )
        return [
            text.strip()
            for text in self.tokenizer.batch_decode(output[:rows], skip_special_tokens=True)
        ]


def _repeat_last(tensor: torch.Tensor, extra: int) -> torch.Tensor:
    return torch.cat([tensor, tensor[-1:].expand(extra, *tensor.shape[1:])], 0)


def _repetition_penalty(settings: dict[str, Any]) -> LogitsProcessorList:
    """The repetition penalty over every generated token of every row.

    Given ``repetition_penalty``, transformers skips the first ``p`` generated tokens of a row
    whose attention mask starts with ``p`` zeros (it takes them for prompt padding), so a
    left-padded row was penalised later than the same clip alone, and answers depended on
    the batch and the bucket. With ``inputs_embeds`` the ids it penalises are the generated
    ones only; the challenge's masks start with the audio frames, so it penalises them all.
    Sets it to 1.0 so that ``generate`` adds no processor of its own, also where the decoder's
    generation config has a penalty of its own.
    """
    penalty = settings.get("repetition_penalty")
    settings["repetition_penalty"] = 1.0
    if penalty is None or float(penalty) == 1.0:
        return LogitsProcessorList()
    return LogitsProcessorList([RepetitionPenaltyLogitsProcessor(float(penalty))])
