"""``--overwrite`` removes what a run wrote, by name: never the user's own data files.

``fedai simulate --out . --overwrite`` in a project directory used to delete every
``*.csv`` and ``*.npz`` there (globs meant for ``rounds.csv`` and
``final-aggregate.npz``), the user's dataset included.
"""

from __future__ import annotations

from pathlib import Path

from fedai.preflight import prepare_output_dir


def test_overwrite_keeps_the_users_csv_npz_and_png_files(tmp_path: Path) -> None:
    # Arrange: a project directory with the user's data beside an earlier run's files
    mine = ["train.csv", "digits.npz", "figure.png"]
    run_files = [
        "results.json",
        "rounds.csv",
        "accuracy.png",
        "accuracy_vs_epsilon.png",
        "model.pt",
        "model.json",
        "final-aggregate.npz",
    ]
    for name in mine + run_files:
        (tmp_path / name).write_bytes(b"x")

    # Act
    prepare_output_dir(tmp_path, overwrite=True)

    # Assert
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(mine)
