"""scripts/bench_head.py on a tiny problem: the faithful head's store size is the one asked for."""

from __future__ import annotations

import pytest
from script_support import load_script

TINY = ["--n-train", "600", "--n-val", "200", "--concepts", "24", "--classes", "3", "--concepts-per-class", "2",
        "--n-lambdas", "6"]


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_head")


def test_store_per_class_sets_the_faithful_heads_store(bench, capsys):
    result = bench.main([*TINY, "--solvers", "ours,ours_faithful,ours_signs", "--store-per-class", "5"])
    capsys.readouterr()
    faithful, signs = result["solvers"]["ours_faithful"], result["solvers"]["ours_signs"]
    assert faithful["store_per_class"] == 5 and "5 per class" in faithful["store"]
    assert signs["store_per_class"] == 24
    # weights only where the store lists a concept: at most 5 of 24 per class, whatever lambda
    assert max(q["nnz"] for q in faithful["path"]) <= 3 * 5
    assert max(q["nnz"] for q in signs["path"]) > 3 * 5
    assert set(result["targets"]) == {"faithful_path_at_most_1_5x_unconstrained", "signs_only_path_at_most_1_5x_unconstrained"}


@pytest.mark.parametrize("size", ["1", "25"])
def test_a_store_smaller_than_the_planted_concepts_or_larger_than_all_is_refused(bench, capsys, size):
    with pytest.raises(SystemExit):
        bench.main([*TINY, "--solvers", "ours_faithful", "--store-per-class", size])
    assert "--store-per-class" in capsys.readouterr().err
