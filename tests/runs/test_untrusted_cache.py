"""Cache entries that were tampered with: code payloads never run, bad checksums and foreign configs are refused, --retrain replaces them."""

import contextlib
import io
import json
import os
import pickle
import shlex
import shutil
import warnings

import pytest
import torch

from vibbench.cli import main

ARGV = ["run", "--profile", "smoke", "--dataset", "synthetic", "--models", "mlp_vib", "--no-eval"]


class Payload:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


@pytest.fixture(scope="module")
def trained_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("trained") / "cache"
    assert main(ARGV + ["--out", str(cache.parent / "out"), "--cache-dir", str(cache)]) == 0
    return cache


@pytest.fixture
def finished(trained_cache, tmp_path):
    """A copy of a finished smoke job: (argv, its job folder)."""
    shutil.copytree(trained_cache, tmp_path / "cache")
    argv = ARGV + ["--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    (folder,) = (tmp_path / "cache" / "jobs").iterdir()
    return argv, folder


def refused(argv, capsys, *expected):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("vibbench: error: ") and all(e in last for e in expected), last
    return last


@pytest.mark.parametrize("form", ["torch.save", "pickle"])
@pytest.mark.parametrize("entry", ["model.pt", "train_state.pt"])
def test_a_checkpoint_carrying_code_is_refused_without_running_it(finished, tmp_path, capsys, form, entry):
    argv, folder = finished
    marker = tmp_path / "payload-ran"
    buffer = io.BytesIO()
    torch.save({"format": "vibbench-checkpoint-1", "payload": Payload(marker)}, buffer) if form == "torch.save" else pickle.dump(Payload(marker), buffer)
    if entry == "train_state.pt":  # an interrupted job: its epoch checkpoint is what the next run loads
        (folder / "result.json").unlink()
    (folder / entry).write_bytes(buffer.getvalue())
    refused(argv, capsys, f"{folder / entry} is unreadable or unsafe", "--retrain")
    assert not marker.exists()
    # the file is a live payload: a plain unpickler runs it
    with warnings.catch_warnings(), contextlib.suppress(RuntimeError):  # a raw pickle runs, then torch finds no magic number
        warnings.simplefilter("ignore")
        torch.load(folder / entry, weights_only=False)
    assert marker.exists()


def test_a_checkpoint_whose_checksum_fails_is_refused_then_retrained_on_request(finished, capsys):
    argv, folder = finished
    outer = torch.load(folder / "model.pt", weights_only=True)
    outer["payload"][-100] ^= 0xFF  # one byte of the weights changed, the recorded digest kept
    torch.save(outer, folder / "model.pt")
    refused(argv, capsys, f"checkpoint {folder / 'model.pt'} fails its SHA-256 check (corrupt or tampered)")
    assert main(argv + ["--retrain"]) == 0
    assert main(argv) == 0  # the retrained entry verifies


def test_a_result_of_another_job_is_refused(finished, capsys):
    argv, folder = finished
    record = json.loads((folder / "result.json").read_text())
    record["job_hash"] = "0" * 64
    (folder / "result.json").write_text(json.dumps(record))
    refused(argv, capsys, f"{folder / 'result.json'} does not match its config", "--retrain")


def test_an_edited_result_is_refused_by_its_checksum(finished, capsys):
    argv, folder = finished
    record = json.loads((folder / "result.json").read_text())
    record["metrics"][0]["value"] = 0.999  # a plausible number, the right job hash
    (folder / "result.json").write_text(json.dumps(record))
    refused(argv, capsys, f"{folder / 'result.json'} fails its SHA-256 check (corrupt or edited)", "--retrain")
    del record["sha256"]  # entries written before results were sealed are still read
    (folder / "result.json").write_text(json.dumps(record))
    assert main(argv) == 0


def test_an_edited_evaluation_section_is_refused_and_a_damaged_one_evaluated_again(tmp_path):
    from vibbench.core.errors import VibbenchError
    from vibbench.core.atomic import write_json
    from vibbench.runs.cache import RESULT_FORMAT, read_eval, sealed

    path, h = tmp_path / "eval-calibration-0123.json", "ab" * 32
    write_json(path, sealed({"format": RESULT_FORMAT, "eval_hash": h, "seconds": 1.5, "records": [{"metric": "ece", "value": 0.02}]}))
    assert read_eval(path, h) == [{"metric": "ece", "value": 0.02}]
    path.write_text(path.read_text().replace("0.02", "0.01"))
    with pytest.raises(VibbenchError, match="fails its SHA-256 check"):
        read_eval(path, h)
    path.write_text("[1, 2]")
    with pytest.raises(VibbenchError, match="does not match its config"):
        read_eval(path, h)
    path.write_text('{"format": "vibbench-job-1", "eval_ha')  # cut short: not used, evaluated again
    assert read_eval(path, h) is None
