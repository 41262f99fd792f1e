"""predict's throughput (PNG decoding included) against bench's inference loop, interleaved in one process.

`xferlab bench` times evaluation.timing.inference_throughput over uint8 images already in memory; this script runs that
same function on the same model and the same images (decoded once beforehand), then `predict_inputs` on the PNG files,
alternately for --rounds rounds, and prints each round's ratio and the median. Interleaving in one process keeps the
other jobs on a shared machine from landing on one side only. Not run by `make test`.

    python benchmarks/predict_throughput.py RUN PNG_FOLDER [--batch-size 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch

import xferlab
from xferlab.data.batches import Preprocess
from xferlab.evaluation.timing import inference_throughput
from xferlab.use.inputs import Decoder, collect_inputs
from xferlab.use.predict import predict_inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("pngs")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    run = xferlab.load_run(args.run)
    items = collect_inputs([args.pngs], run.class_names)
    decoded = np.concatenate([run.prepare(ims) for _, ims in Decoder(False).batches(items, args.batch_size)])
    images = torch.from_numpy(decoded)
    preprocess = Preprocess.for_input(run.preprocessing.input)

    def forward(batch):
        return run.model(preprocess(batch))

    ratios = []
    for r in range(args.rounds):
        with torch.inference_mode():
            loop = inference_throughput(forward, images, args.batch_size, torch.device("cpu"))
        pred = predict_inputs(run, [args.pngs], batch_size=args.batch_size, progress=False).images_per_s
        ratios.append(pred / loop)
        print(f"round {r + 1}: bench loop {loop:.2f} images/s, predict {pred:.2f} images/s, ratio {pred / loop:.2f}")
    print(f"{len(images)} images of {tuple(images.shape[1:])}, {run.config.backbone}, "
          f"{torch.get_num_threads()} threads: "
          f"median ratio {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
