"""The efficiency block: what a run cost, in ``scores.json`` and under the printed table."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from helpers.config import FAST
from helpers.encoders import HOP, TINY_CONV_ENCODER
from hydra.utils import instantiate

from xares.results import scores
from xares.run.evaluate import evaluate
from xares.run.train import train
from xares.training.callbacks import Efficiency


@pytest.fixture
def encoder_args(tmp_path):
    path = tmp_path / "tiny_encoder.py"
    path.write_text(TINY_CONV_ENCODER)
    return ["encoder=custom", f"encoder.path={path}"]


def read_block(run_dir):
    return json.loads((run_dir / "scores.json").read_text())["efficiency"]


def check_eval(block):
    assert block["eval"]["clips"] == 16  # two test sets, eval_limit 8
    assert block["eval"]["clips_per_sec"] > 0
    encoder = block["encoder"]
    assert encoder["real_time_factor"] > 0 and encoder["seconds"] > 0
    # Frames are counted from the encoder's own mask; each clip rounds its last frame up.
    assert 25 <= encoder["frames_per_second"] < 30
    assert block["peak_memory_mb"] > 0 and block["peak_memory_kind"] == "process peak RSS"
    seconds = block["seconds"]
    assert seconds["setup"] > 0 and seconds["eval"] > 0
    phases = sum(seconds[name] or 0.0 for name in ("setup", "train", "eval"))
    assert phases <= seconds["total"]


def test_trained_run_reports_its_efficiency(make_cfg, tmp_path, encoder_args, capsys):
    cfg = make_cfg(*FAST, *encoder_args, "trainer.max_steps=6", "logger=none")
    summary = train(cfg)
    block = read_block(tmp_path / "run")
    assert summary["efficiency"] == block

    check_eval(block)
    encoder = block["encoder"]
    assert encoder["name"] == "TinyConvEncoder"
    real = sum(p.numel() for p in instantiate(cfg.encoder).parameters())
    assert encoder["parameters"] == real == 16 * HOP + 16
    # One call per training step and at least one per test batch; the contract check is not
    # part of the run.
    assert encoder["calls"] >= 6 + 2
    assert encoder["timer"] == "perf_counter"

    trained = block["train"]
    assert trained["steps"] == 6 and trained["samples"] >= 6
    assert trained["samples_per_sec"] > 0 and trained["warmup_seconds"] > 0
    assert 0 <= trained["data_wait_percent"] <= 100
    assert block["seconds"]["train"] > 0
    assert (block["device"], block["rank"], block["world_size"]) == ("cpu", 0, 1)

    printed = capsys.readouterr().out
    assert "efficiency (cpu)" in printed
    assert "TinyConvEncoder, 10.3k parameters" in printed
    assert "real-time factor" in printed and "encoder calls" in printed
    assert "samples/s after a" in printed and "waiting for data" in printed
    assert "clips/s (16 clips" in printed
    assert "process peak RSS" in printed
    assert "time     setup" in printed and "total" in printed

    # Re-scoring the checkpoint: no training, so no train numbers (null, not zero).
    again = evaluate(
        make_cfg(
            f"ckpt_path={tmp_path / 'run'}",
            "data.eval_limit=8",
            "+generation.max_new_tokens=6",
            "reuse_scores=false",  # the run's own answers would serve; generate them again
            config_name="eval",
            output_dir=tmp_path / "eval",
        )
    )
    block = read_block(tmp_path / "eval")
    assert again["efficiency"] == block
    check_eval(block)
    assert block["train"] is None and block["seconds"]["train"] is None


def test_untrained_run_has_no_train_numbers(make_cfg, tmp_path, encoder_args, capsys):
    train(make_cfg(*FAST, *encoder_args, "train=false", "logger=none"))
    block = read_block(tmp_path / "run")
    check_eval(block)
    assert block["train"] is None and block["seconds"]["train"] is None
    printed = capsys.readouterr().out
    assert "efficiency (cpu)" in printed and "clips/s" in printed
    assert "  train  " not in printed and "samples/s" not in printed
    assert "train -" not in printed


class PassThroughMaskEncoder(torch.nn.Module):
    """Returns the audio mask unchanged as its frame mask, as some published encoders do."""

    output_dim = 4

    def __init__(self, hop: int = 160, pass_mask: bool = True):
        super().__init__()
        self.hop, self.pass_mask = hop, pass_mask
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, audio, audio_attention_mask=None):
        frames = audio.shape[-1] // self.hop
        features = self.scale * torch.ones(audio.shape[0], frames, self.output_dim)
        return features, (audio_attention_mask if self.pass_mask else None)


@pytest.mark.parametrize("pass_mask", [True, False])
def test_encoder_hooks_count_audio_frames_and_calls(pass_mask):
    encoder = PassThroughMaskEncoder(pass_mask=pass_mask)
    module = SimpleNamespace(
        model=SimpleNamespace(encoder=encoder),
        device=torch.device("cpu"),
    )
    trainer = SimpleNamespace(
        datamodule=SimpleNamespace(sample_rate=16000),
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
    )
    meter = Efficiency()
    meter.setup(trainer, module, "test")
    assert meter.sample_rate == 16000  # the rate the loaders read at
    mask = torch.zeros(2, 16000, dtype=torch.long)
    mask[0, :16000] = 1
    mask[1, :8000] = 1
    encoder(torch.zeros(2, 16000), mask)
    encoder(audio=torch.zeros(2, 16000), audio_attention_mask=mask)
    block = meter.summary(started=None)["encoder"]
    assert block["calls"] == 2 and block["parameters"] == 1
    assert block["audio_seconds"] == pytest.approx(3.0)
    # Whether the mask is missing or does not line up with the frames, the frames counted are
    # the ones the model keeps: 100 for the full clip, 50 for the half one, on each call.
    assert block["frames_per_second"] == pytest.approx(2 * 150 / 3.0, rel=1e-3)
    assert block["real_time_factor"] > 0

    # Hooks go with the run: later calls are not counted.
    meter.teardown(None, module, "test")
    encoder(torch.zeros(2, 16000), mask)
    assert meter.summary()["encoder"]["calls"] == 2


def test_summary_without_efficiency_and_ranked_lines(tmp_path):
    results = [{"task": "t", "metric": "Accuracy", "score": 0.5, "weight": 1.0, "rows": []}]
    summary = scores.write_reports(tmp_path, results)
    assert "efficiency" not in json.loads((tmp_path / "scores.json").read_text())
    assert "efficiency" not in scores.format_table(summary)

    block = {
        "device": "cuda:0 (GPU)",
        "rank": 0,
        "world_size": 2,
        "encoder": None,
        "train": None,
        "eval": {"clips": 4, "clips_per_sec": None, "loop_seconds": 0.0},
        "peak_memory_mb": 10.0,
        "peak_memory_kind": "cuda max allocated",
        "seconds": {"setup": 1.0, "train": None, "eval": 2.0, "total": 3.5},
    }
    lines = scores.format_efficiency(block)
    assert lines[1] == "efficiency (cuda:0 (GPU); rank 0's numbers, of 2 ranks)"
    assert "  eval     - clips/s (4 clips in 0.0 s of test loop)" in lines
    assert "  memory   10 MB peak (cuda max allocated)" in lines
    assert lines[-1] == "  time     setup 1.0 s, eval 2.0 s, total 3.5 s"


class FakeEvent:
    def __init__(self, at: float, done: bool = True):
        self.at, self.done = at, done

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:
        self.done = True

    def elapsed_time(self, end: FakeEvent) -> float:
        return (end.at - self.at) * 1000.0  # milliseconds, as CUDA events give them


def test_pending_cuda_events_are_folded_only_when_done():
    meter = Efficiency()
    meter._events = [(FakeEvent(0.0), FakeEvent(0.5)), (FakeEvent(1.0), FakeEvent(3.0, False))]
    meter._fold_events(wait=False)  # without waiting: only the finished pair is read
    assert meter._encoder_seconds == pytest.approx(0.5) and len(meter._events) == 1
    meter._fold_events(wait=True)
    assert meter._encoder_seconds == pytest.approx(2.5) and not meter._events


class ConvEncoder(torch.nn.Module):
    output_dim = 8

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(1, 8, kernel_size=160, stride=160)

    def forward(self, audio, audio_attention_mask=None):
        return self.conv(audio.unsqueeze(1)).transpose(1, 2), None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_encoder_timing_with_cuda_events():
    device = torch.device("cuda")
    encoder = ConvEncoder().to(device)
    # In ``setup`` the module has not been moved yet: the device comes from the strategy.
    module = SimpleNamespace(
        model=SimpleNamespace(encoder=encoder), device=torch.device("cpu"), config={"data": {}}
    )
    trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=device))
    meter = Efficiency()
    meter.setup(trainer, module, "fit")
    audio = torch.randn(4, 16000, device=device)
    mask = torch.ones(4, 16000, dtype=torch.long, device=device)
    for _ in range(300):  # more than one fold of pending events
        encoder(audio, mask)
    block = meter.summary()
    assert block["encoder"]["timer"] == "cuda events" and block["encoder"]["calls"] == 300
    assert block["encoder"]["seconds"] > 0 and not meter._events
    assert block["encoder"]["frames_per_second"] == pytest.approx(100.0)
    assert block["peak_memory_kind"] == "cuda max allocated" and block["peak_memory_mb"] > 0
    assert block["device"].startswith("cuda")
