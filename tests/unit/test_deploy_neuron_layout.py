"""One worker per NeuronCore: worker i takes the i-th core the pod was handed.

Kubernetes' Neuron device plugin allocates `aws.amazon.com/neuroncore` and tells the container
which cores through NEURON_RT_VISIBLE_CORES (e.g. '4-7' on a node shared with another pod);
ECS maps whole devices and sets nothing, where the workers take cores 0..N-1.
"""

from __future__ import annotations

import pytest

from streamer.app import neuron_cores, worker_layout
from streamer.config import load_settings
from streamer.pipeline.service import StartupError


@pytest.mark.parametrize(
    ("spec", "cores"),
    [("", []), ("3", [3]), ("4-7", [4, 5, 6, 7]), ("0,2,5", [0, 2, 5]), ("0-1, 6", [0, 1, 6])],
)
def test_visible_cores_parse(spec: str, cores: list[int]) -> None:
    assert neuron_cores(spec) == cores


def test_bad_visible_cores_say_so() -> None:
    with pytest.raises(StartupError, match="NEURON_RT_VISIBLE_CORES"):
        neuron_cores("a-b")


def test_workers_take_the_cores_the_device_plugin_handed_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NEURON_RT_VISIBLE_CORES", "4-7")
    workers, threads, env = worker_layout("neuronx", load_settings())
    assert (workers, threads) == (4, 1)
    assert env is not None
    assert [env(i)["NEURON_RT_VISIBLE_CORES"] for i in range(workers)] == ["4", "5", "6", "7"]


def test_more_workers_than_visible_cores_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEURON_RT_VISIBLE_CORES", "0-1")
    with pytest.raises(StartupError, match="2 NeuronCores"):
        worker_layout("neuron", load_settings(workers=4))


def test_without_a_core_set_workers_count_from_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEURON_RT_VISIBLE_CORES", raising=False)
    workers, _, env = worker_layout("neuron", load_settings(workers=16))
    assert env is not None and workers == 16
    assert env(15) == {"NEURON_RT_VISIBLE_CORES": "15"}
    with pytest.raises(StartupError, match="--workers"):
        worker_layout("neuron", load_settings())
