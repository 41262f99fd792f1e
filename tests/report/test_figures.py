import matplotlib.pyplot as plt
import numpy as np

from xferlab.report import figures


def _history(epochs, start):
    return [{"epoch": e, "train_acc": start, "val_acc": start + 0.01 * e, "test_acc": start, "train_loss": 1 / e,
             "val_loss": 1.2 / e, "test_loss": 1.3 / e} for e in range(1, epochs + 1)]


def test_comparison_puts_every_run_on_shared_axes_and_labels_each_configuration_once():
    runs = [("resnet18", "frozen", _history(3, 0.5)), ("resnet18", "frozen", _history(3, 0.6)),
            ("resnet34", "finetune", _history(5, 0.7))]
    fig = figures.comparison_figure(runs)
    acc, loss = fig.axes
    assert len(acc.lines) == len(loss.lines) == 3
    assert [line.get_ydata()[-1] for line in acc.lines] == [0.53, 0.63, 0.75]
    assert acc.lines[0].get_color() == acc.lines[1].get_color() != acc.lines[2].get_color()
    assert acc.lines[0].get_linestyle() != acc.lines[2].get_linestyle()
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["resnet18 · frozen", "resnet34 · finetune"]
    plt.close(fig)


def test_timing_stacks_the_phases_and_shows_throughput():
    runs = [("r1", {"feature_seconds": 2.0, "fit_seconds": 1.0, "eval_seconds": 0.5, "inference_images_per_s": 90.0}),
            ("r2", {"feature_seconds": 0.0, "fit_seconds": 8.0, "eval_seconds": 1.0, "inference_images_per_s": 40.0})]
    fig = figures.timing_figure(runs)
    seconds, throughput = fig.axes
    right_edges = {round(p.get_y(), 2): p.get_x() + p.get_width() for p in seconds.patches}
    assert sorted(right_edges.values()) == [3.5, 9.0]  # total seconds per run
    assert sorted(p.get_width() for p in throughput.patches) == [40.0, 90.0]
    plt.close(fig)


def test_confusion_matrices_show_the_counts():
    fig = figures.confusion_figure({"val": [[3, 1], [0, 4]], "test": [[5, 2], [1, 6]]}, ["normal", "pneumonia"])
    assert len(fig.axes) == 2
    texts = sorted(int(t.get_text()) for t in fig.axes[1].texts)
    assert texts == [1, 2, 5, 6]
    plt.close(fig)


def test_roc_panels_have_one_curve_per_entry_and_the_chance_line():
    fpr, tpr = np.array([0, 0.2, 1]), np.array([0, 0.8, 1])
    fig = figures.roc_figure([("val", [("a", fpr, tpr, 0.8), ("b", fpr, tpr, 0.7)]), ("test", [("a", fpr, tpr, 0.6)])])
    assert [len(ax.lines) for ax in fig.axes] == [3, 2]
    assert fig.axes[0].get_legend().get_texts()[0].get_text() == "a (AUC 0.800)"
    plt.close(fig)
