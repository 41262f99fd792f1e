"""The split audit at 2k-230k images (issue 20): whole-audit and per-step seconds, peak RSS and the fitted growth
exponent; the recall of the indexed leakage search against the all-pairs one; false findings over clean random
splits. Not run by the tests.

    python benchmarks/audit_scale.py sizes --sizes 2333 9333 28000 58000 --work /tmp/audit_scale
    python benchmarks/audit_scale.py sizes --sizes 58000 230000 --given-embeddings   # backbone pass left out
    python benchmarks/audit_scale.py sizes --sizes 58000 --in-sequence   # re-splits after the statistics
    python benchmarks/audit_scale.py recall --images 28000
    python benchmarks/audit_scale.py clean --splits 100
    python benchmarks/audit_scale.py detect --copies 25   # planted altered copies: detection rate per alteration
    python benchmarks/audit_scale.py detect --copies 25 --size 224   # the same at 224 px (also 512)
    python benchmarks/audit_scale.py sizes --sizes 2300 --size 224   # the audit of 2,300 phantoms at 224 px
    python benchmarks/audit_scale.py crop-effect          # how far a 1-pixel crop moves the hash and the embedding
    python benchmarks/audit_scale.py runtimes             # the embedding by PyTorch vs ONNX Runtime

Each size runs in its own process (`one`), so its peak RSS is its own. Phantoms at 32 px (`--size`), `--resplits 5
--permutations 200`, CPU, `--threads` torch / ONNX Runtime threads (default 1).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from xferlab.audit.neighbours import METRICS
from xferlab.data import reexport

TEST_SHARE = 0.15  # phantoms: test images per class as a share of all images of the class


def _phantoms(work: Path, n: int, size: int = 32) -> Path:
    from xferlab.data.phantoms import generate_phantoms

    per_class = n // 2
    n_test = int(per_class * TEST_SHARE)
    path = work / (f"ph{n}" if size == 32 else f"ph{n}-{size}px")
    if not (path / "phantoms.json").exists():
        generate_phantoms(path, size=size, n_per_class=per_class - n_test, n_test_per_class=n_test, seed=0)
    return path


def one(n: int, work: Path, given_embeddings: bool, threads: int = 1, in_sequence: bool = False,
        size: int = 32) -> dict:
    """One audit of n phantom images; seconds per step, peak RSS. `in_sequence`: the re-splits after the
    statistics rather than beside them, so that each step's seconds are its own."""
    import xferlab.audit.run as audit_run
    from xferlab.audit import run_audit
    from xferlab.config import AuditConfig, DataConfig

    if in_sequence:  # the runner's private switch: this benchmark is its only other user
        audit_run._overlaps = lambda cfg: False

    path = _phantoms(work, n, size)
    out = work / f"audit{n}-{size}px{'-given' if given_embeddings else ''}"
    embeddings = None
    if given_embeddings:  # stands in for embeddings computed elsewhere (a GPU box): 1280 columns as Lite0 gives
        count = sum(len(np.load(f, mmap_mode="r")) for f in path.glob("*.npy"))
        embeddings = np.random.default_rng(0).normal(size=(count, 1280)).astype(np.float32)
    start = time.perf_counter()
    cfg = AuditConfig(resplits=5, permutations=200, device="cpu", num_threads=threads)
    result = run_audit(DataConfig(path=path), cfg, out, progress=False, embeddings=embeddings)
    wall = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    return {"images": result["dataset"]["images"], "size": size, "runtime": result["embedding_runtime"],
            "given_embeddings": given_embeddings, "in_sequence": in_sequence,
            "wall_s": wall, "steps_s": result["seconds"], "peak_rss_gib": rss,
            "findings": result["leakage"]["near_duplicate_images"]}


def sizes(args: argparse.Namespace) -> None:
    rows = []
    for n in args.sizes:
        cmd = [sys.executable, __file__, "one", "--n", str(n), "--work", str(args.work)]
        cmd += ["--given-embeddings"] if args.given_embeddings else []
        cmd += ["--threads", str(args.threads), "--size", str(args.size)] + (["--in-sequence"] if args.in_sequence
                                                                             else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    if len(rows) >= 2:
        n = np.log([r["images"] for r in rows])
        for key in ("total", "embedding", "leakage", "resplit"):
            slope = np.polyfit(n, np.log([max(r["steps_s"][key], 1e-3) for r in rows]), 1)[0]
            print(f"growth exponent ({key}): {slope:.2f}")


def recall(args: argparse.Namespace) -> None:
    """Recall@1 of the indexed search against the all-pairs one, for each measure the leakage search uses (Lite0
    embeddings from the audit's own image pass): each val/test image's nearest image of the splits it is compared
    with (CROSS), and each image's nearest other image of its split for a seeded sample of `--within` per split."""
    from xferlab.audit.leakage import CROSS, PHASH_BITS, _split_rows
    from xferlab.audit.neighbours import NeighbourSearch
    from xferlab.audit.scan import scan_dataset
    from xferlab.config import AuditConfig, DataConfig
    from xferlab.data.sources import load_dataset

    data = load_dataset(DataConfig(path=_phantoms(args.work, args.images)))
    t = time.perf_counter()
    scan = scan_dataset(data, AuditConfig(device="cpu", num_threads=args.threads), progress=False)
    print(f"{len(data.labels)} images scanned in {time.perf_counter() - t:.0f} s ({scan.runtime})", flush=True)
    groups = _split_rows(data, scan.hashes)
    rng = np.random.default_rng(0)
    within = {s: np.sort(rng.choice(r, min(args.within, len(r)), replace=False)) for s, r in groups.items()}
    measures = {"perceptual hash (Hamming)": (scan.phashes, "hamming"),
                "spectral descriptor (Euclidean)": (scan.descriptors, "euclidean"),
                "Lite0 embedding (cosine)": (scan.embeddings, "cosine")}
    for name, (features, metric) in measures.items():
        if metric not in args.metrics:
            continue
        searches = {}
        for mode, exact in (("indexed", False), ("all pairs", True)):
            t = time.perf_counter()
            search = NeighbourSearch(features, metric, groups, exact=exact)
            found = [search.nearest(np.flatnonzero(data.splits == q), refs) for q, refs in CROSS]
            found += [search.nearest(within[s], [s], exclude_self=True) for s in groups if len(groups[s]) > 1]
            searches[mode] = (np.concatenate([d for d, _ in found]), time.perf_counter() - t)
        (d_idx, t_idx), (d_ex, t_ex) = searches["indexed"], searches["all pairs"]
        hit = np.isclose(d_idx, d_ex, rtol=1e-5, atol=0.5 / PHASH_BITS if metric == "hamming" else 1e-6)
        print(f"{name}: {len(hit)} queries: recall@1 {hit.mean():.4f} ({np.count_nonzero(~hit)} missed; indexed "
              f"{t_idx:.1f} s, all pairs {t_ex:.1f} s)", flush=True)


def clean(args: argparse.Namespace) -> None:
    """Random re-assignments of the default phantoms' splits: any aligned/phash finding is a false one."""
    from xferlab.audit.leakage import PHASH_BITS, aligned_copies, content_hashes, near_duplicates, perceptual_hashes
    from xferlab.audit.nearcopy import spectral_descriptors
    from xferlab.config import AuditConfig, DataConfig
    from xferlab.data.dataset import ImageDataset
    from xferlab.data.phantoms import generate_phantoms
    from xferlab.data.sources import load_dataset

    path = args.work / "default32"
    if not (path / "phantoms.json").exists():
        generate_phantoms(path, size=32, seed=0)
    base = load_dataset(DataConfig(path=path))
    hashes, desc, ph = content_hashes(base.images), spectral_descriptors(base.images), perceptual_hashes(base.images)
    false = {"aligned": 0, "phash": 0}
    for seed in range(args.first, args.first + args.splits):
        splits = np.random.default_rng(seed).permutation(base.splits)
        data = ImageDataset(base.images, base.labels, base.class_names, splits, source="clean")
        cfg = AuditConfig(seed=seed)
        false["aligned"] += bool(aligned_copies(data, desc, hashes, cfg)[1])
        false["phash"] += bool(near_duplicates(data, ph, "hamming", PHASH_BITS, hashes, cfg)[1])
        print(f"split {seed}: splits with a false finding so far {false}", flush=True)
    print(json.dumps({"images": len(base.labels), "splits": args.splits, "first_seed": args.first,
                      "splits_with_false_findings": false}))


ALTERATIONS = {
    "crop 1 px (3 % at 32 px), one corner": lambda im, rng: reexport.crop(im, 0.01),
    "crop 2 px (6 %), one corner": lambda im, rng: reexport.crop(im, 0.06),
    "rescale +3 %": lambda im, rng: reexport.rescale(im, 0.03),
    "JPEG quality 75": lambda im, rng: reexport.jpeg(im),
    "JPEG quality 50": lambda im, rng: reexport.jpeg(im, 50),
    "brightness +8, contrast ×1.1": lambda im, rng: reexport.brightness_contrast(im),
    "Gaussian noise sd 3": reexport.noise,
    "crop 1 px + brightness + JPEG 75 + noise":
        lambda im, rng: reexport.noise(reexport.jpeg(reexport.brightness_contrast(reexport.crop(im, 0.01))), rng),
}


def detect(args: argparse.Namespace) -> None:
    """Plant `--copies` altered train images per alteration into the default phantoms' test split; detection rate per
    alteration and per measure (aligned, perceptual hash)."""
    from xferlab.audit.leakage import PHASH_BITS, aligned_copies, content_hashes, near_duplicates, perceptual_hashes
    from xferlab.audit.nearcopy import spectral_descriptors
    from xferlab.config import AuditConfig, DataConfig
    from xferlab.data.dataset import ImageDataset
    from xferlab.data.phantoms import generate_phantoms
    from xferlab.data.sources import load_dataset

    path = args.work / f"default{args.size}"
    if not (path / "phantoms.json").exists():
        generate_phantoms(path, size=args.size, seed=0)
    base = load_dataset(DataConfig(path=path))
    rng = np.random.default_rng(0)
    images, labels = base.images.copy(), base.labels.copy()
    test = rng.permutation(base.indices("test"))
    sources = rng.choice(base.indices("train"), args.copies * len(ALTERATIONS), replace=False)
    planted, sources_of = {}, {}
    for k, (name, alter) in enumerate(ALTERATIONS.items()):
        block = slice(k * args.copies, (k + 1) * args.copies)
        for t, s in zip(test[block], sources[block], strict=True):
            images[t], labels[t] = alter(base.images[s], rng), labels[s]
        planted[name], sources_of[name] = test[block], sources[block]
    data = ImageDataset(images, labels, base.class_names, base.splits, source="planted")
    hashes, cfg = content_hashes(images), AuditConfig(seed=0)
    descriptors = spectral_descriptors(images)
    start = time.perf_counter()
    result, aligned = aligned_copies(data, descriptors, hashes, cfg)
    phash = near_duplicates(data, perceptual_hashes(images), "hamming", PHASH_BITS, hashes, cfg)[1]
    print(f"{len(base.labels)} images at {args.size} px, {args.copies} copies per alteration "
          f"({time.perf_counter() - start:.0f} s)")
    prefilter = result["calibration"]["prefilter_distance"]
    print("| alteration | aligned | perceptual hash | either | past the descriptor prefilter |")
    print("|---|---|---|---|---|")
    for name, idx in planted.items():
        a, p = np.mean([i in aligned for i in idx]), np.mean([i in phash for i in idx])
        passed = np.mean(np.linalg.norm(descriptors[idx] - descriptors[sources_of[name]], axis=1) <= prefilter)
        print(f"| {name} | {a:.0%} | {p:.0%} | {np.mean([i in aligned or i in phash for i in idx]):.0%} | "
              f"{passed:.0%} |")
    others = (aligned | phash) - {int(i) for idx in planted.values() for i in idx}
    copies = args.copies * len(ALTERATIONS)
    unplanted = result["aligned_pairs"] - min(copies, result["aligned_pairs"])
    print(f"images flagged that were not planted: {len(others)}; aligned pairs {result['aligned_pairs']} of "
          f"{result['queries']} val/test images, at most {unplanted} of the {result['queries'] - copies} unplanted")


def crop_effect(args: argparse.Namespace) -> None:
    """How far a 1-pixel crop moves an image's perceptual hash and Lite0 embedding, against the distance between
    distinct phantoms (each image's nearest other image), on the first `--images` train images of the default
    phantoms at 32 px: why neither measure finds re-exported copies."""
    from xferlab.audit.embed import Embedder
    from xferlab.audit.leakage import perceptual_hashes
    from xferlab.audit.neighbours import nearest
    from xferlab.config import AuditConfig, DataConfig
    from xferlab.data.phantoms import generate_phantoms
    from xferlab.data.sources import load_dataset

    path = args.work / "default32"
    if not (path / "phantoms.json").exists():
        generate_phantoms(path, size=32, seed=0)
    base = load_dataset(DataConfig(path=path))
    images = base.images[base.indices("train")[:args.images]]
    cropped = np.stack([reexport.crop(im, 0.01) for im in images])
    bits = (perceptual_hashes(images) != perceptual_hashes(cropped)).sum(axis=1)
    emb = Embedder(base, AuditConfig(device="cpu"))(np.concatenate([images, cropped]))
    moved = nearest(emb[:len(images)], "cosine", emb[len(images):], exact=True)[0]  # nearest original, any
    own = 1 - np.einsum("ij,ij->i", emb[:len(images)], emb[len(images):]) / (
        np.linalg.norm(emb[:len(images)], axis=1) * np.linalg.norm(emb[len(images):], axis=1))
    distinct = nearest(emb[:len(images)], "cosine", exact=True)[0]
    print(f"{len(images)} images: a 1-pixel crop moves the 256-bit perceptual hash by a median {np.median(bits):.0f} "
          f"bits; its embedding's distance to its own original is {np.median(own / distinct):.1f}× the median "
          f"distance between an image and its nearest other image (median of ratios; nearest original of any "
          f"kind: the image's own for {np.mean(np.isclose(moved, own, atol=1e-6)):.0%})")


def runtimes(args: argparse.Namespace) -> None:
    """The audit's embedding of `--images` default phantoms at 32 px by PyTorch and by ONNX Runtime, alternately
    (`--rounds`), one thread each, in one process: the ratio, not the seconds, is what a shared machine can tell."""
    from xferlab.audit.embed import Embedder
    from xferlab.config import AuditConfig, DataConfig
    from xferlab.data.phantoms import generate_phantoms
    from xferlab.data.sources import load_dataset
    from xferlab.engine.accel import num_threads

    path = args.work / "default32"
    if not (path / "phantoms.json").exists():
        generate_phantoms(path, size=32, seed=0)
    base = load_dataset(DataConfig(path=path))
    images = base.images[:args.images]
    with num_threads(1):
        embedders = {r: Embedder(base, AuditConfig(device="cpu", runtime=r)) for r in ("torch", "onnxruntime")}
        for r in range(args.rounds):
            times = {}
            for name, embed in embedders.items():
                start = time.perf_counter()
                embed(images)
                times[name] = time.perf_counter() - start
            print(f"round {r + 1}: PyTorch {times['torch']:.2f} s, ONNX Runtime {times['onnxruntime']:.2f} s "
                  f"({times['torch'] / times['onnxruntime']:.1f}×) for {len(images)} images", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sizes")
    s.add_argument("--sizes", type=int, nargs="+", default=[2333, 9333, 28000, 58000])
    s.add_argument("--given-embeddings", action="store_true")
    o = sub.add_parser("one")
    o.add_argument("--n", type=int, required=True)
    o.add_argument("--given-embeddings", action="store_true")
    r = sub.add_parser("recall")
    r.add_argument("--images", type=int, default=28000)
    r.add_argument("--within", type=int, default=2000, help="within-split queries per split")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--metrics", nargs="+", default=["hamming", "euclidean", "cosine"], choices=METRICS,
                   help="measures by metric (the all-pairs Hamming search is the slow one: 212 s at 58,000 images)")
    c = sub.add_parser("clean")
    c.add_argument("--splits", type=int, default=100)
    c.add_argument("--first", type=int, default=0, help="first split seed (continue an interrupted run)")
    d = sub.add_parser("detect")
    d.add_argument("--copies", type=int, default=25)
    d.add_argument("--size", type=int, default=32, help="phantom side in px (the default phantoms' count)")
    e = sub.add_parser("crop-effect")
    e.add_argument("--images", type=int, default=500)
    t = sub.add_parser("runtimes")
    t.add_argument("--images", type=int, default=1024)
    t.add_argument("--rounds", type=int, default=3)
    for q in (s, o, r, c, d, e, t):
        q.add_argument("--work", type=Path, default=Path("/tmp/audit_scale"))
    for q in (s, o):
        q.add_argument("--threads", type=int, default=1, help="torch / ONNX Runtime threads of the audit")
        q.add_argument("--size", type=int, default=32, help="phantom side in px")
        q.add_argument("--in-sequence", action="store_true", help="re-splits after the statistics, not beside them")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.cmd == "one":
        print(json.dumps(one(args.n, args.work, args.given_embeddings, args.threads, args.in_sequence, args.size)))
    else:
        {"sizes": sizes, "recall": recall, "clean": clean, "detect": detect, "crop-effect": crop_effect,
         "runtimes": runtimes}[args.cmd](args)


if __name__ == "__main__":
    main()
