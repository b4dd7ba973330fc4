"""neuron / neuronx targets: here (no Neuron SDK) they must stop at once with a clear message."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from compile.__main__ import main
from compile.neuron import COMPILER_ARGS, compile_neuron
from compile.sample import builtin_sample
from streamer.model.artifact import BackendUnavailableError
from streamer.model.backend_neuron import bucket_file, import_neuron

MESSAGES = {
    "neuron": "torch-neuron is not installed; install from the AWS Neuron repository",
    "neuronx": "torch-neuronx is not installed; install from the AWS Neuron repository",
}


def _absent(target: str) -> bool:
    return (
        importlib.util.find_spec({"neuron": "torch_neuron", "neuronx": "torch_neuronx"}[target])
        is None
    )


@pytest.mark.parametrize("target", ["neuron", "neuronx"])
def test_import_fails_with_install_hint(target: str) -> None:
    if not _absent(target):
        pytest.skip(f"{target} SDK installed on this host")
    with pytest.raises(BackendUnavailableError, match=MESSAGES[target]):
        import_neuron(target)


@pytest.mark.parametrize("target", ["neuron", "neuronx"])
def test_compile_stops_before_any_work(target: str, tmp_path: Path) -> None:
    if not _absent(target):
        pytest.skip(f"{target} SDK installed on this host")
    out = tmp_path / "out"
    with pytest.raises(BackendUnavailableError, match=MESSAGES[target]):
        compile_neuron(tmp_path / "no-such-artifact", out, builtin_sample(), target=target)
    assert not out.exists()


def test_cli_reports_the_message_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if not _absent("neuron"):
        pytest.skip("torch-neuron installed on this host")
    code = main(["--target", "neuron", "--artifact", str(tmp_path), "--sample", "builtin"])
    assert code == 2
    assert MESSAGES["neuron"] in capsys.readouterr().err


def test_documented_compiler_args() -> None:
    # inf1 as Amazon Search ran it: bf16 casts of fp32 ops, one NeuronCore, no pipelining.
    assert "--fp32-cast=all" in COMPILER_ARGS["neuron"]
    assert COMPILER_ARGS["neuron"][-2:] == ["--neuroncore-pipeline-cores", "1"]
    assert bucket_file(8, 128) == "neuron/b8_s128.pt"
