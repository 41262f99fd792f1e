"""Per-epoch progress, a fit-loop hook: one line per epoch off a terminal with a time left computed from measured
epochs and the best epoch so far; a bar on a terminal; nothing when quiet."""

import io

from xferlab.engine.fit import BestEpoch, EpochRecord, FitState
from xferlab.engine.progress import EpochProgress, format_duration, set_quiet


class FakeClock:
    def __init__(self, steps):
        self.times = iter(steps)

    def __call__(self):
        return next(self.times)


def record(epoch, val_acc=0.845):
    return EpochRecord(epoch, train_loss=0.41234, train_acc=0.8612, val_loss=0.5, val_acc=val_acc, test_loss=None,
                       test_acc=None, train_seconds=1.0, eval_seconds=0.1)


def run_epochs(progress, records, epochs):
    state = FitState(epochs)
    progress.on_fit_start(state)
    for r in records:
        for hook in (progress.best, progress):
            if hook is not None:
                hook.on_epoch_end(r, state)
    progress.on_fit_end(state)


def test_one_line_per_epoch_with_time_left_from_measured_epochs():
    out = io.StringIO()
    # start at 0; epochs end at 10 s and 30 s: mean 15 s per epoch, 8 epochs left after the second -> 120 s
    progress = EpochProgress("resnet18 finetune", BestEpoch(), stream=out, interactive=False,
                             clock=FakeClock([0, 10, 30]))
    run_epochs(progress, [record(1), record(2, val_acc=0.8)], epochs=10)
    lines = out.getvalue().splitlines()
    assert lines == [
        "resnet18 finetune epoch 1/10: loss 0.412 acc 0.861 val acc 0.845 (best epoch 1) 10.0s, about 1m30s left",
        "resnet18 finetune epoch 2/10: loss 0.412 acc 0.861 val acc 0.800 (best epoch 1) 20.0s, about 2m00s left"]


def test_without_val_and_best_the_line_says_n_a():
    out = io.StringIO()
    progress = EpochProgress("x", stream=out, interactive=False, clock=FakeClock([0, 4]))
    run_epochs(progress, [record(1, val_acc=None)], epochs=2)
    assert out.getvalue() == "x epoch 1/2: loss 0.412 acc 0.861 val acc n/a 4.0s, about 4s left\n"


def test_quiet_and_disabled_print_nothing():
    for quiet, enabled in ((True, True), (False, False)):
        out = io.StringIO()
        set_quiet(quiet)
        try:
            progress = EpochProgress("x", enabled=enabled, stream=out, interactive=False)
            run_epochs(progress, [record(1)], epochs=3)
        finally:
            set_quiet(False)
        assert out.getvalue() == ""


def test_a_terminal_gets_a_bar_not_lines():
    out = io.StringIO()
    progress = EpochProgress("lite0 frozen", BestEpoch(), stream=out, interactive=True)
    run_epochs(progress, [record(1)], epochs=3)
    assert "lite0 frozen" in out.getvalue() and "epoch 1/3:" not in out.getvalue()


def test_format_seconds():
    assert [format_duration(s) for s in (4.6, 185, 3725)] == ["5s", "3m05s", "1h02m"]
