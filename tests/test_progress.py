import io
import logging
from types import SimpleNamespace

from clsbench import progress


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_progress_prints_totals_rate_and_time_left_at_intervals_in_a_log_file():
    clock, out = Clock(), io.StringIO()
    bar = progress.Progress("predict test", 100, every=30, clock=clock, stream=out)
    for _ in range(10):  # 10 texts every 5 s: a line every 30 s
        clock.now += 5
        bar.update(10)
    lines = out.getvalue().splitlines()
    assert lines == ["predict test: 60/100 texts (60%), 2 texts/s, 20 s left",
                     "predict test: 100/100 texts (100%), 2 texts/s in 50 s"]


def test_training_progress_names_step_total_epoch_and_time_left(capsys, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    callback = progress.trainer_progress()
    args = SimpleNamespace(num_train_epochs=3)
    callback.on_train_begin(args, SimpleNamespace(global_step=0), None)
    clock.now = 120.0
    state = SimpleNamespace(global_step=25, max_steps=75, epoch=1.0)
    callback.on_log(args, state, None, logs={"loss": 0.4123, "learning_rate": 0.0004, "epoch": 1.0})
    callback.on_log(args, state, None, logs={"eval_f1_micro": 0.9, "eval_runtime": 4.2, "epoch": 1.0})
    assert capsys.readouterr().out.splitlines() == [
        "step 25/75, epoch 1.00/3, 4 min 00 s left, loss 0.4123, learning_rate 0.0004",
        "step 25/75, epoch 1.00/3, 4 min 00 s left, eval_f1_micro 0.9"]


REPORT = ("\x1b[1mLlamaForSequenceClassification LOAD REPORT\x1b[0m from: results/models/smollm2-135m/hf\n"
          "Key          | Status  | \n-------------+---------+-\nscore.weight | MISSING | \n\nNotes:\n"
          "- MISSING:\tthose params were newly initialized because missing from the checkpoint.")


def record(message):
    return logging.LogRecord("transformers.modeling_utils", logging.WARNING, "", 0, message, None, None)


def test_load_report_of_a_new_head_is_one_line_and_other_reports_stay(capsys):
    import transformers.modeling_utils

    progress.quiet_libraries()
    report_logger = transformers.modeling_utils.logger  # the logger transformers reports loading with
    assert report_logger.filter(record(REPORT)) is False  # transformers' report (as printed on a head cell) ...
    assert capsys.readouterr().out == \
        "new classification head initialised (score.weight: not in the checkpoint, as expected)\n"  # ... one line
    unexpected = REPORT.replace("score.weight | MISSING", "model.norm.weight | UNEXPECTED")
    assert report_logger.filter(record(unexpected))  # anything but a missing new head still prints in full
    assert report_logger.filter(record("an unrelated warning"))
