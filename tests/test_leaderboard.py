"""``make report``: the leaderboard of a sweep as markdown, HTML and PNG plots."""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml

from xares import plots, report
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


def edit_run(run_dir: Path, run: dict | None = None, unscored: tuple[str, ...] = ()) -> None:
    """Change a written scores.json: entries of its run block, and test sets left unscored."""
    path = run_dir / "scores.json"
    summary = json.loads(path.read_text())
    summary["run"] = {**summary.get("run", {}), **(run or {})}
    for task in summary["tasks"]:
        if task["task"] in unscored:
            task["score"] = None
    path.write_text(json.dumps(summary))


def dasheng_seeds(outputs: Path, seeds=(0, 1, 2)) -> list[Path]:
    """Task1 runs of one configuration, one per seed, ended in seed order."""
    dirs = []
    for seed in seeds:
        run_dir = outputs / "multirun" / f"{seed}_dasheng__task1"
        write_run(run_dir, "dasheng", "task1", seed)
        edit_run(run_dir, {"kind": "train", "ended": f"2026-11-20T10:0{seed}:00+00:00"})
        dirs.append(run_dir)
    return dirs


def esc50(run_dir: Path) -> float:
    summary = json.loads((run_dir / "scores.json").read_text())
    return next(t["score"] for t in summary["tasks"] if t["task"] == "eval_esc-50")


def test_a_rescored_run_replaces_its_seed_instead_of_adding_one(tmp_path, caplog, monkeypatch):
    outputs = tmp_path / "outputs"
    trained = dasheng_seeds(outputs)
    # `python -m xares.evaluate ckpt_path=<seed 0's run>`: seed 0's model, scored again later.
    rescored = outputs / "eval" / "2026-11-21_08-00-00_5"
    write_run(rescored, "dasheng", "task1", 7)  # other numbers than the training run's
    edit_run(
        rescored,
        {"kind": "evaluate", "seed": 0, "ended": "2026-11-21T08:00:00+00:00"},
    )
    with caplog.at_level("INFO", logger="xares.leaderboard"):
        (row,) = build(collect([outputs])).rows
    assert row.seeds == 3
    cell = row.cells["task:eval_esc-50"]
    assert cell.n == 3 and sorted(cell.values) == sorted(
        [esc50(rescored), esc50(trained[1]), esc50(trained[2])]
    )
    assert f"left out {trained[0]}: {rescored}, which ended later" in caplog.text

    # The same folder given twice, relative and absolute, is read once.
    monkeypatch.chdir(tmp_path)
    assert len(collect(["outputs", str(outputs)])) == 4
    assert len(collect([str(outputs / "multirun"), "outputs/multirun/0_dasheng__task1"])) == 3


def test_a_cell_that_not_every_seed_scored_says_so(tmp_path):
    outputs = tmp_path / "outputs"
    first, *others = dasheng_seeds(outputs)
    for run_dir in others:  # two of three seeds could not score esc-50
        edit_run(run_dir, unscored=("eval_esc-50",))
    board = build(collect([outputs]))
    (row,) = board.rows
    assert row.seeds == 3 and row.cells["task:eval_esc-50"].n == 1
    # Per-seed means over different test sets are not comparable: no spread, marked partial,
    # the weighted mean of the per-test-set means.
    overall = row.cells["overall"]
    assert overall.partial and overall.spread is None
    runs = collect([outputs])
    per_task = []
    for spec in runs[0]["tasks"]:
        scores = [
            t["score"] for r in runs for t in r["tasks"] if t["task"] == spec["task"] and t["score"]
        ]
        per_task.append(sum(scores) / len(scores))
    assert overall.mean == pytest.approx(sum(per_task) / len(per_task))

    out = tmp_path / "report"
    report.write_leaderboard(runs, out)
    md = (out / "leaderboard.md").read_text()
    line = next(line for line in md.splitlines() if line.startswith("| dasheng | 3 |"))
    assert f"{esc50(first):.3f}" in line and "(n=1)" in line and line.endswith("‡ |")
    assert "‡ partial: some seed has no score" in md
    html = (out / "leaderboard.html").read_text()
    assert " n=1</span>" in html and "‡ partial" in html


def test_published_track_means_are_the_overall_of_a_one_track_report(tmp_path):
    outputs = tmp_path / "outputs"
    dasheng_seeds(outputs)
    board = build(collect([outputs]))
    published = {r.label: r for r in board.references}
    assert published["dasheng_base (published)"].cells["overall"].mean == 0.614
    assert published["whisper_base (published)"].cells["overall"].mean == 0.652
    # The plot's panel holds the overall, so the published rows have a bar there.
    ((_, columns),) = plots.panels(board)
    assert [c.key for c in columns][-1] == "overall"
    out = tmp_path / "report"
    report.write_leaderboard(collect([outputs]), out)
    md = (out / "leaderboard.md").read_text()
    whisper = next(line for line in md.splitlines() if line.startswith("| *whisper_base"))
    assert whisper.endswith("| **0.652** |")  # the best overall: published beats the runs


def test_links_are_url_encoded_and_markdown_cells_escaped(tmp_path):
    outputs = tmp_path / "outputs"
    run_dir = outputs / "a b#1"
    write_run(run_dir, "encoders/my_whisper.py", "task1", 0)
    edit_run(run_dir, {"encoder": "encoders/a|b<c>.py"})
    out = tmp_path / "report"
    report.write_leaderboard(collect([outputs]), out)
    md = (out / "leaderboard.md").read_text()
    line = next(line for line in md.splitlines() if "a\\|b" in line)
    assert line.startswith("| encoders/a\\|b&lt;c&gt;.py | 1 |")
    header = md.splitlines()[4]
    # As many cells as the header: the escaped | does not split the row.
    assert len(re.split(r"(?<!\\)\|", line)) == len(header.split("|"))
    assert "(../outputs/a%20b%231)" in line
    cells = TableCells()
    cells.feed((out / "leaderboard.html").read_text())
    assert cells.links and all(href == "../outputs/a%20b%231" for href in cells.links)
    assert (out / unquote(cells.links[0]) / "scores.json").is_file()


def test_rows_without_run_metadata_are_told_apart_by_their_folders(tmp_path):
    outputs = tmp_path / "outputs"
    for day in ("2025-01-01_00-00-00_3", "2025-01-02_00-00-00_4"):
        write_run(outputs / "wavlm__task2" / day, "mel", "task2", 42, legacy=True)
    labels = sorted(r.label for r in build(collect([outputs])).rows)
    assert labels == ["wavlm #2025-01-01_00-00-00_3", "wavlm #2025-01-02_00-00-00_4"]
