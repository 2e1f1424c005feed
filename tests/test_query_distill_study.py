"""benchmarks/query_distill.py on the tiny fixture: the row it writes, and --resume across runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import read_result  # tests/ is on sys.path (conftest)


def run(tiny_bert: Path, tiny_beir: Path, tmp: Path, *extra: str) -> int:
    from benchmarks import query_distill

    return query_distill.main(["--quick", "--data-root", str(tiny_beir.parent), "--datasets", tiny_beir.name,
                               "--layers", "1", "--base-model", str(tiny_bert), "--doc-max-length", "48",
                               "--work", str(tmp / "work"), "--out", str(tmp / "qd.json"), *extra])


def read(path: Path) -> dict:
    return read_result(path, "benchmarks/query_distill.py")


def test_query_distill_quick(tiny_bert, tiny_beir, tmp_path, capsys):
    assert run(tiny_bert, tiny_beir, tmp_path) == 0
    res = read(tmp_path / "qd.json")
    (row,) = res["results"][tiny_beir.name]
    student = row["students"]["L1"]
    assert row["teacher"] == "base" and student["steps"] > 0 and 0 < student["p"] <= 1
    assert "teacher_training" not in row  # the base model was not trained here
    assert row["pseudo_words"] == [8, 24]  # DistillConfig's crops
    assert student["crops_per_doc"] == 16  # automatic: the tiny corpus is far from filling max_pseudo
    assert student["loss_points"] == pytest.approx(100 * (row["full"]["ndcg@10"] - student["ndcg@10"]), abs=0.006)
    assert student["ci95_points"][0] <= student["ci95_points"][1]
    cos = student["test_query_cosine"]  # teacher vs student on the test queries themselves
    assert -1 <= cos["p5"] <= cos["mean"] <= 1
    # --report prints the row as RESULTS.md's table and measures nothing.
    from benchmarks import query_distill

    before = (tmp_path / "qd.json").read_bytes()
    capsys.readouterr()
    assert query_distill.main(["--report", "--out", str(tmp_path / "qd.json")]) == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert len(table) == 3 and table[0].startswith("| data | teacher | crop words |")
    assert table[2].startswith(f"| {tiny_beir.name} | base | 8–24 | {row['full']['ndcg@10']:.4f} | 1 "
                               f"| {student['ndcg@10']:.4f} |")
    assert table[2].endswith(f"| {'yes' if student['loss_points'] <= 1.0 else 'no'} |")
    assert f"| {cos['mean']:.2f} (p5 {cos['p5']:.2f}) |" in table[2]
    assert (tmp_path / "qd.json").read_bytes() == before
    with pytest.raises(SystemExit, match="no results to report on"):
        query_distill.main(["--report", "--out", str(tmp_path / "none.json")])


def test_resume_keeps_rows_and_adds_only_the_missing_teacher(tiny_bert, tiny_beir, tmp_path):
    assert run(tiny_bert, tiny_beir, tmp_path) == 0
    first = read(tmp_path / "qd.json")["results"][tiny_beir.name][0]
    # A second teacher: a model folder that carries a train_config.json, as hce-train writes it.
    teacher = tmp_path / "work" / "base-q64"
    (teacher / "train_config.json").write_text(json.dumps({"data": str(tiny_beir), "mode": "unsupervised",
                                                           "negatives": "tree", "seed": 3}))
    assert run(tiny_bert, tiny_beir, tmp_path, "--resume", "--model", str(teacher), "--teacher-label", "hce-x",
               "--no-base") == 0
    rows = read(tmp_path / "qd.json")["results"][tiny_beir.name]
    assert [r["teacher"] for r in rows] == ["base", "hce-x"]
    assert rows[0] == first and first["measured"]["commit"]  # not re-run; stamped when measured
    assert rows[1]["teacher_training"]["mode"] == "unsupervised" and rows[1]["teacher_training"]["seed"] == 3
    assert rows[1]["teacher_training"]["data"] == tiny_beir.name
    # Nothing missing: a third run measures nothing and leaves the rows as they are.
    assert run(tiny_bert, tiny_beir, tmp_path, "--resume", "--model", str(teacher), "--teacher-label", "hce-x") == 0
    assert read(tmp_path / "qd.json")["results"][tiny_beir.name] == rows
    # Other settings than the file's: a one-line error, the file untouched.
    before = (tmp_path / "qd.json").read_bytes()
    with pytest.raises(SystemExit) as e:
        run(tiny_bert, tiny_beir, tmp_path, "--resume", "--epochs", "2")
    assert "other epochs" in str(e.value) and (tmp_path / "qd.json").read_bytes() == before
    with pytest.raises(SystemExit) as e:  # other crops are other settings too: another --out
        run(tiny_bert, tiny_beir, tmp_path, "--resume", "--pseudo-words", "8,40")
    assert "other pseudo_words" in str(e.value) and (tmp_path / "qd.json").read_bytes() == before
    with pytest.raises(SystemExit) as e:  # so is another student init
        run(tiny_bert, tiny_beir, tmp_path, "--resume", "--init-layers", "top")
    assert "other init_layers" in str(e.value) and (tmp_path / "qd.json").read_bytes() == before
    # A file from before --init-layers existed was distilled from the bottom layers: it resumes only as such.
    old = json.loads(before)
    assert old["init_layers"] == "ends"  # recorded resolved, not as "the default"
    del old["init_layers"]
    (tmp_path / "qd.json").write_text(json.dumps(old))
    with pytest.raises(SystemExit, match="other init_layers"):
        run(tiny_bert, tiny_beir, tmp_path, "--resume")
    assert run(tiny_bert, tiny_beir, tmp_path, "--resume", "--init-layers", "bottom") == 0
    # Batches were not grouped by length before --length-grouped existed: such a file resumes only ungrouped.
    old = json.loads((tmp_path / "qd.json").read_text())
    assert old["length_grouped"] is True  # recorded resolved
    del old["length_grouped"]
    (tmp_path / "qd.json").write_text(json.dumps(old))
    with pytest.raises(SystemExit, match="other length_grouped"):
        run(tiny_bert, tiny_beir, tmp_path, "--resume", "--init-layers", "bottom")
    assert run(tiny_bert, tiny_beir, tmp_path, "--resume", "--init-layers", "bottom", "--no-length-grouped") == 0
    # The loss settings are recorded resolved; another one is another run, and a file from before they were
    # options was run with the defaults of then.
    old = json.loads((tmp_path / "qd.json").read_text())
    assert (old["tau"], old["cos_weight"], old["kl_weight"], old["train_query_repeats"]) == (0.05, 1.0, 1.0, 8)
    with pytest.raises(SystemExit, match="other tau"):
        run(tiny_bert, tiny_beir, tmp_path, "--resume", "--init-layers", "bottom", "--no-length-grouped", "--tau",
            "0.02")
    with pytest.raises(SystemExit, match="other train_query_repeats"):
        run(tiny_bert, tiny_beir, tmp_path, "--resume", "--init-layers", "bottom", "--no-length-grouped",
            "--train-query-repeats", "4")
    for knob in ("tau", "cos_weight", "kl_weight", "train_query_repeats"):
        del old[knob]
    (tmp_path / "qd.json").write_text(json.dumps(old))
    with pytest.raises(SystemExit, match="other train_query_repeats"):  # such a file ran each train query once
        run(tiny_bert, tiny_beir, tmp_path, "--resume", "--init-layers", "bottom", "--no-length-grouped")
    assert run(tiny_bert, tiny_beir, tmp_path, "--resume", "--init-layers", "bottom", "--no-length-grouped",
               "--train-query-repeats", "1") == 0
    # Crops per document are recorded resolved (0: automatic); a file that recorded null ran 8, the default then.
    old = json.loads((tmp_path / "qd.json").read_text())
    assert old["pseudo_per_doc"] == 0
    old["pseudo_per_doc"] = None
    (tmp_path / "qd.json").write_text(json.dumps(old))
    again = ["--resume", "--init-layers", "bottom", "--no-length-grouped", "--train-query-repeats", "1"]
    with pytest.raises(SystemExit, match="other pseudo_per_doc"):
        run(tiny_bert, tiny_beir, tmp_path, *again)
    assert run(tiny_bert, tiny_beir, tmp_path, *again, "--pseudo-per-doc", "8") == 0


def test_init_layers_reaches_the_student_and_the_report(tiny_bert, tiny_beir, tmp_path, capsys):
    from benchmarks import query_distill

    assert run(tiny_bert, tiny_beir, tmp_path, "--init-layers", "top") == 0  # the 2-layer teacher's layer 1
    res = read(tmp_path / "qd.json")
    assert res["init_layers"] == "top" and res["results"][tiny_beir.name][0]["students"]["L1"]["init_from"] == [1]
    capsys.readouterr()
    assert query_distill.main(["--report", "--out", str(tmp_path / "qd.json")]) == 0
    assert "| 1 (1) |" in capsys.readouterr().out  # a student not from the bottom layers says where from
    with pytest.raises(SystemExit) as e:
        run(tiny_bert, tiny_beir, tmp_path / "x", "--init-layers", "0,1")
    assert e.value.code == 2 and "expected one of bottom, ends, top" in capsys.readouterr().err


def test_no_base_without_a_model_is_a_usage_error(tiny_bert, tiny_beir, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run(tiny_bert, tiny_beir, tmp_path, "--no-base")
    assert e.value.code == 2 and "--no-base needs --model" in capsys.readouterr().err
    assert not (tmp_path / "qd.json").exists() and not (tmp_path / "work").exists()


def test_query_cosine_on_known_vectors():
    import numpy as np

    from benchmarks.query_distill import query_cosine

    full = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]], np.float32)
    shallow = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 1.0]], np.float32)  # same, same (scaled), orthogonal
    got = query_cosine(full, shallow)
    # linear between 0 and 1
    assert got["mean"] == pytest.approx(2 / 3, abs=1e-4) and got["p5"] == pytest.approx(0.1, abs=1e-4)
