"""Rewrite the docs site's GPU page (docs/performance/gpu.md) from the JSON benchmarks/gpu_study.py wrote, so its
figures are never retyped.

    python benchmarks/gpu_docs.py                    # benchmarks/results/gpu_study.json -> docs/performance/gpu.md
    python benchmarks/gpu_docs.py --json J --page P  # other files; --print shows the section instead

Only the text between the `<!-- gpu-study:begin -->` and `<!-- gpu-study:end -->` lines is replaced; the page's prose
around them is kept. `mkdocs build --strict` (in `make test`) then renders it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PAGE = HERE.parent / "docs" / "performance" / "gpu.md"  # the site's GPU page, rendered by mkdocs
BEGIN, END = "<!-- gpu-study:begin", "<!-- gpu-study:end -->"
REGIMES = (("frozen", "frozen"), ("finetune", "fine-tune"))
NAMES = {"resnet18": "ResNet-18", "resnet34": "ResNet-34"}


def _f(x, digits: int = 1, suffix: str = "") -> str:
    return "n/a" if x is None else f"{x:,.{digits}f}{suffix}"


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def _failed(section) -> str | None:
    if section is None:
        return "not run"
    return section.get("error") if isinstance(section, dict) else None


def _header(doc: dict) -> list[str]:
    env = doc["environment"]
    gpu = (f"One {env['device']} ({env.get('memory_gib')} GiB, compute capability {env.get('compute_capability')}, "
           f"driver {env.get('driver')})" if not env.get("smoke") else f"A smoke run on {env['cpu']} (toy sizes)")
    s = env["sizes"]
    return [
        f"{gpu}; {env['cpu']}; torch {env['torch']} (CUDA {env['cuda']}), Python {env['python']}. Command: "
        "`bash benchmarks/gpu_study.sh` (CUDA tests, then `python benchmarks/gpu_study.py`, "
        f"{_f(doc['seconds'].get('total'), 0)} s in one process), this section written by "
        "`python benchmarks/gpu_docs.py` from `benchmarks/results/gpu_study.json`. Data: "
        f"{2 * s['n_per_class']:,} train-pool / {2 * s['n_test_per_class']:,} test acquisition-shifted phantoms at "
        f"{s['image']}², {s['epochs']} epochs, batch {s['batch']}, Adam 1e-3, cosine; random initial weights (the "
        "GPU machine is offline: timings are comparable with the report's, accuracies are not). Measured "
        f"{env['matmul_dtype']} matmul rate (the yardstick of every %): "
        f"{_f(env['matmul_flops_per_s'] / 1e12, 1)} TFLOP/s.",
        "",
    ]


def _study(doc: dict) -> list[str]:
    st, ref, off = doc.get("study") or {}, doc.get("reference") or {}, doc.get("graphs_off") or {}
    lines = [f"**The reference study: {_f(doc['reference_study_training_seconds'])} s of training in total** (the "
             "four runs' feature pass + training loop; target ≤ 30 s). ResNet-18 against the reference loop in the "
             f"same process: frozen **{_f(doc['frozen_speedup'])}x** (target ≥ 20x), fine-tune "
             f"**{_f(doc['finetune_speedup'])}x** (target ≥ 3x), wall seconds; training seconds alone: "
             f"{_f(doc.get('frozen_training_speedup'))}x and {_f(doc.get('finetune_training_speedup'))}x.", "",
             "| run | feature pass s | training loop s | training s | evaluation s | wall s | val acc | CUDA graphs |",
             "|---|---|---|---|---|---|---|---|"]
    for regime, label in REGIMES:
        r = ref.get(regime)
        if r and not _failed(ref):
            lines.append(f"| ResNet-18 reference loop, {label} | | {_f(r['train_s'])} | {_f(r['train_s'])} | "
                         f"{_f(r['eval_s'])} | {_f(r['wall_s'])} | {_f(r['val_acc'], 3)} | |")
    for key, r in [*st.items(), *((k + " (graphs off)", v) for k, v in off.items())]:
        if not isinstance(r, dict) or "wall_s" not in r:
            continue
        backbone, regime = key.split(" ")[0].split("-")
        graphs = r["accel"].get("cuda_graphs")
        steps = (f", {r['accel']['steps_replayed']} replayed / {r['accel']['steps_eager']} eager steps"
                 if "steps_replayed" in r["accel"] else "")
        extra = " (graphs off)" if "graphs off" in key else ""
        lines.append(f"| {NAMES.get(backbone, backbone)} xferlab, {dict(REGIMES)[regime]}{extra} | "
                     f"{_f(r['feature_s']) if r['feature_s'] else ''} | {_f(r['train_s'])} | {_f(r['training_s'])} | "
                     f"{_f(r['eval_s'])} | {_f(r['wall_s'])} | {_f(r['val_acc'], 3)} | "
                     f"{'yes' if graphs else 'no'}{steps} |")
    for name, section in (("reference", ref), ("study", st), ("graphs_off", off)):
        if _failed(section):
            lines.append(f"\n`{name}` did not finish: {_failed(section)}")
    return lines + [""]


def _bench(doc: dict) -> list[str]:
    b, d = doc.get("bench_256") or {}, doc.get("ddp") or {}
    lines = []
    if _failed(b):
        lines.append(f"`xferlab bench` at batch 256 did not finish: {_failed(b)}")
    else:
        lines.append(f"`xferlab bench --backbone resnet18 --image-size {b['image_size']} --batch-size "
                     f"{b['batch_size']}`: {_f(b['train_images_per_s'], 0)} training images/s, "
                     f"**{_pct(b['train_matmul_fraction'])} of the matmul rate** (target ≥ 30 %); "
                     f"{_f(b['inference_images_per_s'], 0)} inference images/s "
                     f"({_pct(b['inference_matmul_fraction'])}).")
    if _failed(d):
        lines.append(f"One-rank DDP did not finish: {_failed(d)}")
    else:
        lines.append(f"ResNet-18 fine-tune under `torchrun --nproc-per-node 1` ({d['distributed']}, "
                     f"DistributedDataParallel): {_f(d['ddp_train_s'])} s of training against {_f(d['plain_train_s'])} "
                     f"s for the plain process running the same loop (graphs off): **{_f(d['ddp_over_plain'], 2)}x** "
                     f"(target ≤ 1.10x); val acc {_f(d['ddp_val_acc'], 3)} vs {_f(d['plain_val_acc'], 3)}.")
    return lines + [""]


def _zoo(doc: dict) -> list[str]:
    zoo = doc.get("backbones") or {}
    if _failed(zoo):
        return [f"The backbone table did not finish: {_failed(zoo)}", ""]
    size = doc["environment"]["sizes"]["zoo_image"]
    first = next((r for r in zoo.values() if "error" not in r), {})
    settings = f"amp {first.get('amp')}, channels_last {'on' if first.get('channels_last') else 'off'}"
    lines = [f"Built-in backbones at {size}², `xferlab bench` defaults ({settings}, random weights, the engine's "
             "uncaptured training step); % = FLOP/s reached / measured matmul rate:", "",
             "| backbone | batch | train images/s | train % | inference images/s | inference % |",
             "|---|---|---|---|---|---|"]
    for key, r in zoo.items():
        name, batch = key.split("@")
        if "error" in r:
            lines.append(f"| {name} | {batch} | {r['error'][:80]} | | | |")
        else:
            lines.append(f"| {name} | {batch} | {_f(r['train_images_per_s'], 0)} | "
                         f"{_pct(r['train_matmul_fraction'])} | "
                         f"{_f(r['inference_images_per_s'], 0)} | {_pct(r['inference_matmul_fraction'])} |")
    return lines + [""]


def render(doc: dict) -> str:
    """The section's Markdown (between the markers) from the study's JSON."""
    return "\n".join(_header(doc) + _study(doc) + _bench(doc) + _zoo(doc))


MARKER = f"{BEGIN}: written by benchmarks/gpu_docs.py from benchmarks/results/gpu_study.json; do not edit -->"


def replace_section(page: str, body: str) -> str:
    """`page` with everything from the begin marker line to the end marker replaced by the marker and `body`."""
    start = page.find(BEGIN)
    end = page.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"the page has no '{BEGIN} ... -->' / '{END}' pair of lines to replace between")
    return page[:start] + MARKER + "\n" + body.rstrip("\n") + "\n" + page[end:]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, default=HERE / "results" / "gpu_study.json")
    p.add_argument("--page", type=Path, default=PAGE,
                   help="the docs page whose gpu-study section is rewritten")
    p.add_argument("--print", action="store_true", help="print the section instead of writing the page")
    args = p.parse_args(argv)
    try:
        doc = json.loads(args.json.read_text())
    except (OSError, ValueError) as err:
        print(f"error: {args.json}: cannot read the study's JSON ({err}); run benchmarks/gpu_study.py first",
              file=sys.stderr)
        return 2
    body = render(doc)
    if args.print:
        print(body)
        return 0
    text = replace_section(args.page.read_text(), body)
    tmp = args.page.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, args.page)
    print(f"rewrote the GPU section of {args.page}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
