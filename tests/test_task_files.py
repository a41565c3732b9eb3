"""The challenge's task files are generated from the protocol table, and nothing else.

``experiments/protocol/make_task_files.py`` renders ``xares_llm_protocol.yaml`` (each
protocol fact's one home) as ``conf/task/``'s 20 dataset files and 3 mixtures; a file edited
by hand, or a table changed without regenerating, fails here.
"""

from __future__ import annotations

import importlib.util

import pytest
import yaml
from helpers.config import ROOT

SCRIPT = ROOT / "experiments" / "protocol" / "make_task_files.py"


def load_generator():
    spec = importlib.util.spec_from_file_location("make_task_files", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENERATOR = load_generator()
FILES = GENERATOR.render_all()


def test_every_challenge_task_file_is_generated():
    protocol = GENERATOR.load_protocol()
    assert set(FILES) == {f"{k}.yaml" for k in protocol["datasets"]} | {
        "task1.yaml",
        "task2.yaml",
        "all.yaml",
    }
    assert len(FILES) == 23


@pytest.mark.parametrize("name", sorted(FILES))
def test_committed_task_file_is_what_the_table_gives(name):
    committed = (ROOT / "conf" / "task" / name).read_text(encoding="utf-8")
    assert committed == FILES[name], (
        f"conf/task/{name} differs from the protocol table; run "
        "`python experiments/protocol/make_task_files.py` (and edit the table, not the file)"
    )


def test_generated_files_carry_the_table_values():
    protocol = GENERATOR.load_protocol()
    for key, spec in protocol["datasets"].items():
        task = yaml.safe_load(FILES[f"{key}.yaml"])
        train, test = task["train"][key], task["eval"][spec["eval"]["name"]]
        assert train["prompt"] == spec["train"]["prompt"]
        assert test["label_key"] == spec["eval"]["label_key"]
        assert test["metric_args"] == spec["eval"]["metric_args"]
    assert yaml.safe_load(FILES["fsd50k.yaml"])["eval"]["eval_fsd50k"]["metric_args"] == {
        "num_classes": 200
    }


def test_check_mode_reports_a_stale_file(tmp_path, capsys):
    for name, text in FILES.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    assert GENERATOR.main(["--check", "--task-dir", str(tmp_path)]) == 0
    (tmp_path / "gtzan.yaml").write_text("name: gtzan\n", encoding="utf-8")
    assert GENERATOR.main(["--check", "--task-dir", str(tmp_path)]) == 1
    assert "gtzan.yaml" in capsys.readouterr().out
    assert (tmp_path / "gtzan.yaml").read_text() == "name: gtzan\n"  # --check writes nothing
