"""Runs of different tasks that share a task name, told apart by what their test sets scored.

Read by both leaderboards (the terminal one in :mod:`xares.results.scores`, the files of
:mod:`xares.results.leaderboard`), so that neither imports the other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def _compatible(identity: Mapping[str, str | None], ids: Mapping[str, str | None]) -> bool:
    """No test set of one name scores other clips or another way in the two (unknown: alike)."""
    return all(identity.get(k) in (None, v) for k, v in ids.items() if v is not None)


def separate_namesakes(runs: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Runs of different tasks that share a task name, told apart by what they scored.

    Two runs are of the same task only if no test set of one name has another identity
    (``set_id``: shards, labels, prompt, metric) in the other. The largest group of a name
    keeps it; each other group is renamed ``<name> #2``, … (its test sets and track with it),
    so its scores are never averaged with the others'. Returns copies and a note per rename.
    """
    by_name: dict[str, list[Mapping[str, Any]]] = {}
    for run in runs:
        by_name.setdefault(run.get("task_name") or "", []).append(run)
    separated: list[dict[str, Any]] = []
    notes: list[str] = []
    for name, group in by_name.items():
        parts: list[tuple[dict[str, str | None], list[Mapping[str, Any]]]] = []
        for run in group:
            ids = {t["task"]: t.get("set_id") for t in run["tasks"]}
            for identity, members in parts:
                if _compatible(identity, ids):
                    members.append(run)
                    identity.update({k: v for k, v in ids.items() if v is not None})
                    break
            else:
                parts.append((dict(ids), [run]))
        parts.sort(key=lambda part: -len(part[1]))
        separated += [dict(run) for run in parts[0][1]]
        for index, (identity, members) in enumerate(parts[1:], start=2):
            label = f"{name} #{index}"
            differ = sorted(k for k, v in identity.items() if parts[0][0].get(k) not in (None, v))
            notes.append(
                f"two different tasks are named {name!r}: {', '.join(differ)} score other clips "
                f"or score them another way, so the {len(members)} run(s) of the second are "
                f"shown as {label!r}"
            )
            separated += [_renamed(run, label) for run in members]
    return separated, notes


def _renamed(run: Mapping[str, Any], label: str) -> dict[str, Any]:
    tasks = [
        {
            **t,
            "task": f"{t['task']} ({label})",
            "track": f"{t['track']} ({label})" if t.get("track") else None,
        }
        for t in run["tasks"]
    ]
    return {**run, "task_name": label, "tasks": tasks}
