"""A checkpoint is data: crafted files of every container torch reads (zip, legacy, bare
pickles of protocols 0-5, nested objects, persistent ids, TorchScript) whose pickle would
create a marker file. Each payload is shown to be live (a plain unpickling creates the
marker); mambapanel's loader never creates it, in the client or in a Dask worker."""

import io
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from distributed import Client, LocalCluster

from compute.__main__ import main
from compute.cluster import LOCAL_HTTP
from mambapanel import models
from mambapanel.models.checkpoint_file import read_checkpoint

MAGIC = torch.serialization.MAGIC_NUMBER


class Payload:
    """Pickles as a call of ``function(*args)``: what an attacker's file holds."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def shell(marker):  # named by the refusal: os.system (posix.system) runs code
    return Payload(os.system, f"touch {marker}")


def quiet(marker):  # named by nothing: numpy.save writes a file, and stays inert here
    return Payload(np.save, str(marker), 0)


def disguised_magic(marker):  # eval that creates the marker and returns the legacy magic
    return Payload(eval, f"__import__('pathlib').Path({str(marker)!r}).touch() or {MAGIC}")


@pytest.fixture(scope="module")
def state_dict():
    torch.manual_seed(3)
    return models.build("vmamba-micro", num_classes=4).state_dict()


def legacy_bytes(content):
    buffer = io.BytesIO()
    torch.save(content, buffer, _use_new_zipfile_serialization=False)
    return buffer.getvalue()


def zip_bytes(content):
    buffer = io.BytesIO()
    torch.save(content, buffer)
    return buffer.getvalue()


class PersistentIdPickler(pickle.Pickler):
    """Writes every list as a persistent id that holds the payload."""

    def __init__(self, file, payload):
        super().__init__(file, protocol=2)
        self.payload = payload

    def persistent_id(self, obj):
        return ("storage", self.payload) if isinstance(obj, list) else None


def persistent_id_bytes(payload):
    buffer = io.BytesIO()
    PersistentIdPickler(buffer, payload).dump({"model": [1, 2]})
    return buffer.getvalue()


def disguised_legacy_bytes(state_dict, marker):
    """A legacy checkpoint whose first pickle (the magic number) is a call of eval."""
    good = legacy_bytes({"model": state_dict})
    first_end = len(pickle.dumps(MAGIC, protocol=2))
    assert pickle.loads(good[:first_end]) == MAGIC
    return pickle.dumps(disguised_magic(marker), protocol=2) + good[first_end:]


def crafted(name, state_dict, marker):
    """(file bytes, how a plain unpickler reads them) of the crafted file ``name``."""
    payloads = {"shell": shell(marker), "quiet": quiet(marker)}
    kind, _, variant = name.partition("-")
    if kind == "disguised":
        return disguised_legacy_bytes(state_dict, marker), "torch"
    payload = payloads[variant]
    if kind == "zip":
        return zip_bytes({"model": state_dict, "extra": payload}), "torch"
    if kind == "legacy":
        return legacy_bytes({"model": state_dict, "extra": payload}), "torch"
    if kind == "nested":
        return zip_bytes({"model": state_dict, "a": [{"b": (1, {"c": payload})}]}), "torch"
    if kind == "persid":
        return persistent_id_bytes(payload), "persid"
    protocol = int(kind.removeprefix("pickle"))
    return pickle.dumps({"model": {"w": payload}}, protocol=protocol), "pickle"


VARIANTS = ("shell", "quiet")
CASES = [
    *(f"{kind}-{variant}" for kind in ("zip", "legacy", "nested") for variant in VARIANTS),
    *(f"pickle{p}-{variant}" for p in range(6) for variant in VARIANTS),
    "persid-shell",
    "persid-quiet",
    "disguised-eval",
]


def plain_load(path, how):
    """What an unsafe reader does: the control that shows a payload is live."""
    if how == "torch":
        return torch.load(path, weights_only=False)
    with open(path, "rb") as file:
        unpickler = pickle.Unpickler(file)
        unpickler.persistent_load = lambda pid: pid
        return unpickler.load()


def marker_of(tmp_path, case):
    return tmp_path / f"{case}-ran.npy"  # numpy.save keeps a name that ends in .npy


@pytest.mark.parametrize("case", CASES)
def test_no_crafted_file_runs_code(case, state_dict, tmp_path):
    marker = marker_of(tmp_path, case)
    content, how = crafted(case, state_dict, marker)
    path = tmp_path / f"{case}.pth"
    path.write_bytes(content)

    try:  # the control: a plain unpickling runs the payload
        plain_load(path, how)
    except Exception:
        pass  # a disguised or broken file may fail after its payload ran
    assert marker.exists(), "the crafted payload must be live for this test to mean anything"
    marker.unlink()

    try:
        model = models.build("vmamba-micro", checkpoint=path)
    except models.CheckpointError as err:
        assert str(path) in str(err)
        if case.endswith("shell"):
            assert "refused: its pickle refers to posix.system" in str(err)
            assert "safetensors" in str(err)  # how to re-save it safely
        if case == "disguised-eval":
            assert "builtins.eval" in str(err)
    else:  # only a real checkpoint with an inert extra may load, and loads its weights
        assert case in {"zip-quiet", "legacy-quiet", "nested-quiet"}
        assert torch.equal(model.state_dict()["classifier.head.weight"],
                           state_dict["classifier.head.weight"])  # fmt: skip
        assert models.read_state_dict(path)[1]["skipped"] == ["numpy.save"]
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torchscript_archives_are_refused(tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(path))
    with pytest.raises(models.CheckpointError, match=r"scripted\.pt: a TorchScript archive"):
        read_checkpoint(path)


def test_empty_and_damaged_files_are_named(tmp_path, state_dict):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(models.CheckpointError, match=r"empty\.pth: empty file \(0 bytes\)"):
        models.read_state_dict(empty)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(zip_bytes({"model": state_dict})[:5000])
    with pytest.raises(models.CheckpointError, match=r"cut\.pth: "):
        models.read_state_dict(cut)
    text = tmp_path / "notes.safetensors"
    text.write_text("hello")
    with pytest.raises(models.CheckpointError, match=r"notes\.safetensors: not a readable"):
        models.read_state_dict(text)


def test_safetensors_checkpoints_load_with_their_metadata(state_dict, tmp_path):
    path = tmp_path / "ours.safetensors"
    models.write_checkpoint(path, state_dict, {"order": "morton", "config": {"image_size": 32}})
    assert not (tmp_path / "ours.safetensors.partial").exists()
    model = models.build("vmamba-micro", checkpoint=path)
    assert model.order == "morton"
    for key, value in state_dict.items():
        assert torch.equal(model.state_dict()[key], value), key
    meta = models.read_state_dict(path)[1]
    assert meta["config"] == {"image_size": 32} and meta["skipped"] == []
    assert len(meta["sha256"]) == 64


@pytest.fixture(scope="module")
def worker_client():
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=LOCAL_HTTP
        ) as cluster,  # fmt: skip
        Client(cluster) as client,
    ):
        yield client


@pytest.mark.slow
def test_no_crafted_file_runs_code_in_a_dask_worker(worker_client, state_dict, tmp_path):
    outcomes = {}
    for case in CASES:
        marker = marker_of(tmp_path, case)
        path = tmp_path / f"{case}.pth"
        path.write_bytes(crafted(case, state_dict, marker)[0])
        future = worker_client.submit(models.read_state_dict, str(path), pure=False)
        outcomes[case] = type(future.exception()).__name__ if future.exception() else "loaded"
        assert not marker.exists(), case
    assert outcomes.pop("zip-quiet") == outcomes.pop("legacy-quiet") == "loaded"
    assert outcomes.pop("nested-quiet") == "loaded"
    assert set(outcomes.values()) == {"CheckpointError"}


@pytest.mark.slow
def test_extract_with_a_disguised_checkpoint_runs_no_payload(state_dict, tmp_path):
    """The whole command, client and LocalCluster workers: the inert extra is skipped, the
    weights load and the run completes; a file with a code-running global is refused."""
    marker = marker_of(tmp_path, "extract")
    good = tmp_path / "quiet.pth"
    good.write_bytes(zip_bytes({"model": state_dict, "extra": quiet(marker)}))
    common = ["--images", "demo", "--n", "2", "--size", "32", "--workers", "1"]
    assert main(["extract", "--checkpoint", str(good), "--out", str(tmp_path / "r"), *common]) == 0
    assert not marker.exists()

    bad = tmp_path / "shell.pth"
    bad.write_bytes(legacy_bytes({"model": state_dict, "extra": shell(marker)}))
    command = [sys.executable, "-m", "compute", "extract", "--checkpoint", str(bad),
               "--out", str(tmp_path / "s"), *common]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "refused: its pickle refers to posix.system" in result.stderr
    assert "Traceback" not in result.stderr
    assert not marker.exists()
