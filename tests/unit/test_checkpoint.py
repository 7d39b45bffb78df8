"""Crash recovery of the best-model artifact (training/checkpoint.py)."""

from training.checkpoint import recover_best_artifact


def _artifact(path, content: bytes):
    path.mkdir()
    (path / "model.safetensors").write_bytes(content)


def test_a_crash_between_the_renames_restores_the_previous_best(tmp_path):
    _artifact(tmp_path / "best.old", b"previous best")
    _artifact(tmp_path / "best.tmp", b"torn")
    recover_best_artifact(tmp_path)
    assert (tmp_path / "best" / "model.safetensors").read_bytes() == b"previous best"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_a_completed_replacement_keeps_the_new_best(tmp_path):
    _artifact(tmp_path / "best", b"new best")
    _artifact(tmp_path / "best.old", b"previous best")  # crash before the old one was removed
    recover_best_artifact(tmp_path)
    assert (tmp_path / "best" / "model.safetensors").read_bytes() == b"new best"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_nothing_to_recover(tmp_path):
    recover_best_artifact(tmp_path)
    assert list(tmp_path.iterdir()) == []
