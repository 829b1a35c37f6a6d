"""The thread count chosen by measurement (seqlm.threads), on a clock the test controls."""

from __future__ import annotations

import pytest
import torch

from seqlm import threads
from seqlm.threads import EXPLORE_MAX, EXPLORE_SECONDS, ThreadGovernor


@pytest.fixture(autouse=True)
def keep_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


class Machine:
    """Step times of a 2-core machine: 2 threads 1.6x faster than 1 while it is quiet, 4x
    slower than 1 beside a busy process (the issue's measurements), on a fake clock."""

    def __init__(self) -> None:
        self.now, self.busy = 0.0, False

    def step_time(self) -> float:
        one = 0.100 if not self.busy else 0.104
        two = 0.0625 if not self.busy else 0.4
        return two if torch.get_num_threads() == 2 else one

    def clock(self) -> float:
        return self.now

    def run(self, governor: ThreadGovernor, steps: int) -> list[dict]:
        changes = []
        for _ in range(steps):
            took = self.step_time()
            self.now += took
            change = governor.after_step(took, step=len(changes))
            if change:
                changes.append(change)
        return changes


def test_candidates_are_one_half_and_all_cores():
    assert threads.candidates(2) == (1, 2)
    assert threads.candidates(8) == (1, 4, 8)
    assert threads.candidates(1) == (1,)
    assert threads.available_cores() >= 1


def test_rates_interleave_the_counts_and_keep_each_ones_best_burst():
    machine = Machine()
    order = []

    def step() -> int:
        order.append(torch.get_num_threads())
        machine.now += machine.step_time()
        if len(order) == 12:
            machine.busy = True  # a neighbour arrives half way through: some bursts are slow
        return 100

    got = threads.rates(step, (1, 2), rounds=3, seconds=0.3, clock=machine.clock)
    assert got[2] == pytest.approx(100 / 0.0625)  # its quiet bursts count, not the busy one
    assert got[1] == pytest.approx(100 / 0.100)
    assert torch.get_num_threads() == 2  # left at the fastest
    switches = [a for a, b in zip(order, order[1:]) if a != b]
    assert len(switches) == 3  # 1, 2 | 2, 1 | 1, 2: interleaved, not one count then the other


def test_a_quiet_machine_keeps_its_count_and_looks_less_and_less_often():
    machine = Machine()
    governor = ThreadGovernor((1, 2), 2, clock=machine.clock)
    assert machine.run(governor, 3000) == []  # about 3 minutes of steps
    assert torch.get_num_threads() == 2
    assert governor.explore > EXPLORE_SECONDS  # each look that confirms the count waits longer


def test_a_busy_neighbour_moves_the_run_to_one_thread_and_back_when_it_leaves():
    machine = Machine()
    governor = ThreadGovernor((1, 2), 2, clock=machine.clock)
    machine.run(governor, 200)
    machine.busy = True
    changes = machine.run(governor, 40)
    assert [c["threads"] for c in changes] == [1]  # within a few dozen steps
    assert changes[0]["reason"] == "the steps' speed changed"
    assert changes[0]["step_seconds"]["2"] > 2 * changes[0]["step_seconds"]["1"]
    assert torch.get_num_threads() == 1
    # busy for a while: the periodic looks cost little
    start, steps = machine.now, 2000
    machine.run(governor, steps)
    assert steps * 0.104 / (machine.now - start) >= 0.9  # >= 0.9x the best count's speed
    machine.busy = False  # the neighbour left: the next look goes back to two threads
    changes = machine.run(governor, int(EXPLORE_MAX / 0.0625))
    assert [c["threads"] for c in changes] == [2] and torch.get_num_threads() == 2
