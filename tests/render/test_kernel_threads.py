"""The thread rule of the renderer's compiled CPU kernels (``morphable.render.kernel_threads``) and their
reused work buffers."""
import os
import threading

import numba
import numpy as np
import pytest
import torch

from morphable.render import kernel_threads as kt
from tests.conftest import torch_threads


@pytest.fixture
def two_torch_threads():
    with torch_threads(2):
        yield


def test_threads_follow_torch_and_numba_and_stay_serial_for_small_work(two_torch_threads, monkeypatch):
    monkeypatch.setattr(kt, "_launch_pid", None)
    monkeypatch.setattr(kt, "_disabled", False)
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 8)
    assert kt.kernel_threads(kt.MIN_ITEMS) == 2  # torch's count
    assert kt.kernel_threads(kt.MIN_ITEMS - 1) == 1  # too little work to start threads
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 1)
    assert kt.kernel_threads(10**6) == 1  # capped by numba's
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 8)
    torch.set_num_threads(1)
    assert kt.kernel_threads(10**6) == 1  # --threads 1 means one thread for the kernels too


def test_a_forked_child_and_a_foreign_threading_layer_get_the_serial_kernels(two_torch_threads, monkeypatch):
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 8)
    monkeypatch.setattr(kt, "_disabled", False)
    monkeypatch.setattr(kt, "_launch_pid", os.getpid())
    assert kt.kernel_threads(10**6) == 2  # the launching process itself
    monkeypatch.setattr(kt, "_launch_pid", os.getpid() + 1)  # as seen from a child forked after a launch
    assert kt.kernel_threads(10**6) == 1
    monkeypatch.setattr(kt, "_launch_pid", None)
    monkeypatch.setattr(numba, "threading_layer", lambda: "workqueue")
    kt.launched()  # the first launch records the process and the layer numba chose
    assert kt._launch_pid == os.getpid() and kt._disabled
    assert kt.kernel_threads(10**6) == 1


def test_work_arrays_are_kept_per_name_layout_and_calling_thread():
    layout = (((2, 5), np.float32), ((1, 5), np.int32))
    a = kt.work_arrays("test", layout)
    assert [(x.shape, x.dtype) for x in a] == [((2, 5), np.float32), ((1, 5), np.int32)]
    assert all(x is y for x, y in zip(kt.work_arrays("test", layout), a))  # reused
    b = kt.work_arrays("test", (((3, 5), np.float32),))  # another layout replaces the set
    assert b[0].shape == (3, 5) and kt.work_arrays("test", (((3, 5), np.float32),))[0] is b[0]
    other = []
    t = threading.Thread(target=lambda: other.append(kt.work_arrays("test", (((3, 5), np.float32),))[0]))
    t.start()
    t.join()
    assert other[0] is not b[0]  # two threads rendering at once never share buffers
