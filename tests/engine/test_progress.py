"""Per-epoch progress: one line per epoch off a terminal with a time left computed from measured epochs; nothing when
quiet."""

import io

from xferlab.engine.progress import EpochProgress, format_seconds, set_quiet


class FakeClock:
    def __init__(self, steps):
        self.times = iter(steps)

    def __call__(self):
        return next(self.times)


ROW = {"train_loss": 0.41234, "train_acc": 0.8612, "val_acc": 0.845}


def test_one_line_per_epoch_with_time_left_from_measured_epochs():
    out = io.StringIO()
    # start at 0; epochs end at 10 s and 30 s: mean 15 s per epoch, 8 epochs left after the second -> 120 s
    progress = EpochProgress(10, "resnet18 finetune", stream=out, interactive=False, clock=FakeClock([0, 10, 30]))
    progress.on_epoch_end(1, ROW)
    progress.on_epoch_end(2, {**ROW, "val_acc": None})
    progress.close()
    lines = out.getvalue().splitlines()
    assert lines == ["resnet18 finetune epoch 1/10: loss 0.412 acc 0.861 val acc 0.845 10.0s, about 1m30s left",
                     "resnet18 finetune epoch 2/10: loss 0.412 acc 0.861 val acc n/a 20.0s, about 2m00s left"]


def test_quiet_and_disabled_print_nothing():
    for quiet, enabled in ((True, True), (False, False)):
        out = io.StringIO()
        set_quiet(quiet)
        try:
            progress = EpochProgress(3, "x", enabled=enabled, stream=out, interactive=False)
            progress.on_epoch_end(1, ROW)
        finally:
            set_quiet(False)
        assert out.getvalue() == ""


def test_a_terminal_gets_a_bar_not_lines():
    out = io.StringIO()
    progress = EpochProgress(3, "lite0 frozen", stream=out, interactive=True)
    progress.on_epoch_end(1, ROW)
    progress.close()
    assert "lite0 frozen" in out.getvalue() and "epoch 1/3:" not in out.getvalue()


def test_format_seconds():
    assert [format_seconds(s) for s in (4.6, 185, 3725)] == ["5s", "3m05s", "1h02m"]
