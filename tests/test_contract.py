"""The encoder contract: the checker's verdicts, run-time mask repair, and loading user encoders."""

from __future__ import annotations

import logging
import sys
import textwrap

import hydra
import pytest
import torch
from helpers.config import SAMPLE_RATE
from torch import nn

from xares.encoders.contract import EncoderContractError, check_encoder, normalise_output
from xares.encoders.dummy import DummyEncoder
from xares.encoders.loading import EncoderLoadError, import_encoder_class, load_encoder
from xares.encoders.mel import MelEncoder

CONTRACT_LOGGER = "xares.encoders.contract"

# An encoder file as a XARES-LLM challenge participant writes it: one class ending in
# `Encoder`, a helper module beside it, forward(audio, audio_attention_mask) -> (features, mask).
USER_ENCODER = textwrap.dedent(
    '''
    import torch
    from torch import nn


    class FrameProjection(nn.Module):
        """A helper module: not an encoder, must not be picked."""

        def __init__(self, hop, dim):
            super().__init__()
            self.linear = nn.Linear(hop, dim)

        def forward(self, frames):
            return self.linear(frames)


    class MyEncoder(nn.Module):
        def __init__(self, dim: int = 16, hop: int = 160):
            super().__init__()
            self.hop = hop
            self.output_dim = dim
            self.frames = FrameProjection(hop, dim)

        def forward(self, audio, audio_attention_mask):
            batch, samples = audio.shape
            count = samples // self.hop
            frames = audio[:, : count * self.hop].reshape(batch, count, self.hop)
            features = torch.tanh(self.frames(frames))
            mask = audio_attention_mask[:, : count * self.hop : self.hop]
            return features, mask
    '''
)


def write_encoder(folder, name="my_encoder.py", source=USER_ENCODER):
    path = folder / name
    path.write_text(source)
    return path


# ---------------------------------------------------------------------------- checker: passes
class Base(nn.Module):
    """A valid encoder; subclasses break one rule each through ``output``."""

    output_dim = 16

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(1, 16)

    def features(self, audio):
        frames = audio[:, ::400].unsqueeze(-1)  # [B, N, 1]
        return self.linear(frames)

    def output(self, audio, mask):
        return self.features(audio), mask[:, ::400]

    def forward(self, audio, audio_attention_mask=None):
        return self.output(audio, audio_attention_mask)


def test_checker_accepts_the_bundled_and_a_user_encoder(tmp_path):
    mel = MelEncoder(sample_rate=SAMPLE_RATE)
    mel.train()
    assert check_encoder(mel, sample_rate=SAMPLE_RATE) == 320
    assert mel.training  # the checker restores the mode it found
    assert (
        check_encoder(DummyEncoder(output_dim=24, sample_rate=SAMPLE_RATE), sample_rate=SAMPLE_RATE)
        == 24
    )
    assert check_encoder(Base(), sample_rate=SAMPLE_RATE) == 16
    user = load_encoder(str(write_encoder(tmp_path)), {"dim": 12})
    assert check_encoder(user, sample_rate=SAMPLE_RATE) == 12


# ---------------------------------------------------------------------------- checker: fails
class NotAModule:
    output_dim = 16

    def forward(self, audio, audio_attention_mask=None):
        return torch.zeros(audio.shape[0], 3, 16), None

    __call__ = forward


class NoOutputDim(Base):
    output_dim = None


class OneArgument(Base):
    def forward(self, audio):
        return self.features(audio), None


class ReturnsDict(Base):
    def output(self, audio, mask):
        return {"features": self.features(audio), "mask": mask}


class ReturnsTriple(Base):
    def output(self, audio, mask):
        return self.features(audio), mask[:, ::400], None


class TwoDimensional(Base):
    def output(self, audio, mask):
        return self.features(audio).mean(1), None


class DropsBatch(Base):
    def output(self, audio, mask):
        return self.features(audio)[:1], None


class WrongWidth(Base):
    def output(self, audio, mask):
        return self.features(audio)[..., :8], None


class ProducesNaN(Base):
    def output(self, audio, mask):
        features = self.features(audio).clone()
        features[0, 0, 0] = float("nan")
        return features, None


class ProducesInf(Base):
    def output(self, audio, mask):
        features = self.features(audio).clone()
        features[1, -1, 3] = float("inf")
        return features, None


class Raises(Base):
    def output(self, audio, mask):
        raise RuntimeError("kernel size can't be greater than actual input size")


@pytest.mark.parametrize(
    "encoder_class, problem",
    [
        (NotAModule, "is a NotAModule, not a torch.nn.Module"),
        (NoOutputDim, "has no `output_dim` attribute"),
        (OneArgument, "forward() must take two arguments"),
        (ReturnsDict, "forward returned dict"),
        (ReturnsTriple, "forward returned tuple of length 3"),
        (TwoDimensional, "features have rank 2"),
        (DropsBatch, "batch size changed from 2 to 1"),
        (WrongWidth, "last dimension is 8 but output_dim is 16"),
        (ProducesNaN, "output contains NaN or Inf"),
        (ProducesInf, "output contains NaN or Inf"),
        (Raises, "raised RuntimeError: kernel size can't be greater"),
    ],
)
def test_checker_names_the_problem(encoder_class, problem):
    with pytest.raises(EncoderContractError) as info:
        check_encoder(encoder_class(), sample_rate=SAMPLE_RATE)
    assert problem in info.value.problem
    message = str(info.value)
    assert message.startswith(f"encoder {encoder_class.__qualname__}: ")
    assert "Fix: " in message  # every verdict carries its fix and the contract


def test_checker_reports_the_encoders_own_exception_as_cause():
    with pytest.raises(EncoderContractError) as info:
        check_encoder(Raises(), sample_rate=SAMPLE_RATE)
    assert isinstance(info.value.__cause__, RuntimeError)


# ---------------------------------------------------------------------------- mask mismatch
class PassesAudioMask(Base):
    """Some published encoders return the audio mask unchanged: [B, T] for N frames."""

    def output(self, audio, mask):
        return self.features(audio), mask


def test_mask_length_mismatch_warns_at_check_time(caplog):
    with caplog.at_level(logging.WARNING, logger=CONTRACT_LOGGER):
        assert check_encoder(PassesAudioMask(), sample_rate=SAMPLE_RATE) == 16
    warnings = [r for r in caplog.records if r.name == CONTRACT_LOGGER]
    assert len(warnings) == 1
    assert "feature_mask length 16000" in warnings[0].getMessage()
    assert "replaced" in warnings[0].getMessage()


def test_mismatched_mask_is_replaced_from_audio_lengths_and_warned_once(caplog):
    lengths = torch.tensor([16000, 8001, 320])
    audio_mask = (torch.arange(16000)[None, :] < lengths[:, None]).long()
    features = torch.randn(3, 50, 4)
    state: dict = {}
    with caplog.at_level(logging.WARNING, logger=CONTRACT_LOGGER):
        for _ in range(3):
            out, mask = normalise_output(
                (features, audio_mask), audio_mask, encoder_name="PassesAudioMask", warn_state=state
            )
    assert out is features
    assert mask.shape == (3, 50) and mask.dtype == torch.long
    # ceil(valid fraction * frames): 50, ceil(25.03) = 26, ceil(1.0) = 1.
    assert mask.sum(-1).tolist() == [50, 26, 1]
    assert mask[1, :26].eq(1).all() and mask[1, 26:].eq(0).all()
    warnings = [r for r in caplog.records if r.name == CONTRACT_LOGGER]
    assert len(warnings) == 1
    assert "PassesAudioMask" in warnings[0].getMessage()


def test_normalise_output_keeps_a_valid_mask_and_fills_a_missing_one():
    audio_mask = torch.tensor([[1] * 10, [1] * 5 + [0] * 5])
    features = torch.randn(2, 5, 3)
    given = torch.tensor([[1, 1, 1, 1, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    _, kept = normalise_output((features, given), audio_mask)
    assert kept.dtype == torch.long and kept.tolist() == given.long().tolist()
    _, filled = normalise_output(features, audio_mask)  # a bare tensor: all real frames
    assert filled.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]


# ---------------------------------------------------------------------------- loading
def test_load_file_picks_the_one_encoder_class_with_kwargs(tmp_path):
    encoder = load_encoder(str(write_encoder(tmp_path)), {"dim": 24, "hop": 320})
    assert type(encoder).__name__ == "MyEncoder"
    assert encoder.output_dim == 24 and encoder.hop == 320
    features, mask = encoder(torch.zeros(2, 3200), torch.ones(2, 3200, dtype=torch.long))
    assert features.shape == (2, 10, 24) and mask.shape == (2, 10)


TWO_ENCODERS = USER_ENCODER + textwrap.dedent(
    """

    class OtherEncoder(MyEncoder):
        def __init__(self, width: int = 8):
            super().__init__(dim=width)
    """
)


def test_load_file_with_explicit_class_name(tmp_path):
    path = write_encoder(tmp_path, "two.py", TWO_ENCODERS)
    encoder = load_encoder(f"{path}:OtherEncoder", {"width": 5})
    assert type(encoder).__name__ == "OtherEncoder" and encoder.output_dim == 5


def test_two_candidate_classes_are_listed(tmp_path):
    path = write_encoder(tmp_path, "two.py", TWO_ENCODERS)
    with pytest.raises(EncoderLoadError) as info:
        load_encoder(str(path))
    message = str(info.value)
    assert "exactly one" in message
    assert "found: MyEncoder, OtherEncoder" in message
    assert f"encoder.path={path}:ClassName" in message


def test_missing_file_and_missing_path_are_clear(tmp_path):
    missing = tmp_path / "nope" / "absent_encoder.py"
    with pytest.raises(EncoderLoadError, match="encoder file not found: .*absent_encoder.py"):
        load_encoder(str(missing))
    with pytest.raises(EncoderLoadError, match="encoder=custom needs encoder.path"):
        import_encoder_class("")


def test_bad_kwargs_point_at_encoder_kwargs(tmp_path):
    with pytest.raises(EncoderLoadError) as info:
        load_encoder(str(write_encoder(tmp_path)), {"layers": 6})
    message = str(info.value)
    assert "MyEncoder(**{'layers': 6}) failed" in message
    assert "unexpected keyword argument 'layers'" in message
    assert "+encoder.kwargs.<name>=<value>" in message


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    """An importable package ``xares_test_userpkg.encoders`` holding MyEncoder."""
    package = tmp_path / "site" / "xares_test_userpkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    write_encoder(package, "encoders.py")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    yield "xares_test_userpkg"
    for name in [n for n in sys.modules if n.startswith("xares_test_userpkg")]:
        del sys.modules[name]


def test_load_dotted_module_path(user_package):
    encoder = load_encoder(f"{user_package}.encoders.MyEncoder", {"dim": 8})
    assert type(encoder).__name__ == "MyEncoder" and encoder.output_dim == 8
    # A module path alone picks its one Encoder class; `module:Class` names it.
    assert type(load_encoder(f"{user_package}.encoders")).__name__ == "MyEncoder"
    assert load_encoder(f"{user_package}.encoders:MyEncoder", {"dim": 3}).output_dim == 3
    with pytest.raises(EncoderLoadError, match="cannot import encoder 'no_such_pkg.mod.X'"):
        load_encoder("no_such_pkg.mod.X")


def test_custom_encoder_through_hydra(make_cfg, tmp_path):
    path = write_encoder(tmp_path)
    # `encoder.kwargs` is `{}` in conf/encoder/custom.yaml: new keys are added with `+`.
    cfg = make_cfg("encoder=custom", f"encoder.path={path}", "+encoder.kwargs.dim=24")
    assert cfg.encoder.kwargs == {"dim": 24}
    encoder = hydra.utils.instantiate(cfg.encoder)
    assert type(encoder).__name__ == "MyEncoder"
    assert encoder.output_dim == 24
    assert check_encoder(encoder, sample_rate=SAMPLE_RATE) == 24

    named = make_cfg("encoder=custom", f"encoder.path={path}:MyEncoder", "+encoder.kwargs={dim:7}")
    assert hydra.utils.instantiate(named.encoder).output_dim == 7


def test_relative_encoder_path_is_relative_to_the_launch_directory(make_cfg, tmp_path, monkeypatch):
    write_encoder(tmp_path)
    monkeypatch.chdir(tmp_path)
    cfg = make_cfg("encoder=custom", "encoder.path=my_encoder.py")
    assert hydra.utils.instantiate(cfg.encoder).output_dim == 16
