"""Border band, mass shares and the region-of-interest formats (npy roi/ folders and a CSV `roi` column)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from xferlab.data.config import DataConfig
from xferlab.data.sources import load_dataset
from xferlab.errors import XferlabError
from xferlab.explain.regions import border_mask, boxes_to_masks, dataset_regions, mass_share


def test_border_band_is_the_outer_eighth_of_each_side() -> None:
    mask = border_mask(64, 64)
    assert mask[:8].all() and mask[-8:].all() and mask[:, :8].all() and mask[:, -8:].all()
    assert not mask[8:56, 8:56].any()
    assert mask.mean() == pytest.approx(1 - (48 / 64) ** 2)


def test_mass_share_measures_where_the_map_is() -> None:
    maps = np.zeros((3, 16, 16), dtype=np.float32)
    maps[0, 0, 0] = 1.0  # all mass in a corner
    maps[1] = 1.0  # uniform
    masks = np.broadcast_to(border_mask(16, 16), maps.shape)
    share = mass_share(maps, masks)
    assert share[0] == 1.0
    assert share[1] == pytest.approx(border_mask(16, 16).mean())
    assert np.isnan(share[2])  # no mass: no share, rather than a made-up one


def test_boxes_become_masks_and_scale() -> None:
    masks, known = boxes_to_masks(np.array([[2, 4, 6, 8], [-1, -1, -1, -1]]), (32, 32), scale=(2.0, 2.0))
    assert known.tolist() == [True, False]
    assert masks[0].sum() == 8 * 8 and masks[0, 8:16, 4:12].all() and not masks[1].any()
    with pytest.raises(XferlabError, match="is empty"):
        boxes_to_masks(np.array([[5, 5, 5, 9]]), (16, 16))


def test_phantom_regions_follow_the_dataset_order(shortcut_phantoms) -> None:
    data = load_dataset(DataConfig(path=shortcut_phantoms))
    regions = dataset_regions(data, "npy", shortcut_phantoms)
    assert set(regions) == {"roi", "marker"}
    assert regions["roi"].masks.shape == (len(data.labels), 32, 32) and regions["roi"].known.all()
    marker = regions["marker"]
    test = data.indices("test")
    assert not marker.known[test].any()  # no marker in test
    pneumonia_pool = (data.labels == 1) & (data.splits != "test")
    assert marker.known[pneumonia_pool].mean() > 0.7 > marker.known[(data.labels == 0) & (data.splits != "test")].mean()
    # the marker box holds the bright block of the very image it belongs to
    i = int(np.flatnonzero(marker.known)[0])
    assert data.images[i][marker.masks[i]].mean() > 150


def test_resized_data_gets_resized_regions(shortcut_phantoms) -> None:
    data = load_dataset(DataConfig(path=shortcut_phantoms, image_size=64))
    regions = dataset_regions(data, "npy", shortcut_phantoms)
    small = dataset_regions(load_dataset(DataConfig(path=shortcut_phantoms)), "npy", shortcut_phantoms)
    assert regions["roi"].masks.shape[-2:] == (64, 64)
    # a box doubles with the image
    i = int(np.flatnonzero(small["marker"].known)[0])
    assert regions["marker"].masks[i].sum() == 4 * small["marker"].masks[i].sum()


def test_csv_roi_column_box_and_mask_file(tmp_path) -> None:
    rows = ["path,label,split,roi"]
    for i in range(8):
        Image.fromarray(np.full((20, 40), 100 + i, dtype=np.uint8)).save(tmp_path / f"im{i}.png")
        split = "test" if i >= 6 else ("val" if i >= 4 else "train")
        roi = '"0,0,20,10"' if i % 2 == 0 else ("mask.npy" if i == 1 else "")
        rows.append(f"im{i}.png,{'ab'[i % 2]},{split},{roi}")
    mask = np.zeros((20, 40), dtype=np.uint8)
    mask[10:, 20:] = 1
    np.save(tmp_path / "mask.npy", mask)
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    data = load_dataset(DataConfig(path=tmp_path / "m.csv", format="csv", image_size=20))
    region = dataset_regions(data, "csv", tmp_path / "m.csv")["roi"]
    order = [int(str(f).rsplit("im", 1)[1].split(".")[0]) for f in data.meta["files"]]
    for pos, i in enumerate(order):
        if i % 2 == 0:  # box of the 40×20 original, in a 20×20 image: x halves, y stays
            assert region.known[pos] and region.masks[pos, :10, :10].all() and region.masks[pos].sum() == 100
        elif i == 1:
            assert region.known[pos] and region.masks[pos, 10:, 10:].all() and region.masks[pos].sum() == 100
        else:
            assert not region.known[pos]


def test_csv_roi_cell_that_is_neither_box_nor_file(tmp_path) -> None:
    rows = ["path,label,split,roi"]
    for i in range(6):
        Image.fromarray(np.full((8, 8), 9, dtype=np.uint8)).save(tmp_path / f"im{i}.png")
        rows.append(f"im{i}.png,{'ab'[i % 2]},{['train', 'train', 'val', 'val', 'test', 'test'][i]},"
                    + ("nowhere.png" if i == 3 else ""))
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    data = load_dataset(DataConfig(path=tmp_path / "m.csv", format="csv"))
    with pytest.raises(XferlabError, match="nowhere.png.*neither a box"):
        dataset_regions(data, "csv", tmp_path / "m.csv")
