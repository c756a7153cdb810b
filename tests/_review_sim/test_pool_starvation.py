"""Task completion shares the callback delivery pool: a slow callback receiver (the provider waits
up to 15 s per attempt) holds every delivery thread, and meanwhile no other task finishes
generating. record-info keeps saying successFlag 0 long past the generation delay, which is not
what the provider does (its generation does not depend on how fast our ingress answers)."""

from __future__ import annotations

import time

from simulator import RunningSimulator
from tests.simulator.support import Receiver, SimFactory, api, details, submit


def test_a_slow_callback_receiver_does_not_hold_back_other_tasks_generation(
    make_sim: SimFactory, receiver: Receiver
) -> None:
    sim: RunningSimulator = make_sim(delivery_threads=1, generation_delay_s=0.05)
    receiver.delays_s = [3.0]  # the first callback is answered after 3 s (under the 15 s limit)
    with api(sim) as client:
        submit(client, callBackUrl=receiver.url)
        receiver.wait_for(1)  # its callback is now being answered, slowly
        other = submit(client)  # a task without a callback, 0.05 s of generation
        time.sleep(1.0)
        flag = details(client, other)["successFlag"]
    assert flag == 1, "the task is still 'generating' 1 s after its 0.05 s generation delay"
