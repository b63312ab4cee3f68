"""``pipeline.extract.embed._run_batches``: every batch's embeddings land under their items; a
batch that raises is retried item by item so a bad item fails alone; a non-finite embedding is
an error of its clip; ``after`` sees every batch once, in order. Checked with forwards that run
real torch modules on the CPU (the embedding of an item is a function of the item alone, so a
batch's result must equal its items' one-item results)."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.extract.embed import Pending, _run_batches

W = torch.nn.Linear(1, 4)


def forward_factory(poison=(), nan=(), calls=None):
    def forward(idx):
        if calls is not None:
            calls.append(idx.tolist())
        if any(int(i) in poison for i in idx) and len(idx) > 1:
            raise RuntimeError("poisoned batch")
        if len(idx) == 1 and int(idx[0]) in poison:
            raise ValueError(f"item {int(idx[0])} is bad")
        with torch.inference_mode():
            x = torch.as_tensor(idx, dtype=torch.float32)[:, None]
            emb = W(x)
            emb[[k for k, i in enumerate(idx.tolist()) if i in nan]] = float("nan")
        return Pending(emb)
    return forward


def run(batches, **kw):
    errors, out, seen = {}, {}, []
    _run_batches([np.asarray(b) for b in batches], forward_factory(**kw), lambda i: i // 10, errors, out,
                 after=lambda b: seen.append(b.tolist()))
    return errors, out, seen


def test_results_land_under_their_items_and_after_sees_each_batch_in_order():
    batches = [[0, 1, 2], [3], [4, 5]]
    errors, out, seen = run(batches)
    assert errors == {} and seen == batches and sorted(out) == list(range(6))
    with torch.inference_mode():
        want = W(torch.arange(6, dtype=torch.float32)[:, None]).numpy()
    for i in range(6):
        np.testing.assert_allclose(out[i], want[i], rtol=1e-6)


def test_a_bad_item_fails_alone_and_non_finite_is_an_error():
    calls = []
    errors, out, seen = {}, {}, []
    _run_batches([np.asarray([0, 11, 2]), np.asarray([23, 24]), np.asarray([11])],
                 forward_factory(poison={11}, nan={24}, calls=calls), lambda i: i // 10, errors, out,
                 after=lambda b: seen.append(b.tolist()))
    assert set(errors) == {1, 2}                                # clip of item 11, clip of item 24 (NaN)
    assert "item 11 is bad" in str(errors[1]) and "non-finite" in str(errors[2])
    assert sorted(out) == [0, 2, 23, 24]                         # 11 has no result; 24 is stored, flagged
    assert [0] in calls and [2] in calls                         # the poisoned batch was retried item by item
    assert seen == [[0, 11, 2], [23, 24], [11]]


class Recorded:
    """Stands in for the CUDA event of a batch in flight (this box has no GPU): records when the
    batch is waited for, next to when batches are launched."""

    def __init__(self, log, batch):
        self.log, self.batch = log, batch

    def synchronize(self):
        self.log.append(("wait", self.batch))


def test_on_the_device_the_next_batch_is_launched_before_the_last_is_waited_for():
    log, errors, out = [], {}, {}
    base = forward_factory(poison={11})

    def forward(idx):
        log.append(("launch", idx.tolist()))
        p = base(idx)
        p.event = Recorded(log, idx.tolist())
        return p
    _run_batches([np.asarray([0, 1]), np.asarray([2, 11]), np.asarray([3])], forward, lambda i: i // 10, errors, out)
    assert log == [("launch", [0, 1]), ("launch", [2, 11]), ("wait", [0, 1]),
                   ("launch", [2]), ("wait", [2]), ("launch", [11]),       # the poisoned batch, item by item
                   ("launch", [3]), ("wait", [3])]
    assert sorted(out) == [0, 1, 2, 3] and set(errors) == {1}


class Broken(Recorded):
    """A batch whose wait reports an error of the device itself, as CUDA does asynchronously."""

    def synchronize(self):
        raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered")


def test_an_error_of_the_device_stops_the_run_instead_of_failing_every_clip():
    import pytest

    from pipeline.core.errors import BackboneError
    for where in ("launch", "wait"):
        calls, errors, out = [], {}, {}
        base = forward_factory(calls=calls)

        def forward(idx, where=where):
            if where == "launch" and idx.tolist() == [2, 3]:
                raise torch.AcceleratorError("CUDA error: device-side assert triggered")
            p = base(idx)
            if where == "wait" and idx.tolist() == [2, 3]:
                p.event = Broken([], idx.tolist())
            return p
        with pytest.raises(BackboneError, match="GPU reported an error") as e:
            _run_batches([np.asarray([0, 1]), np.asarray([2, 3]), np.asarray([4])], forward,
                         lambda i: i // 10, errors, out)
        assert isinstance(e.value.__cause__, torch.AcceleratorError) and "rerun" in str(e.value)
        assert [2] not in calls and [3] not in calls             # not retried item by item
        assert errors == {}                                      # no clip recorded as failed
