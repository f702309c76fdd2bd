"""k400ft.feed: the engine's step never waits for itself. The next batch is fetched and made
while the current step runs (`Feeder`), each step's loss is read back one step late
(`LateLoss`), and a non-finite loss still stops the run naming its epoch and step, before
any state holding it is saved."""

import json

import pytest
import torch
from test_finetune import finish, fork_run, rank0_log, tiny  # noqa: F401 (a fixture)

from k400ft import components, feed, schedule, state


def test_feeder_makes_each_batch_once_in_order_and_never_past_its_count():
    made = []

    def prepare(batch):
        made.append(batch[0])
        return (torch.tensor(batch[0]),)

    feeder = feed.Feeder(iter([(n,) for n in range(10)]), prepare, torch.device("cpu"), 3)
    assert feeder.take()[0].item() == 0 and made == [0]
    feeder.fetch()
    feeder.fetch()  # one ahead at most
    assert made == [0, 1]
    assert [feeder.take()[0].item(), feeder.take()[0].item()] == [1, 2]
    feeder.fetch()
    assert made == [0, 1, 2]  # the count is reached: nothing past the epoch is fetched
    with pytest.raises(StopIteration):
        feeder.take()


def test_late_loss_reads_the_value_and_names_a_non_finite_one():
    assert feed.LateLoss(torch.tensor(0.25), "epoch 0, step 3").value() == 0.25
    with pytest.raises(FloatingPointError, match=r"loss is nan at epoch 1, step 4 \(global 9\)"):
        feed.LateLoss(torch.tensor(float("nan")), "epoch 1, step 4 (global 9)").value()


def one_epoch(spec: dict, checkpoint_minutes: float) -> dict:
    spec = json.loads(json.dumps(spec))
    spec["recipe"].update(epochs=1, checkpoint_minutes=checkpoint_minutes)
    return spec


def test_each_step_makes_the_next_batch_and_reads_its_loss_a_step_late(tiny, monkeypatch):  # noqa: F811
    """Order of the engine's work over one epoch of 4 steps x 2 micro-batches (log lines and
    saves only at the epoch's end): after each forward/backward the next micro-batch is
    fetched and made before the optimiser step, and step k's loss is read only after step
    k + 1's optimiser step has been issued."""
    root, spec = tiny
    events = root / "order_events.txt"

    def note(text: str) -> None:
        with open(events, "a") as handle:
            handle.write(text + "\n")

    def wrap(owner, name, label):
        original = getattr(owner, name)

        def wrapped(*args, **kwargs):
            note(label(*args) if callable(label) else label)
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapped)

    wrap(feed, "prepare", "batch")
    wrap(torch.optim.AdamW, "step", "step")
    wrap(feed.LateLoss, "value", lambda self: f"read {self.where}")
    make_criterion = components.make_criterion

    def criterion(*args):
        inner = make_criterion(*args)
        return lambda *a: (note("forward"), inner(*a))[1]

    monkeypatch.setattr(components, "make_criterion", criterion)
    monkeypatch.setattr(schedule, "LOG_LINES_PER_EPOCH", 1)
    assert finish(fork_run(root, one_epoch(spec, 1e6), "order")) == [0], rank0_log(root, "order")
    lines = events.read_text().splitlines()
    lines = lines[: lines.index("read epoch 0, step 3 (global 3)") + 1]  # validation after
    micro = ["forward", "batch"]
    assert lines == (
        ["batch", *micro, "forward", "batch", "step"]
        + [*micro, *micro, "step", "read epoch 0, step 0 (global 0)"]
        + [*micro, *micro, "step", "read epoch 0, step 1 (global 1)"]
        + [*micro, "forward", "step", "read epoch 0, step 2 (global 2)"]
        + ["read epoch 0, step 3 (global 3)"]
    )


@pytest.mark.parametrize("checkpoint_minutes", [1e-6, 1e6], ids=["saves every step", "no save"])
def test_a_nan_loss_stops_the_run_naming_its_step_and_is_never_saved(
    tiny,  # noqa: F811
    monkeypatch,
    checkpoint_minutes,
):
    """A NaN loss at step 1 (the 3rd micro-batch) is found one step late at most, before any
    save: the run exits non-zero naming epoch 0, step 1, and the state on disk (saved at
    every step boundary, or never) holds no step past 1."""
    root, spec = tiny
    make_criterion, calls = components.make_criterion, []

    def criterion(*args):
        inner = make_criterion(*args)

        def poisoned(*a):
            calls.append(1)
            loss = inner(*a)
            return loss * float("nan") if len(calls) == 3 else loss

        return poisoned

    monkeypatch.setattr(components, "make_criterion", criterion)
    name = f"nan_{checkpoint_minutes}"
    assert finish(fork_run(root, one_epoch(spec, checkpoint_minutes), name)) == [1]
    assert "loss is nan at epoch 0, step 1 (global 1)" in rank0_log(root, name)
    saved = state.StateStore(root / name / "state").load()
    steps = None if saved is None else saved["progress"]["global_step"]
    assert steps == (1 if checkpoint_minutes < 1 else None)
