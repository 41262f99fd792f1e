"""The leakage search at scale (issue 20) and the copies a re-export hides (issue 17): the indexed search finds what
the all-pairs search finds, planted altered copies are found per alteration, clean random splits give no finding,
and precomputed embeddings replace the backbone pass."""

from __future__ import annotations

import numpy as np
import pytest

from xferlab.audit.leakage import aligned_copies, content_hashes, leakage_audit, perceptual_hashes
from xferlab.audit.nearcopy import aligned_similarities, spectral_descriptors
from xferlab.audit.neighbours import NeighbourSearch, nearest
from xferlab.cli import main
from xferlab.config import AuditConfig, DataConfig
from xferlab.data import reexport
from xferlab.data.dataset import ImageDataset
from xferlab.data.phantoms import generate_phantoms
from xferlab.data.sources import load_dataset

PLANTED = 20  # copies per alteration


ALTERATIONS = {
    "crop 3 %": lambda im, rng: reexport.crop(im, 0.03),
    "rescale 2 %": lambda im, rng: reexport.rescale(im, 1 / 32),  # 32 -> 33 px
    "jpeg q75": lambda im, rng: reexport.jpeg(im),
    "brightness/contrast": lambda im, rng: reexport.brightness_contrast(im),
    "noise sd 3": reexport.noise,
    "combined": lambda im, rng: reexport.noise(reexport.jpeg(reexport.brightness_contrast(reexport.crop(im, 0.03))),
                                               rng),
}


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> ImageDataset:
    path = generate_phantoms(tmp_path_factory.mktemp("scale") / "ph", size=32, n_per_class=250, n_test_per_class=80)
    return load_dataset(DataConfig(path=path))


def _plant(phantoms: ImageDataset) -> tuple[ImageDataset, dict[str, list[tuple[int, int]]]]:
    """The phantoms with PLANTED test images per alteration replaced by altered copies of train images."""
    rng = np.random.default_rng(0)
    images = phantoms.images.copy()
    train, test = phantoms.indices("train"), rng.permutation(phantoms.indices("test"))
    sources = rng.choice(train, PLANTED * len(ALTERATIONS), replace=False)
    labels = phantoms.labels.copy()
    where: dict[str, list[tuple[int, int]]] = {}
    for k, (name, alter) in enumerate(ALTERATIONS.items()):
        block = slice(k * PLANTED, (k + 1) * PLANTED)
        for t, s in zip(test[block], sources[block], strict=True):
            images[t] = alter(phantoms.images[s], rng)
            labels[t] = labels[s]
        where[name] = list(zip(test[block].tolist(), sources[block].tolist(), strict=True))
    data = ImageDataset(images, labels, phantoms.class_names, phantoms.splits, source="planted")
    return data, where


@pytest.fixture(scope="module")
def planted(phantoms) -> tuple[ImageDataset, dict[str, list[tuple[int, int]]]]:
    return _plant(phantoms)


def _pairs(result: dict) -> set[tuple[int, int]]:
    return {(p["query"]["index"], p["match"]["index"]) for p in result.get("pairs", [])}


def test_indexed_search_finds_the_same_pairs_as_all_pairs(tmp_path):
    """On 2,400 images (the issue's "a few thousand"): the same copies and near-duplicate pairs, the same thresholds."""
    path = generate_phantoms(tmp_path / "ph", size=32, n_per_class=1000, n_test_per_class=200)
    data, _ = _plant(load_dataset(DataConfig(path=path)))
    assert len(data.labels) == 2400
    rng = np.random.default_rng(1)
    # stand-in embeddings: each image's pixels projected at random (the search, not the backbone, is under test)
    embeddings = data.images.reshape(len(data.labels), -1).astype(np.float32) @ rng.normal(size=(1024, 64))
    cfg = AuditConfig(seed=0)
    arrays = {"hashes": content_hashes(data.images), "phashes": perceptual_hashes(data.images),
              "descriptors": spectral_descriptors(data.images)}
    indexed = leakage_audit(data, embeddings, cfg, **arrays)
    exact = leakage_audit(data, embeddings, cfg, exact=True, **arrays)
    for kind in ("phash", "embedding", "aligned"):
        assert indexed[kind]["status"] == exact[kind]["status"]
        assert indexed[kind].get("threshold") == exact[kind].get("threshold")
        assert _pairs(indexed[kind]) == _pairs(exact[kind]), kind
    assert indexed["aligned"]["count"] >= 0.95 * PLANTED * len(ALTERATIONS)


def test_planted_altered_copies_are_found_per_alteration(planted):
    data, where = planted
    result, flagged = aligned_copies(data, spectral_descriptors(data.images), content_hashes(data.images),
                                     AuditConfig(seed=0))
    found = _pairs(result)
    assert result["status"] == "ok" and result["count"] == len(found)  # fewer than MAX_LISTED: all listed
    for name, copies in where.items():
        rate = np.mean([pair in found for pair in copies])
        assert rate >= 0.95, f"{name}: {rate:.0%} of planted copies found"
    planted_queries = {t for copies in where.values() for t, _ in copies}
    assert flagged <= planted_queries  # nothing else is called a copy


@pytest.mark.parametrize("seed", [1])  # more splits: benchmarks/audit_scale.py --clean-splits 100
def test_clean_random_splits_give_no_aligned_finding(phantoms, seed):
    rng = np.random.default_rng(seed)
    splits = rng.permutation(phantoms.splits)
    data = ImageDataset(phantoms.images, phantoms.labels, phantoms.class_names, splits, source="clean")
    result, flagged = aligned_copies(data, spectral_descriptors(data.images), content_hashes(data.images),
                                     AuditConfig(seed=seed))
    assert result["status"] == "ok" and result["count"] == 0 and not flagged


def test_alignment_scores_one_for_the_same_picture_and_less_for_another(phantoms):
    a = phantoms.images[:4]
    assert np.allclose(aligned_similarities(a, brightness_stack(a)), 1.0, atol=1e-3)
    assert (aligned_similarities(a, phantoms.images[4:8]) < 0.99).all()


def brightness_stack(images: np.ndarray) -> np.ndarray:
    return np.stack([reexport.brightness_contrast(im) for im in images])


def test_indexed_nearest_matches_brute_force_on_well_separated_points():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(1500, 40)).astype(np.float32)
    query = ref[:200] + rng.normal(scale=0.01, size=(200, 40)).astype(np.float32)
    dist, idx = nearest(ref, "cosine", query)
    assert (idx == np.arange(200)).all() and (dist < 1e-3).all()
    bits = rng.random((1500, 256)) < 0.5
    noisy = bits[:200] ^ (rng.random((200, 256)) < 0.02)
    dist, idx = nearest(bits, "hamming", noisy)
    exact_dist, _ = nearest(bits, "hamming", noisy, exact=True)
    assert (idx == np.arange(200)).all() and np.allclose(dist, exact_dist)


@pytest.mark.parametrize("metric", ["euclidean", "cosine", "hamming"])
def test_indexed_nearest_other_point_has_high_recall_without_planted_twins(metric):
    """No twins to find: every point's nearest other point, the hard case for an approximate search, in 150-d data
    with the structure of image features (a 24-d latent cloud mapped linearly, plus a little noise in every
    direction; above PROJECTED_DIMS, so the projection and the re-ranking are both exercised)."""
    rng = np.random.default_rng(3)
    latent = rng.normal(size=(3000, 24)) * np.linspace(2.0, 0.5, 24)
    x = (latent @ rng.normal(size=(24, 150)) + 0.3 * rng.normal(size=(3000, 150))).astype(np.float32)
    if metric == "hamming":
        x = x[:, :128] > 0
    dist, idx = nearest(x, metric)
    exact_dist, exact_idx = nearest(x, metric, exact=True)
    assert not (idx == np.arange(len(x))).any()  # never the point itself
    assert np.mean(np.isclose(dist, exact_dist, rtol=1e-5, atol=1e-6)) >= 0.99
    assert (dist >= exact_dist * (1 - 1e-5) - 1e-6).all()  # never closer than the true neighbour (float32 rounding)


def test_search_over_several_groups_takes_the_nearest_of_all():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 8)).astype(np.float32)
    groups = {"a": np.arange(0, 300), "b": np.arange(300, 500), "q": np.arange(500, 600)}
    search = NeighbourSearch(x, "euclidean", groups)
    dist, idx = search.nearest(groups["q"], ["a", "b"])
    full = np.linalg.norm(x[500:, None] - x[None, :500], axis=2)
    assert np.array_equal(idx, full.argmin(axis=1)) and np.allclose(dist, full.min(axis=1), rtol=1e-5)


def test_perceptual_hashes_are_imagehash_phash_bit_for_bit(phantoms):
    import imagehash
    from PIL import Image

    from xferlab.audit.leakage import PHASH_SIZE

    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, size=(6, 3, 40, 48), dtype=np.uint8)
    gray = colour.mean(axis=1).round().astype(np.uint8)
    for images, plain in ((phantoms.images[:40], phantoms.images[:40]), (colour, gray)):
        expected = np.stack([imagehash.phash(Image.fromarray(im), hash_size=PHASH_SIZE).hash.ravel() for im in plain])
        assert np.array_equal(perceptual_hashes(images), expected)


def test_aligned_check_aligns_only_pairs_that_pass_the_descriptor_prefilter(planted):
    data, where = planted
    result, _ = aligned_copies(data, spectral_descriptors(data.images), content_hashes(data.images),
                               AuditConfig(seed=0))
    copies = sum(len(c) for c in where.values())
    clean_aligned = result["aligned_pairs"] - copies  # at most: the planted pairs all pass the prefilter
    assert result["count"] <= result["aligned_pairs"] and clean_aligned < 0.3 * (result["queries"] - copies)
    assert result["calibration"]["prefilter_distance"] > 0


def test_precomputed_embeddings_replace_the_backbone(tiny_npy, tmp_path, capsys):
    path = str(tiny_npy)
    rng = np.random.default_rng(0)
    good = tmp_path / "emb.npy"
    np.save(good, rng.normal(size=(len(load_dataset(DataConfig(path=path)).labels), 16)).astype(np.float32))
    out = tmp_path / "audit"
    rc = main(["audit", "--data", path, "--out", str(out), "--embeddings", str(good), "--resplits", "0",
               "--permutations", "19", "--weights", "missing.pt", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err  # the weights file is never read: no backbone pass
    capsys.readouterr()
    bad = tmp_path / "short.npy"
    np.save(bad, np.zeros((3, 16), dtype=np.float32))
    rc = main(["audit", "--data", path, "--out", str(tmp_path / "a2"), "--embeddings", str(bad), "--resplits", "0"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "short.npy" in err and "3 embedding rows for " in err
    assert not (tmp_path / "a2").exists()


def test_the_streaming_pass_over_files_equals_the_in_memory_one(tmp_path):
    from tinydata import write_tiny_folder
    from xferlab.audit.scan import scan_dataset

    root = write_tiny_folder(tmp_path / "folder")
    loaded = load_dataset(DataConfig(path=root, format="folder"))
    streamed = load_dataset(DataConfig(path=root, format="folder", memory_budget_mb=0))
    assert streamed.streamed and not loaded.streamed
    given = np.random.default_rng(0).normal(size=(len(loaded.labels), 8)).astype(np.float32)
    a, b = scan_dataset(loaded, AuditConfig(), given, False), scan_dataset(streamed, AuditConfig(), given, False)
    for field in ("hashes", "phashes", "descriptors", "pixel_stats"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field


def test_registration_finds_the_shift_scikit_image_finds(phantoms):
    from scipy import ndimage
    from skimage.registration import phase_cross_correlation

    from xferlab.audit.nearcopy import UPSAMPLE, _band, _register

    a = _band(phantoms.images[:12].astype(np.float64))
    b = _band(np.stack([ndimage.shift(im.astype(np.float64), (0.75, -1.25), mode="nearest")
                        for im in phantoms.images[:12]]))
    _, shifts = _register(np.fft.fft2(a), b)
    expected = [phase_cross_correlation(x, y, upsample_factor=UPSAMPLE, normalization=None)[0] for x, y in zip(a, b,
                                                                                                            strict=True)]
    assert np.array_equal(shifts, np.array(expected))


def test_resampling_is_ndimage_linear_with_edges_repeated():
    from scipy import ndimage

    from xferlab.audit.nearcopy import _sample, _zoom

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 20, 24))
    for scale in (0.97, 1.03):
        centre = (np.array(x.shape[1:]) - 1) / 2.0
        expected = ndimage.affine_transform(x, np.diag([1.0, 1 / scale, 1 / scale]),
                                            offset=[0.0, *(centre - centre / scale)], order=1, mode="nearest")
        assert np.allclose(_zoom(x, scale), expected, atol=1e-9)
    dy, dx = np.array([0.75, -1.25, 2.0]), np.array([-0.5, 1.0, 0.25])
    n, y, xx = np.meshgrid(np.arange(3), np.arange(20), np.arange(24), indexing="ij")
    expected = ndimage.map_coordinates(x, np.stack([n, y - dy[:, None, None], xx - dx[:, None, None]]), order=1,
                                       mode="nearest")
    assert np.allclose(_sample(x, np.arange(20) - dy[:, None], np.arange(24) - dx[:, None]), expected, atol=1e-9)


def test_graphs_are_the_same_in_every_build_whatever_openmp_allows():
    import faiss

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 16)).astype(np.float32)
    groups = {"a": np.arange(1500), "b": np.arange(1500, 3000)}
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(4)  # more threads than the build may use: each graph must still be built serially
    try:
        links = []
        for _ in range(2):
            search = NeighbourSearch(x, "euclidean", groups)
            search.build(["a", "b"])
            links.append([faiss.vector_to_array(search._graphs[g].hnsw.neighbors) for g in ("a", "b")])
    finally:
        faiss.omp_set_num_threads(before)
    assert all(np.array_equal(p, q) for p, q in zip(*links, strict=True))


def test_a_copy_in_another_split_does_not_hide_the_original(phantoms):
    """Train image A has an exact copy earlier in the dataset, in test; a re-exported copy of A in test is still
    found against A (exact copies are removed within a split, never across)."""
    back = np.arange(len(phantoms.labels))[::-1]  # test images first, so the copy comes before its original
    images, splits = phantoms.images[back].copy(), phantoms.splits[back]
    test, train = np.flatnonzero(splits == "test"), np.flatnonzero(splits == "train")
    a, exact_copy, altered = train[0], test[0], test[1]
    assert exact_copy < a
    images[exact_copy] = images[a]
    images[altered] = reexport.brightness_contrast(images[a])
    data = ImageDataset(images, phantoms.labels[back], phantoms.class_names, splits, source="copies")
    result = leakage_audit(data, np.random.default_rng(0).normal(size=(len(images), 8)), AuditConfig(seed=0))
    assert result["exact"]["cross_split_groups"] == 1
    assert (altered, a) in _pairs(result["phash"]) | _pairs(result["aligned"])


def test_large_images_are_compared_at_the_working_size():
    from xferlab.audit.nearcopy import WORK_SIDE, working_size

    assert working_size(np.zeros((2, 32, 32), np.uint8)).shape == (2, 32, 32)  # the scale the constants were tuned at
    assert working_size(np.zeros((2, 224, 224), np.uint8)).shape == (2, WORK_SIDE, WORK_SIDE)
    assert working_size(np.zeros((1, 3, 300, 200), np.uint8)).shape == (1, WORK_SIDE, round(WORK_SIDE * 2 / 3))


def test_re_exported_copies_at_224_px_align_with_their_originals_and_distinct_images_do_not(tmp_path):
    path = generate_phantoms(tmp_path / "ph224", size=224, n_per_class=4, n_test_per_class=1, seed=3)
    images = load_dataset(DataConfig(path=path)).images[:8]
    rng = np.random.default_rng(0)
    originals, others = images[:4], images[4:]
    copies = np.stack([alter(im, rng) for im, alter in zip(originals, list(ALTERATIONS.values())[:4])])
    same, distinct = aligned_similarities(originals, copies), aligned_similarities(originals, others)
    assert same.min() > distinct.max()
    descriptors = spectral_descriptors(np.concatenate([copies, images]))
    nearest_original = np.linalg.norm(descriptors[:4, None] - descriptors[None, 4:], axis=2).argmin(1)
    assert (nearest_original == np.arange(4)).all()  # each copy's nearest image by descriptor is its original
