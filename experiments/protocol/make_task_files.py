"""Write the challenge's task files (``conf/task/``) from the protocol table.

    python experiments/protocol/make_task_files.py           # rewrite the files
    python experiments/protocol/make_task_files.py --check   # list the files that differ

Each protocol fact has one home, ``xares/protocol/xares_llm_protocol.yaml``: shards,
label keys, prompts, metrics and their arguments, batch sizes, budgets, tracks and mixture
weights. This script renders it as the 20 dataset files and the three mixtures (``task1``,
``task2``, ``all``) that Hydra composes; ``tests/test_task_files.py`` checks that the
committed files are exactly what it writes. Change the table (or the prose below), run the
script, commit both.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
PROTOCOL_FILE = HERE.parent.parent / "xares" / "protocol" / "xares_llm_protocol.yaml"
TASK_DIR = HERE.parent.parent / "conf" / "task"
PROTOCOL_LLM = "smollm2_135m"
WIDTH = 92

# What each set is, for the reader of its file; the facts themselves come from the table.
SUMMARIES = {
    "aishell-1": "mandarin read-speech recognition (AISHELL-1).",
    "asvspoof2015": "spoofing detection (ASVspoof 2015): is the voice genuine or "
    "synthetic/converted?",
    "clotho": "general audio captioning (Clotho).",
    "cremad": "emotion of acted speech (CREMA-D, 6 emotions).",
    "esc-50": "environmental sound classification (ESC-50, 50 classes); folds 1-4 train, "
    "fold 5 test.",
    "fluentspeechcommands": "spoken intent (Fluent Speech Commands): action, object and "
    "location as one answer.",
    "freemusicarchive": "music genre (FMA-small, 8 genres).",
    "fsd50k": "multi-label sound events (FSD50K, 200 classes).",
    "fsdkaggle2018": "sound events (FSDKaggle2018, 41 classes), scored like FSD50K.",
    "gtzan": "music genre (GTZAN, 10 genres); folds 0-8 train, fold 9 test.",
    "libricount": "number of simultaneous speakers (LibriCount, 0-10); folds 0-3 train, "
    "fold 4 test.",
    "librispeech": "english speech recognition: LibriSpeech train-clean-100, scored on test-clean.",
    "mecat": "general audio captioning (MECAT long captions). One shard directory per mix "
    "of sound domains (S speech, M music, A acoustic events, 0 absent).",
    "nsynth": "instrument family (NSynth, 11 families).",
    "songdescriber": "music captioning (Song Describer).",
    "speechcommandsv1": "keyword spotting (Speech Commands v1).",
    "urbansound8k": "urban sound classification (UrbanSound8K, 10 classes); folds 1-9 "
    "train, fold 10 test.",
    "vocalsound": "non-speech vocal sounds (VocalSound: laughter, sigh, cough, throat "
    "clearing, sneeze, sniff).",
    "voxceleb1": "speaker verification (VoxCeleb1), asked as a question: same or different "
    "speakers?",
    "voxlingua33": "spoken language identification (VoxLingua107, the 33-language subset).",
}

SCORING = {
    "Accuracy": None,
    "mAP": "mAP over the answer's `;`-separated labels, {num_classes} label columns. A "
    "label stored as a list is one reference per label, as the challenge's loader reads it.",
    "iWER": "iWER = max(0, 1 - WER).",
    "iCER": "iCER = max(0, 1 - CER): Chinese is scored per character.",
    "FENSE": "FENSE; a clip with several reference captions is scored against each.",
    "DATE": "DATE.",
}

TRACK_NAMES = {"task1": "Track A", "task2": "Track B"}

MIXTURE_HEADERS = {
    "task1": "Track A (task1): the protocol's 15 classification sets, trained as one weighted "
    "mixture and scored one by one; the mean of the 15 scores is the track score.",
    "task2": "Track B (task2): the protocol's 5 generation sets (speech recognition and "
    "captioning), trained as one weighted mixture and scored one by one.",
    "all": "Both tracks: all 20 protocol sets in one mixture; the report gives a mean per "
    "track and the overall mean.",
}

GENERATED = (
    "Written by experiments/protocol/make_task_files.py from xares_llm_protocol.yaml: "
    "change those and run it, not this file."
)
LLM_DEFAULT = [
    "  # A challenge task brings the protocol decoder; `llm=...` on the command line or an",
    "  # experiment still wins. `@_global_.llm` because, inside the `task` package, a bare",
    "  # `/llm` would name `task.llm`, which is in no defaults list.",
    f"  - override /llm@_global_.llm: {PROTOCOL_LLM}",
]


def load_protocol(path: Path = PROTOCOL_FILE) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def comment(text: str) -> list[str]:
    return textwrap.wrap(text, WIDTH - 2, initial_indent="# ", subsequent_indent="# ")


def scalar(value: Any) -> str:
    """A YAML scalar: strings double-quoted (JSON escapes are valid YAML), the rest as JSON."""
    if value is None:
        return "null"
    return json.dumps(value, ensure_ascii=False)


def flow(mapping: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {scalar(v)}" for k, v in mapping.items()) + "}"


def shard_lines(shards: list[str], indent: str) -> list[str]:
    if len(shards) == 1:
        return [f"{indent}shards: [{scalar(shards[0])}]"]
    return [f"{indent}shards:", *(f"{indent}  - {scalar(s)}" for s in shards)]


def render_dataset(key: str, protocol: dict[str, Any]) -> str:
    spec = protocol["datasets"][key]
    train, test, track = spec["train"], spec["eval"], spec["track"]
    name = f"{spec['mixture_name']} ({TRACK_NAMES[track]})"
    scoring = SCORING[test["metric"]]
    lines = [
        *comment(f"{name}: {SUMMARIES[key]}"),
        *comment(
            f"Alone (`task={key}`) this is the protocol's single-task run; the mixtures "
            "(task1/task2/all) compose this file and set its weight, budget and name."
        ),
    ]
    if scoring:
        lines += comment("Scoring: " + scoring.format(**test["metric_args"]))
    lines += [
        *comment(GENERATED),
        "defaults:",
        "  - _self_",
        *LLM_DEFAULT,
        "",
        f"name: {key}",
        f"track: {track}",
        f"max_steps: {spec['single_task_max_steps']}   # protocol: single_task_max_steps",
        "",
        "train:",
        f"  {key}:",
        *shard_lines(train["shards"], "    "),
        f"    repo_id: {train['repo_id']}",
        f"    label_key: {scalar(train['label_key'])}",
        f"    prompt: {scalar(train['prompt'])}",
        "    prob: null   # alone: all of the mixture; a mixture sets the protocol weight",
        "",
        "eval:",
        f"  {test['name']}:   # challenge naming, so scores line up with the published baselines",
        *shard_lines(test["shards"], "    "),
        f"    repo_id: {test['repo_id']}",
    ]
    if test["label_key"] != train["label_key"]:
        lines.append(
            "    # Not the training key: the protocol's test shards name the label this way."
        )
    lines += [
        f"    label_key: {scalar(test['label_key'])}",
        f"    prompt: {scalar(test['prompt'])}",
        f"    metric: {test['metric']}",
        f"    metric_args: {flow(test['metric_args'])}",
        f"    batch_size: {test['batch_size']}   # protocol value; scores do not depend on it",
        f"    weight: {test['weight']}",
        f"    track: {track}   # the report averages per track",
    ]
    return "\n".join(lines) + "\n"


def render_mixture(mixture: str, protocol: dict[str, Any]) -> str:
    spec = protocol["mixtures"][mixture]
    by_name = {d["mixture_name"]: k for k, d in protocol["datasets"].items()}
    keys = [by_name[name] for name in spec["datasets"]]
    probs = {by_name[name]: p for name, p in spec["datasets"].items()}
    width = max(len(k) for k in keys) + 2
    lines = [
        *comment(MIXTURE_HEADERS[mixture]),
        *comment(
            "Each dataset file (conf/task/<dataset>.yaml) brings its shards, prompts and "
            "metric; this file only chooses them and sets the protocol's weights and budget, "
            "which override the single-task values because `_self_` comes after the datasets."
        ),
        *comment(GENERATED),
        "defaults:",
        *(f"  - {k}" for k in keys),
        "  - _self_",
        *LLM_DEFAULT,
        "",
        f"name: {mixture}",
        f"track: {'null   # each eval set carries its own track' if mixture == 'all' else mixture}",
        f"max_steps: {spec['max_steps']}   # protocol",
        "",
    ]
    if any(p is None for p in probs.values()):
        lines += comment(
            "Sampling weights, normalised over the mixture. null means the dataset's share "
            "of all shards in the mixture, as the protocol does; the other sets get fixed "
            "weights."
        )
    else:
        lines += comment("Sampling weights (protocol), normalised over the mixture.")
    lines.append("train:")
    lines += [f"  {(k + ':').ljust(width)}{{prob: {scalar(probs[k])}}}" for k in keys]
    return "\n".join(lines) + "\n"


def render_all(protocol: dict[str, Any] | None = None) -> dict[str, str]:
    """File name -> text for every generated task file."""
    protocol = protocol or load_protocol()
    files = {f"{key}.yaml": render_dataset(key, protocol) for key in protocol["datasets"]}
    for mixture in MIXTURE_HEADERS:
        files[f"{mixture}.yaml"] = render_mixture(mixture, protocol)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; list differences")
    parser.add_argument("--task-dir", type=Path, default=TASK_DIR)
    args = parser.parse_args(argv)
    stale = []
    for name, text in render_all().items():
        path = args.task_dir / name
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(name)
        if not args.check:
            path.write_text(text, encoding="utf-8")
    verb = "differ from the protocol table" if args.check else "written"
    print(f"{len(stale)} task file(s) {verb}" + (": " + ", ".join(stale) if stale else ""))
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
