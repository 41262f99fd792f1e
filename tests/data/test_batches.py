"""Per-batch preprocessing and index batches: where uint8 pixels become normalised floats."""

import numpy as np
import pytest
import torch

from xferlab.data.batches import InputSpec, Preprocess, batch_indices, take_batches
from xferlab.errors import XferlabError


def test_a_gray_batch_becomes_three_normalised_channels():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    images = torch.tensor([[[0, 255], [128, 64]]], dtype=torch.uint8)  # one 2×2 image
    out = Preprocess(mean, std)(images)
    assert out.shape == (1, 3, 2, 2) and out.dtype == torch.float32
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    expected = (images.float()[:, None] / 255 - m) / s
    torch.testing.assert_close(out, expected)


def test_an_rgb_batch_keeps_its_channels():
    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    images[:, 1] = 255
    out = Preprocess((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))(images)
    assert torch.equal(out[:, 1], torch.ones(2, 4, 4)) and torch.equal(out[:, 0], torch.zeros(2, 4, 4))


def test_a_one_channel_intensity_range_input_spec():
    """torchxrayvision's mapping: 0..255 -> [-1024, 1024], one channel (colour averaged), mean 0, std 1."""
    pre = Preprocess.for_input(InputSpec(channels=1, mean=(0.0,), std=(1.0,), value_range=(-1024.0, 1024.0)))
    gray = torch.tensor([[[0, 255], [128, 64]]], dtype=torch.uint8)
    # one fused multiply-add against three operations: equal to float32 rounding of values up to 1024
    torch.testing.assert_close(pre(gray), (gray.float()[:, None] / 255 * 2 - 1) * 1024, rtol=1e-5, atol=1e-3)
    rgb = torch.stack([gray[0], gray[0] // 2, torch.zeros_like(gray[0])])[None]
    torch.testing.assert_close(pre(rgb), (rgb.float().mean(1, keepdim=True) / 255 * 2 - 1) * 1024, rtol=1e-5,
                               atol=1e-3)


def test_a_fixed_side_resizes_every_batch_after_the_intensity_mapping():
    spec = InputSpec(channels=1, mean=(0.0,), std=(1.0,), value_range=(-1.0, 1.0), size=8)
    images = torch.randint(0, 256, (2, 4, 4), dtype=torch.uint8)
    expected = torch.nn.functional.interpolate(images.float()[:, None] / 255 * 2 - 1, size=(8, 8), mode="bilinear",
                                               antialias=True)
    torch.testing.assert_close(Preprocess.for_input(spec)(images), expected)
    with pytest.raises(XferlabError, match="1 channel"):
        Preprocess((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), channels=1)


def test_index_batches_are_seeded_shuffles_or_in_order():
    seeded = [torch.cat(list(batch_indices(10, 3, torch.Generator().manual_seed(s)))) for s in (1, 1, 2)]
    assert torch.equal(seeded[0], seeded[1]) and not torch.equal(seeded[0], seeded[2])
    assert sorted(seeded[0].tolist()) == list(range(10))
    ordered = list(batch_indices(10, 3))
    assert [len(b) for b in ordered] == [3, 3, 3, 1] and torch.equal(torch.cat(ordered), torch.arange(10))


def test_take_batches_indexes_a_stored_tensor():
    images = torch.arange(5 * 2 * 2, dtype=torch.uint8).view(5, 2, 2)
    got = list(take_batches(images, [torch.tensor([4, 0]), torch.tensor([2])]))
    assert [idx.tolist() for idx, _ in got] == [[4, 0], [2]]
    assert torch.equal(got[0][1], images[[4, 0]]) and torch.equal(got[1][1], images[[2]])


@pytest.mark.parametrize("workers", [0, 1])
def test_streamed_worker_errors_become_the_one_line_message(tmp_path, workers):
    """A file that cannot be decoded while streaming: the error is the message naming it, also from a worker."""
    from PIL import Image

    from xferlab.data.batches import StreamedImages
    from xferlab.data.streaming import FileImages
    from xferlab.errors import XferlabError

    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    streamed = StreamedImages(FileImages([good, bad], (8, 8), rgb=False), workers=workers)
    with pytest.raises(XferlabError) as err:
        list(streamed.batches([torch.tensor([0, 1])]))
    assert "\n" not in str(err.value) and "bad.png" in str(err.value)
