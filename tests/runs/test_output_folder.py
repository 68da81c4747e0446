"""The output folder's rules (runs/output_folder.py, core/manifest.py, core/locks.py), without training: a run is
simulated by writing its files between begin_writing and finish_output_folder, as runs/runner.py does."""

from __future__ import annotations

import pytest

from vibbench.cli import main
from vibbench.core.errors import VibbenchError
from vibbench.core.locks import folder_lock
from vibbench.core.manifest import begin_writing, read_manifest
from vibbench.runs.output_folder import check_output_folder, finish_output_folder

A, B = "a" * 64, "b" * 64


def fake_run(out, config_hash, files=("metrics.csv", "report.md", "config.json", "figures/clean_error.png"), overwrite=False):
    earlier = check_output_folder(out, config_hash, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    begin_writing(out, config_hash)
    for name in files:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(f"{name} of {config_hash[:4]}\n" if name != "config.json" else f'{{"config_hash": "{config_hash}", "run_id": "run-{config_hash[:4]}"}}')
    return finish_output_folder(out, config_hash, earlier)


def test_the_same_config_writes_over_its_own_files(tmp_path):
    out = tmp_path / "out"
    fake_run(out, A)
    fake_run(out, A)
    assert (out / "metrics.csv").read_text() == "metrics.csv of aaaa\n"
    manifest = read_manifest(out)
    assert manifest.complete and manifest.config_hash == A


def test_another_run_is_refused_unless_overwrite_and_its_stale_files_go(tmp_path):
    out = tmp_path / "out"
    fake_run(out, A)
    with pytest.raises(VibbenchError, match=r"holds another run \(run run-aaaa\).*--overwrite"):
        check_output_folder(out, B)
    assert (out / "metrics.csv").read_text() == "metrics.csv of aaaa\n"  # nothing touched
    stale = fake_run(out, B, files=("metrics.csv", "config.json"), overwrite=True)
    assert {p.name for p in stale} == {"report.md", "clean_error.png"}  # the earlier run's, not written again
    assert not (out / "report.md").exists() and (out / "metrics.csv").read_text() == "metrics.csv of bbbb\n"


def test_a_users_file_at_a_run_files_name_is_never_replaced(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("my own notes\n")
    for overwrite in (False, True):
        with pytest.raises(VibbenchError, match="report.md was not written by vibbench.*even with --overwrite"):
            check_output_folder(out, A, overwrite)
    assert (out / "report.md").read_text() == "my own notes\n"


def test_a_run_file_changed_by_hand_counts_as_the_users(tmp_path):
    out = tmp_path / "out"
    fake_run(out, A)
    (out / "report.md").write_text("edited\n")
    with pytest.raises(VibbenchError, match="report.md was not written by vibbench"):
        check_output_folder(out, A, overwrite=True)


def test_other_files_are_kept_beside_the_run_with_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    with pytest.raises(VibbenchError, match=r"holds files vibbench did not write \(notes.txt\)"):
        check_output_folder(out, A)
    fake_run(out, A, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine\n" and (out / "metrics.csv").exists()
    with pytest.raises(VibbenchError, match="notes.txt"):  # every run into that folder is asked again
        check_output_folder(out, A)
    fake_run(out, A, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine\n"


def test_a_folder_of_an_older_vibbench_is_recognized_by_its_config(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.csv").write_text("x\n")
    (out / "config.json").write_text(f'{{"config_hash": "{A}", "run_id": "old"}}')
    assert set(check_output_folder(out, A)) == {out / "metrics.csv", out / "config.json"}
    with pytest.raises(VibbenchError, match=r"holds another run \(run old"):
        check_output_folder(out, B)


def test_a_failed_start_leaves_no_folder_and_no_lock(tmp_path):
    out = tmp_path / "a" / "b"
    with pytest.raises(RuntimeError):
        with folder_lock(out, "output folder", wait=False, tidy=True):
            assert (out / ".lock").exists()
            raise RuntimeError("failed before writing")
    assert not (tmp_path / "a").exists()


def test_version(capsys):
    import importlib.metadata

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == f"vibbench {importlib.metadata.version('vibbench')}\n"
