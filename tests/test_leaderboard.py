"""``make report``: the leaderboard of a sweep as markdown, HTML and PNG plots."""

from __future__ import annotations

import random
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from xares import report
from xares.leaderboard import build, published_baselines
from xares.report import collect

ROOT = Path(__file__).resolve().parent.parent
TASKS = ROOT / "conf" / "task"
# Encoder label -> (how good it is, encoder parameters, train seconds); the custom one is a
# file, as `encoder=custom encoder.path=...` records it.
ENCODERS = {
    "dasheng": (0.70, 86_000_000, 41_000.0),
    "whisper_base": (0.64, 20_600_000, 36_000.0),
    "beats": (0.60, 90_000_000, 44_000.0),
    "mel": (0.35, 0, 30_000.0),
    "encoders/my_whisper.py": (0.55, 39_000_000, 38_000.0),
}
SEEDS = {"dasheng": (42, 43, 44)}


def eval_sets(mixture: str) -> list[dict]:
    """The test sets of a challenge mixture, with their real names, metrics and tracks."""
    names = [d for d in yaml.safe_load((TASKS / f"{mixture}.yaml").read_text())["defaults"]]
    sets = []
    for name in names:
        if not isinstance(name, str) or name == "_self_":
            continue
        spec = yaml.safe_load((TASKS / f"{name}.yaml").read_text())
        for task, entry in spec["eval"].items():
            sets.append({"task": task, "metric": entry["metric"], "track": entry["track"]})
    return sets


def write_run(run_dir: Path, encoder: str, mixture: str, seed: int, legacy: bool = False):
    quality, parameters, seconds = ENCODERS[encoder]
    rng = random.Random(f"{encoder}{mixture}{seed}")
    results = []
    for i, spec in enumerate(eval_sets(mixture)):
        # How hard the set is, how well this encoder suits it, and the seed's noise.
        suits = random.Random(f"{encoder}{spec['task']}").gauss(0, 0.06)
        hard = 0.5 * ((i * 37) % 11) / 11 - 0.25
        score = min(1.0, max(0.0, quality + hard + suits + rng.gauss(0, 0.02)))
        results.append(
            {
                **spec,
                "score": score,
                "weight": 1.0,
                "chance": round(1 / (2 + i), 3) if spec["metric"] == "Accuracy" else None,
                "clips": 100,
                "dropped": {},
                "note": None,
            }
        )
    efficiency = {"encoder": {"parameters": parameters}, "seconds": {"train": seconds}}
    summary = report.summarise(results, efficiency if parameters else None)
    if not legacy:
        custom = encoder.endswith(".py")
        summary["run"] = {
            "encoder": encoder,
            "encoder_config": "custom" if custom else encoder,
            "task": mixture,
            "llm": "smollm2_135m",
            "projector": "linear",
            "seed": seed,
            "config_hash": f"{encoder}-{mixture}-hash",
            "model_hash": f"{encoder}-model",
        }
    name = ("custom" if encoder.endswith(".py") else encoder) + f"__{mixture}"
    if legacy:
        name = f"wavlm__{mixture}"  # what the run's name says, the only label an old file has
    report.write_reports(run_dir, results, run_name=name, summary=summary)


@pytest.fixture
def sweep(tmp_path) -> Path:
    """A task1 sweep (three seeds of dasheng), single task2 runs, and one old scores.json."""
    outputs = tmp_path / "outputs"
    n = 0
    for encoder in ENCODERS:
        for seed in SEEDS.get(encoder, (42,)):
            write_run(
                outputs / "multirun" / "2026-11-20_10-00-00_1" / f"{n}_x__task1",
                encoder,
                "task1",
                seed,
            )
            n += 1
        write_run(
            outputs / f"{encoder.replace('/', '_')}__task2" / "2026-11-21_09-00-00_7",
            encoder,
            "task2",
            42,
        )
    write_run(outputs / "wavlm__task2" / "2025-01-01_00-00-00_3", "mel", "task2", 42, legacy=True)
    return outputs


def test_metadata_not_folder_names_labels_the_rows(sweep):
    runs = collect([sweep])
    board = build(runs)
    labels = [r.label for r in board.rows]
    # The custom encoder is its file, not `custom`; the old file falls back to its folder name.
    assert "encoders/my_whisper.py" in labels and "custom" not in labels
    legacy = next(r for r in board.rows if r.from_folder)
    assert legacy.label == "wavlm"
    # A task1 run and a task2 run of one model are one row; three seeds are one configuration.
    dasheng = next(r for r in board.rows if r.label == "dasheng")
    assert {"task:eval_esc-50", "task:eval_clotho", "track:task1", "track:task2", "overall"} <= set(
        dasheng.cells
    )
    assert dasheng.cells["task:eval_esc-50"].n == 3 and dasheng.cells["task:eval_clotho"].n == 1
    assert dasheng.cells["track:task1"].n == 3 and dasheng.cells["overall"].combined
    assert len(board.rows) == len(ENCODERS) + 1


def test_report_writes_markdown_html_and_plots(sweep, tmp_path, capsys):
    out = tmp_path / "report"
    assert report.main([str(sweep), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "task: task1" in printed and "dasheng (" in printed  # the text table still prints
    for name in ("leaderboard.md", "leaderboard.html", "scores_by_task.png", "score_vs_cost.png"):
        assert (out / name).stat().st_size > 0, name
    for name in ("scores_by_task.png", "score_vs_cost.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    runs = {Path(r["run_dir"]).resolve(): r for r in collect([sweep])}
    dasheng_runs = sorted(
        (r for r in runs.values() if r["encoder"] == "dasheng" and r["task_name"] == "task1"),
        key=lambda r: r["run"]["seed"],
    )
    esc = [next(t["score"] for t in r["tasks"] if t["task"] == "eval_esc-50") for r in dasheng_runs]
    mean, spread = sum(esc) / 3, (sum((s - sum(esc) / 3) ** 2 for s in esc) / 2) ** 0.5

    md = (out / "leaderboard.md").read_text()
    # Three seeds: n in the seeds column, each cell the mean ± sample std, linking to the
    # first seed's run.
    dasheng_line = next(line for line in md.splitlines() if line.startswith("| dasheng | 3 |"))
    first = Path(dasheng_runs[0]["run_dir"]).relative_to(tmp_path)
    assert f"({Path('..') / first}) ± {spread:.3f} |" in dasheng_line
    assert f"{mean:.3f}" in dasheng_line
    header = md.splitlines()[4]
    assert "task1: esc-50" in header and "task2: clotho" in header and "task1 mean" in header
    # Published baselines as reference rows, with their task2 numbers.
    whisper = next(
        line for line in md.splitlines() if line.startswith("| *whisper_base (published)*")
    )
    assert "0.652" in whisper and "0.358" in whisper
    assert "| chance |" in md and "† scores.json without run metadata" in md

    html = (out / "leaderboard.html").read_text()
    cells = TableCells()
    cells.feed(html)
    # Every score cell's link resolves to a run directory holding a scores.json.
    assert cells.links and all((out / href / "scores.json").is_file() for href in cells.links)
    # The best of each column is highlighted: in esc-50, the best mean over an encoder's seeds.
    by_encoder: dict[str, list[float]] = {}
    for run in runs.values():
        if run["task_name"] == "task1":
            score = next(t["score"] for t in run["tasks"] if t["task"] == "eval_esc-50")
            by_encoder.setdefault(run["encoder"], []).append(score)
    best = max(sum(scores) / len(scores) for scores in by_encoder.values())
    assert f"{best:.3f}" in cells.best_texts
    # One highlighted cell per column (published baselines compete too): no more, no fewer.
    board = build(collect([sweep]))
    assert sorted(cells.best_texts) == sorted(f"{v:.3f}" for v in board.best.values())
    assert board.best["track:task2"] > 0.435  # the runs here beat whisper_base's published rows
    assert "published baselines" in html and "XARES-LLM" in html
    assert html.count("data:image/png;base64,") == 2  # plots embedded: one file opens offline
    assert "<link" not in html and "<script" not in html


class TableCells(HTMLParser):
    """Collects the links and the highlighted (best) cells of the leaderboard table."""

    def __init__(self):
        super().__init__()
        self.links: list[str] = []
        self.best_texts: list[str] = []
        self._in_best = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "td":
            self._in_best = "best" in (attrs.get("class") or "").split()
        if tag == "a" and attrs.get("href") and not attrs["href"].startswith("data:"):
            self.links.append(attrs["href"])

    def handle_endtag(self, tag):
        if tag == "td":
            self._in_best = False

    def handle_data(self, data):
        if self._in_best and re.fullmatch(r"\d\.\d{3}", data.strip()):
            self.best_texts.append(data.strip())


def test_a_broken_scores_file_is_named_and_the_others_still_reported(sweep, tmp_path, caplog):
    broken = sweep / "crashed__task1" / "2026-11-22_00-00-00_9" / "scores.json"
    broken.parent.mkdir(parents=True)
    broken.write_text('{"tasks": [')  # cut short
    out = tmp_path / "report"
    with caplog.at_level("WARNING"):
        assert report.main([str(sweep), "--out", str(out)]) == 0
    assert f"skipped {broken}: not a readable xares scores.json" in caplog.text
    assert "| dasheng | 3 |" in (out / "leaderboard.md").read_text()
    assert report.main([str(tmp_path / "no_runs_here"), "--out", str(tmp_path / "r2")]) == 1


def test_no_efficiency_skips_the_cost_plot_and_says_why(tmp_path, caplog):
    for seed in (1, 2):
        run_dir = tmp_path / "runs" / f"mel{seed}"
        write_run(run_dir, "mel", "task2", seed)  # mel has no efficiency block here
    out = tmp_path / "report"
    with caplog.at_level("INFO"):
        assert report.main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    assert not (out / "score_vs_cost.png").exists() and (out / "scores_by_task.png").is_file()
    assert "score_vs_cost.png not written: no run has an efficiency block" in caplog.text
    assert "score_vs_cost.png not written" in (out / "leaderboard.html").read_text()


def test_published_baselines_match_the_readme():
    """One data file holds the baselines; the README quotes the same numbers."""
    data = published_baselines()
    assert "XARES-LLM" in data["source"]
    readme = (ROOT / "README.md").read_text()
    for name, published in data["encoders"].items():
        tasks = published["tasks"]
        order = [
            "eval_aishell-1",
            "eval_clotho",
            "eval_librispeech",
            "eval_mecat",
            "eval_songdescriber",
        ]
        row = f"| {name} | {published['tracks']['task1']:.3f} | " + " / ".join(
            f"{tasks[t]:.3f}" for t in order
        )
        assert row in readme


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_the_page_renders_in_a_headless_browser(sweep, tmp_path):
    out = tmp_path / "report"
    report.main([str(sweep), "--out", str(out)])
    shot = tmp_path / "page.png"
    subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1400,1000",
            (out / "leaderboard.html").as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
