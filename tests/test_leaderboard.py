"""``make report``: the leaderboard of a sweep as markdown, HTML and PNG plots."""

from __future__ import annotations

import json
import random
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import yaml
from helpers.browser import needs_chromium, screenshot
from helpers.config import ROOT
from markupsafe import escape

from xares.results import cli, plots, scores
from xares.results.leaderboard import (
    ChallengeScoring,
    build,
    challenge_results,
    published_baselines,
)
from xares.results.scores import collect

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
MARK_BACKGROUND = (0xFF, 0xF1, 0xE5)  # .mark in leaderboard.html.j2


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


COMPARABLE = {
    "comparable": True,
    "against": "the XARES-LLM challenge's public results",
    "reasons": [],
}
BF16 = {"code": "decoder_dtype", "text": "frozen decoder in bfloat16 (protocol: float32)"}
LIMIT = {
    "code": "eval_limit",
    "text": "data.eval_limit=64: only the first 64 clips of each test set",
}


def not_comparable(*reasons: dict) -> dict:
    return {**COMPARABLE, "comparable": False, "reasons": list(reasons)}


def write_run(
    run_dir: Path,
    encoder: str,
    mixture: str,
    seed: int,
    legacy: bool = False,
    comparability: dict | None = COMPARABLE,
):
    """A run's score files as xares writes them; ``legacy``: from before the run block (and the
    comparability verdict) existed."""
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
    summary = scores.summarise(results, efficiency if parameters else None)
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
        if comparability is not None:
            summary["comparability"] = comparability
    name = ("custom" if encoder.endswith(".py") else encoder) + f"__{mixture}"
    if legacy:
        name = f"wavlm__{mixture}"  # what the run's name says, the only label an old file has
    scores.write_reports(run_dir, results, run_name=name, summary=summary)


def run_of(outputs: Path, encoder: str, task: str) -> Path:
    """The run directory of the (single-seed) run of ``encoder`` on ``task``."""
    return next(
        Path(r["run_dir"])
        for r in collect([outputs])
        if r["encoder"] == encoder and r["task_name"] == task
    )


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
    assert cli.main([str(sweep), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "task: task1" in printed and "dasheng [" in printed  # the text table still prints
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
    # One highlighted cell per column, a run's (reference rows never compete): no more, no fewer.
    board = build(collect([sweep]))
    assert sorted(cells.best_texts) == sorted(f"{v:.3f}" for v in board.best.values())
    assert all(w.kind == "run" for winners in board.winners.values() for w in winners)
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
        assert cli.main([str(sweep), "--out", str(out)]) == 0
    assert f"skipped {broken}: not a readable xares scores.json" in caplog.text
    assert "| dasheng | 3 |" in (out / "leaderboard.md").read_text()
    assert cli.main([str(tmp_path / "no_runs_here"), "--out", str(tmp_path / "r2")]) == 1


def test_no_efficiency_skips_the_cost_plot_and_says_why(tmp_path, caplog):
    for seed in (1, 2):
        run_dir = tmp_path / "runs" / f"mel{seed}"
        write_run(run_dir, "mel", "task2", seed)  # mel has no efficiency block here
    out = tmp_path / "report"
    with caplog.at_level("INFO"):
        assert cli.main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    assert not (out / "score_vs_cost.png").exists() and (out / "scores_by_task.png").is_file()
    assert "score_vs_cost.png not written: no run has an efficiency block" in caplog.text
    assert "score_vs_cost.png not written" in (out / "leaderboard.html").read_text()


def test_published_baselines_match_the_docs():
    """One data file holds the baselines; the protocol page quotes the same numbers."""
    data = published_baselines()
    assert "XARES-LLM" in data["source"]
    page = (ROOT / "docs" / "protocol.md").read_text()
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
        assert row in page


@needs_chromium
def test_the_page_renders_in_a_headless_browser(sweep, tmp_path):
    edit_run(run_of(sweep, "beats", "task1"), comparability=not_comparable(BF16))
    out = tmp_path / "report"
    cli.main([str(sweep), "--out", str(out)])
    shot = tmp_path / "page.png"
    pixels = screenshot(out / "leaderboard.html", shot)
    assert shot.stat().st_size > 20_000
    # The marks are drawn: beats' ≠1 and the old file's ?, in the label column (and the
    # legend below it), as badges of their own colour.
    badge = np.all(np.abs(pixels - np.array(MARK_BACKGROUND) / 255) < 1.5 / 255, axis=-1)
    _, xs = np.nonzero(badge)
    assert badge.sum() > 100 and xs.min() < 300, "no comparability mark on the rendered page"


def edit_run(
    run_dir: Path,
    run: dict | None = None,
    unscored: tuple[str, ...] = (),
    scores: dict[str, float] | None = None,
    comparability: dict | None = None,
) -> None:
    """Change a written scores.json: entries of its run block, test sets left unscored or given
    other scores, its comparability verdict."""
    path = run_dir / "scores.json"
    summary = json.loads(path.read_text())
    summary["run"] = {**summary.get("run", {}), **(run or {})}
    for task in summary["tasks"]:
        if task["task"] in unscored:
            task["score"] = None
        task["score"] = (scores or {}).get(task["task"], task["score"])
    if comparability is not None:
        summary["comparability"] = comparability
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
    with caplog.at_level("INFO", logger="xares.results.leaderboard"):
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
    overall = row.cells["track:task1"]  # one track: its mean is the summary
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
    cli.write_leaderboard(runs, out)
    md = (out / "leaderboard.md").read_text()
    line = next(line for line in md.splitlines() if line.startswith("| dasheng | 3 |"))
    assert f"{esc50(first):.3f}" in line and "(n=1)" in line
    assert line.split(" | ")[2].endswith("‡")  # the track mean, first after the seeds
    assert "‡ partial: some seed has no score" in md
    html = (out / "leaderboard.html").read_text()
    assert " n=1</span>" in html and "‡ partial" in html


def test_published_track_means_head_a_one_track_report_and_never_win(tmp_path):
    outputs = tmp_path / "outputs"
    dasheng_seeds(outputs)
    board = build(collect([outputs]))
    # One track: its mean is the headline, there is no cross-track overall.
    assert [c.key for c in board.columns][0] == "track:task1"
    assert "overall" not in {c.key for c in board.columns}
    published = {r.label: r for r in board.references}
    assert published["dasheng_base (published)"].cells["track:task1"].mean == 0.614
    assert published["whisper_base (published)"].cells["track:task1"].mean == 0.652
    # The plot's panel ends with the track mean, so the published rows have a bar there.
    ((_, columns),) = plots.panels(board)
    assert [c.key for c in columns][-1] == "track:task1"
    out = tmp_path / "report"
    cli.write_leaderboard(collect([outputs]), out)
    md = (out / "leaderboard.md").read_text()
    whisper = next(line for line in md.splitlines() if line.startswith("| *whisper_base"))
    # Higher than the runs' mean, yet reference rows are there to compare with, not to win.
    assert whisper.startswith("| *whisper_base (published)* | | 0.652 |")
    (dasheng,) = board.rows
    assert board.best["track:task1"] == dasheng.cells["track:task1"].mean < 0.652
    assert "**" not in whisper


def test_links_are_url_encoded_and_markdown_cells_escaped(tmp_path):
    outputs = tmp_path / "outputs"
    run_dir = outputs / "a b#1"
    write_run(run_dir, "encoders/my_whisper.py", "task1", 0)
    edit_run(run_dir, {"encoder": "encoders/a|b<c>.py"})
    out = tmp_path / "report"
    cli.write_leaderboard(collect([outputs]), out)
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


def md_line(md: str, start: str) -> str:
    return next(line for line in md.splitlines() if line.startswith(start))


def test_a_run_not_comparable_is_marked_and_its_reasons_listed(sweep, tmp_path):
    # beats in bfloat16 on both tracks; mel in bfloat16 and on 64 clips for task1, on 64 clips
    # for task2: its row takes the union of the reasons, each once.
    edit_run(run_of(sweep, "beats", "task1"), comparability=not_comparable(BF16))
    edit_run(run_of(sweep, "beats", "task2"), comparability=not_comparable(BF16))
    edit_run(run_of(sweep, "mel", "task1"), comparability=not_comparable(BF16, LIMIT))
    edit_run(run_of(sweep, "mel", "task2"), comparability=not_comparable(LIMIT))
    board = build(collect([sweep]))
    rows = {r.label: r for r in board.rows}
    assert rows["beats"].comparability.reasons == [BF16["text"]]
    mel = rows["mel"].comparability.reasons
    assert sorted(mel) == sorted([BF16["text"], LIMIT["text"]])
    assert rows["dasheng"].comparability.comparable and not rows["dasheng"].marks
    out = tmp_path / "report"
    cli.write_leaderboard(collect([sweep]), out)

    md = (out / "leaderboard.md").read_text()
    assert md_line(md, "| beats ≠1 | 1 |") and md_line(md, "| mel ≠2 | 1 |")
    against = "not comparable with the XARES-LLM challenge's public results"
    assert f"≠1 {against}: {BF16['text']}.\n" in md
    assert f"≠2 {against}: {'; '.join(mel)}.\n" in md
    assert md.count(LIMIT["text"]) == 1

    html = (out / "leaderboard.html").read_text()
    assert '>beats <span class="mark">≠1</span></td>' in html
    assert f'<span class="mark">≠2</span>{escape(against)}: {"; ".join(mel)}.' in html


def test_a_run_not_comparable_never_wins_against_a_comparable_one(tmp_path):
    outputs = tmp_path / "outputs"
    # dasheng scores higher than mel everywhere, but in bfloat16; mel runs the protocol.
    write_run(outputs / "dasheng2", "dasheng", "task2", 1, comparability=not_comparable(BF16))
    write_run(outputs / "mel2", "mel", "task2", 1)
    write_run(outputs / "dasheng1", "dasheng", "task1", 1, comparability=not_comparable(BF16))
    board = build(collect([outputs]))
    dasheng, mel = (next(r for r in board.rows if r.label == name) for name in ("dasheng", "mel"))
    assert dasheng.cells["track:task2"].mean > mel.cells["track:task2"].mean
    for column in board.columns:
        if column.track == "task2":
            assert board.winners[column.key] == [mel], column.key
    # No comparable run has task1: the best of the others wins there, and says what it is.
    assert board.winners["track:task1"] == [dasheng]

    out = tmp_path / "report"
    cli.write_leaderboard(collect([outputs]), out)
    md = (out / "leaderboard.md").read_text()
    dasheng_line = md_line(md, "| dasheng ≠1 | 1 |")
    task1 = f"{dasheng.cells['track:task1'].mean:.3f}"
    task2 = f"{dasheng.cells['track:task2'].mean:.3f}"
    assert f"| **{task1}** ≠1 |" in dasheng_line and f"| {task2} |" in dasheng_line
    assert f"| **{mel.cells['track:task2'].mean:.3f}** |" in md_line(md, "| mel | 1 |")
    cells = TableCells()
    cells.feed((out / "leaderboard.html").read_text())
    assert task1 in cells.best_texts and task2 not in cells.best_texts


def test_a_file_from_before_the_verdict_is_marked_not_checked(tmp_path):
    outputs = tmp_path / "outputs"
    write_run(outputs / "old", "mel", "task2", 1, comparability=None)
    # One seed checked and comparable, one not checked: the row is not known to be comparable.
    write_run(outputs / "new0", "whisper_base", "task2", 0)
    write_run(outputs / "new1", "whisper_base", "task2", 1, comparability=None)
    board = build(collect([outputs]))
    rows = {r.label: r for r in board.rows}
    assert rows["mel"].marks == ["?"] and rows["whisper_base"].marks == ["?"]
    assert rows["whisper_base"].comparability.unchecked == 1
    out = tmp_path / "report"
    cli.write_leaderboard(collect([outputs]), out)
    md = (out / "leaderboard.md").read_text()
    assert md_line(md, "| mel ? | 1 |")
    assert "? not checked: a scores.json written before runs carried a comparability verdict" in md
    assert "`python -m xares.evaluate ckpt_path=RUN_DIR`" in md
    html = (out / "leaderboard.html").read_text()
    assert '<span class="mark">?</span>not checked:' in html
    assert "≠" not in md  # no reasons to list


def test_the_results_page_entries_are_reference_rows_with_their_source(sweep, tmp_path):
    data = challenge_results()
    assert data["source"]["repository"] == "DataoceanAI/Interspeech2026-Audio-Encoder-Challenge"
    assert data["source"]["file"] == "docs/result.html"
    assert re.fullmatch(r"[0-9a-f]{40}", data["source"]["commit"])
    board = build(collect([sweep]))
    entries = {r.label: r for r in board.references if r.kind == "reference"}
    assert len(entries) == len(data["entries"]) == 23
    thuvoice = entries["THUVoice (challenge)"]
    assert thuvoice.cells["track:task1"].mean == 0.8527
    assert thuvoice.cells["track:task2"].mean == 0.7014
    assert thuvoice.cells["task:eval_clotho"].mean == 0.4789
    assert "overall" not in thuvoice.cells  # the challenge never combines its tracks
    # Ranked by track as the page ranks Track A, and never a column's best.
    track_a = [r.cells["track:task1"].mean for r in entries.values()]
    assert track_a == sorted(track_a, reverse=True)
    assert not any(board.is_best(r, c) for r in board.references for c in board.columns)

    out = tmp_path / "report"
    cli.write_leaderboard(collect([sweep]), out)
    md = (out / "leaderboard.md").read_text()
    assert md_line(md, "| *THUVoice (challenge)* | | 0.853 | 0.701 |")
    assert f"*(challenge)*: {data['source']['text']}." in md
    html = (out / "leaderboard.html").read_text()
    assert '<tr class="reference">' in html and "docs/result.html at 7f3023c" in html


def test_the_published_public_results_are_the_mean_of_the_per_task_scores():
    """The results page's "Public test result" of a track is the plain mean of the per-task
    scores it prints (to its 4 decimals), for every entry and both tracks: no weights, and no
    normalisation beyond what the per-task numbers already carry."""
    entries = challenge_results()["entries"]
    for track in ("task1", "task2"):
        sets = {s["task"] for s in eval_sets(track)}
        for team, entry in entries.items():
            scores = [v for t, v in entry["tasks"].items() if t in sets]
            assert len(scores) == len(sets), (team, track)  # the page's names are xares' names
            mean = sum(scores) / len(scores)
            assert abs(mean - entry["tracks"][track]) <= 0.5e-4 + 1e-9, (team, track, mean)


def test_the_challenge_normalises_by_each_metric_s_possible_range(tmp_path):
    scoring = ChallengeScoring.from_data(challenge_results())
    assert scoring.normalise("FENSE", -0.2) == pytest.approx(0.4)
    assert scoring.normalise("FENSE", 0.5) == pytest.approx(0.75)
    for metric in ("Accuracy", "mAP", "iWER", "iCER", "DATE"):
        assert scoring.normalise(metric, 0.37) == pytest.approx(0.37)
    with pytest.raises(KeyError, match="no worst and best possible value of 'TokenF1'"):
        scoring.normalise("TokenF1", 0.5)
    assert scoring.weights is None  # none published: equal weights

    outputs = tmp_path / "outputs"
    run_dir = outputs / "run"
    write_run(run_dir, "mel", "task2", 1)
    raw = {
        "eval_aishell-1": 0.30,
        "eval_clotho": -0.20,
        "eval_librispeech": 0.50,
        "eval_mecat": 0.40,
        "eval_songdescriber": 0.10,
    }
    edit_run(run_dir, scores=raw)
    board = build(collect([outputs]))
    (row,) = board.rows
    # (0.30 + (-0.20 + 1) / 2 + 0.50 + 0.40 + (0.10 + 1) / 2) / 5
    assert row.cells["normalised:task2"].mean == pytest.approx((0.3 + 0.4 + 0.5 + 0.4 + 0.55) / 5)
    assert row.cells["track:task2"].mean == pytest.approx(sum(raw.values()) / 5)
    # Shown where it differs from the raw mean: Track B (FENSE), not Track A (all in [0, 1]).
    kinds = {c.key: c.kind for c in board.columns}
    assert kinds["normalised:task2"] == "normalised"
    write_run(tmp_path / "task1" / "run", "mel", "task1", 1)
    task1 = build(collect([tmp_path / "task1"]))
    assert [c.key for c in task1.columns if c.kind != "task"] == ["track:task1"]
    out = tmp_path / "report"
    cli.write_leaderboard(collect([outputs]), out)
    md = (out / "leaderboard.md").read_text()
    assert "task2 normalised (Track B)" in md.splitlines()[4]
    assert "with equal weights (the challenge publishes none)" in md
    assert "FENSE: −1 to 1" in md


def test_the_terminal_leaderboard_names_why_a_run_is_not_comparable(tmp_path):
    outputs = tmp_path / "outputs"
    write_run(outputs / "a", "dasheng", "task2", 1, comparability=not_comparable(BF16, LIMIT))
    write_run(outputs / "b", "mel", "task2", 1)
    write_run(outputs / "c", "beats", "task2", 1, legacy=True)
    lines = cli.terminal_leaderboard(collect([outputs])).splitlines()
    # Short column labels keep the table as wide as its numbers; the key under it says the rest.
    header = lines[1]
    assert header.split()[3:] == ["dasheng", "[1]", "wavlm", "[2]", "mel", "[3]"]
    assert "  [1] dasheng: a, seed 1, NOT comparable: decoder_dtype, eval_limit" in lines
    assert "  [2] wavlm: c, name from folder, comparability not checked" in lines
    assert "  [3] mel: b, seed 1" in lines


def test_two_tasks_that_share_a_name_are_never_averaged_together(tmp_path):
    outputs = tmp_path / "outputs"
    for name, encoder in (("a", "dasheng"), ("b", "mel"), ("c", "beats")):
        write_run(outputs / name, encoder, "task2", 1)
    # Run c's task is also called task2, but its Clotho set has other clips (another identity).
    for name in ("a", "b", "c"):
        path = outputs / name / "scores.json"
        summary = json.loads(path.read_text())
        for task in summary["tasks"]:
            other = name == "c" and task["task"] == "eval_clotho"
            task["set_id"] = "b" * 12 if other else "a" * 12
        path.write_text(json.dumps(summary))
    board = build(collect([outputs]))
    beats = next(r for r in board.rows if r.label == "beats")
    assert "task:eval_clotho" not in beats.cells and "track:task2" not in beats.cells
    assert "task:eval_clotho (task2 #2)" in beats.cells
    others = [r for r in board.rows if r.label != "beats"]
    assert all("task:eval_clotho" in r.cells for r in others)
    assert board.notes == [
        "two different tasks are named 'task2': eval_clotho score other clips or score them "
        "another way, so the 1 run(s) of the second are shown as 'task2 #2'"
    ]
    text = cli.terminal_leaderboard(collect([outputs]))
    assert "task: task2  (2 runs)" in text and "task: task2 #2  (1 runs)" in text
    assert text.splitlines()[-1].startswith("note: two different tasks are named 'task2'")
    out = tmp_path / "report"
    cli.write_leaderboard(collect([outputs]), out)
    assert "Note: two different tasks are named" in (out / "leaderboard.md").read_text()
    assert "Note: two different tasks are named" in (out / "leaderboard.html").read_text()
    # Files from before the identity was kept (no set_id) join the group of their name.
    for name in ("a", "b", "c"):
        path = outputs / name / "scores.json"
        summary = json.loads(path.read_text())
        for task in summary["tasks"]:
            task.pop("set_id")
        path.write_text(json.dumps(summary))
    assert build(collect([outputs])).notes == []
