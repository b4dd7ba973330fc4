"""The model a fresh clone serves: `models/<name>-<version>/`, compiled for the cpu target on first use.

The trained weights ship with the project (fp16 safetensors, the only weights in the tree);
compiled artifacts are build outputs, cached under `artifacts/<name>-<version>-cpu/` and rebuilt
when the shipped weights change (the manifest records the sha256 of the weights it was built
from) or when the compile recipe does (`manifest.COMPILE_RECIPES`: a new way of compiling
reaches every existing clone, once). Compiling is `python -m compile` in a child process: `compile/` consumes
`streamer.model`, never the other way round. A lock file serialises concurrent first starts
(the demo starts two services at once).
"""

from __future__ import annotations

import fcntl
import subprocess
import sys
from pathlib import Path

from streamer.config import repo_root
from streamer.model.artifact import CONFIG, WEIGHTS, ArtifactError, sha256_file
from streamer.model.manifest import (
    COMPILE_RECIPES,
    MANIFEST,
    read_manifest,
    verify_checksums,
)

MODELS_DIR = repo_root() / "models"
ARTIFACTS_DIR = repo_root() / "artifacts"


def shipped_model(models_dir: Path = MODELS_DIR) -> Path:
    """The one trained model under models/ (a directory with config.json)."""
    found = sorted(p.parent for p in Path(models_dir).glob(f"*/{CONFIG}"))
    if len(found) != 1:
        raise ArtifactError(
            f"expected exactly one shipped model under {models_dir}, found {len(found)}: "
            "pass --artifact (a compiled artifact directory) instead"
        )
    return found[0]


def compiled_dir(trained: Path, target: str, artifacts_dir: Path = ARTIFACTS_DIR) -> Path:
    """Where the compiled artifact of `trained` for `target` is cached."""
    return Path(artifacts_dir) / f"{Path(trained).name}-{target}"


def is_current(compiled: Path, trained: Path) -> bool:
    """True if `compiled` is intact, was built from exactly these trained weights and by the
    current compile recipe of its target (a missing recipe: built before recipes were recorded)."""
    try:
        manifest = read_manifest(compiled)
        verify_checksums(compiled, manifest)
    except ArtifactError:
        return False
    if manifest.get("compile_recipe") != COMPILE_RECIPES[manifest["target"]]:
        return False
    source = manifest.get("source", {})
    return bool(source.get("weights_sha256") == sha256_file(Path(trained) / WEIGHTS))


def ensure_compiled(
    trained: Path | None = None,
    target: str = "cpu",
    artifacts_dir: Path = ARTIFACTS_DIR,
    *,
    echo: bool = True,
) -> Path:
    """The compiled artifact of the shipped (or given) model, compiling it if missing or stale."""
    trained = Path(trained) if trained is not None else shipped_model()
    out = compiled_dir(trained, target, artifacts_dir)
    Path(artifacts_dir).mkdir(parents=True, exist_ok=True)
    with (Path(artifacts_dir) / ".compile.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent first start waits, then reuses
        if is_current(out, trained):
            return out
        if echo:
            print(
                f"compiling {trained.name} for the {target} target -> {out} (once; cached)",
                file=sys.stderr,
                flush=True,
            )
        cmd = [sys.executable, "-m", "compile", "--target", target]
        cmd += ["--artifact", str(trained), "--out", str(out)]
        done = subprocess.run(cmd, cwd=repo_root(), capture_output=True, text=True)
        if done.returncode != 0 or not is_current(out, trained):
            raise ArtifactError(
                f"compiling {trained} for {target} failed (exit {done.returncode}): "
                f"{(done.stderr or done.stdout).strip()[-2000:]}"
            )
        if echo:
            print(done.stdout.strip(), file=sys.stderr, flush=True)
    return out


def is_compiled(path: Path) -> bool:
    """A compiled serving artifact (has manifest.json), as opposed to a trained one."""
    return (Path(path) / MANIFEST).is_file()
