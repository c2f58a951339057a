"""mmtune compare: the plan and the shared settings (pure), and 2 arms × 1 seed end to end."""

import pytest

from mmtune.compare import aggregate, budget_counts, cell_config, headline_markdown, plan, steps_for
from mmtune.config import load_config
from mmtune.pipeline import queries, query_pairs


def test_budgets_fractions_and_counts():
    assert budget_counts([0.01, 0.03, 0.06], 24576) == [246, 737, 1475]
    assert budget_counts([100, 0.5], 1000) == [100, 500]
    with pytest.raises(ValueError, match="exceed the corpus"):
        budget_counts([5000], 1000)
    with pytest.raises(Exception, match="budgets"):
        load_config(None, ["compare.budgets=[1.5]"])


def test_every_arm_trains_the_same_steps_at_a_budget():
    cfg = load_config(None, ["compare.epochs=2", "training.batch_size=16", "run.name=cmp",
                             "compare.seeds=[0,1]", "compare.full_max_steps=500"])
    n = 10_000
    cells = plan(cfg, n)
    budgets = budget_counts(cfg.compare.budgets, n)
    assert len(cells) == 2 * (len(budgets) * (len(cfg.compare.arms) - 1) + 1)
    assert [c[2] for c in cells[: len(cells) // 2]] == [0] * (len(cells) // 2)  # seed-major
    for b in budgets:
        steps = {cell_config(cfg, a, b, 0, n).training.max_steps for a in cfg.compare.arms if a != "full"}
        assert steps == {steps_for(cfg, b)} == {-(-2 * b // 16)}
    full = cell_config(cfg, "full", n, 0, n)
    assert full.training.max_steps == 500 and full.retrieval.method == "full" and full.retrieval.rounds == 1
    abl = cell_config(cfg, "random_step", budgets[0], 1, n)
    assert (abl.retrieval.method, abl.teacher.locate, abl.run.seed) == ("dense", "random", 1)
    from mmtune.teacher.builtin import teacher_key
    from mmtune.training.pretrain import student_key

    assert abl.run.shared_seed == cfg.run.seed  # the seeds vary the runs, never the student or teacher
    assert student_key(abl) == student_key(cfg) and teacher_key(abl) == teacher_key(cfg)
    st = cell_config(cfg, "step_text", budgets[0], 0, n)
    assert (st.retrieval.method, st.retrieval.query, st.teacher.locate) == ("dense", "step_text", "switch")
    assert cell_config(cfg, "oracle", budgets[0], 0, n).retrieval.method == "oracle"
    ctx = cell_config(cfg, "dense_context", budgets[0], 0, n).retrieval
    assert (ctx.method, ctx.context_rerank) == ("dense", True) and not cfg.retrieval.context_rerank
    # a base config with the rerank on (configs/demo.yaml) leaves `dense` and the ablations the paper's
    on = load_config(None, ["retrieval.context_rerank=true"])
    assert not any(cell_config(on, a, budgets[0], 0, n).retrieval.context_rerank
                   for a in ("dense", "random_step", "step_text"))
    d = cell_config(cfg, "dense", budgets[0], 0, n)
    assert (d.run.out_dir, d.run.name, d.run.cache_dir) == ("runs/cmp", f"dense-b{budgets[0]}-s0", cfg.run.cache_dir)


def test_queries_skill_or_the_mistaken_step():
    diag = [
        {"status": "ok", "missing_skill": "reading a handwritten digit", "mistake_step": 2,
         "student_steps": ["The digit is 3.", "3 is even."], "question": "Is the digit odd?"},
        {"status": "ok", "missing_skill": None, "mistake_step": None, "student_steps": []},
        {"status": "unparsed", "missing_skill": None, "mistake_step": 1, "student_steps": ["x"]},
    ]
    assert queries(diag, "skill") == ["reading a handwritten digit"]
    assert queries(diag, "step_text") == ["3 is even."]
    # with the question each was diagnosed on: the context that retrieval.context_rerank ranks by
    assert query_pairs(diag, "skill") == [("reading a handwritten digit", "Is the digit odd?")]


def _scores(acc_t, acc_c):
    return [{"split": "a/test", "task": "a", "n": 10, "accuracy": acc_t, "majority": 0.5, "no_answer": 0},
            {"split": "corpus-tasks", "task": "x", "n": 8, "accuracy": acc_c, "majority": 0.25, "no_answer": 0}]


def test_aggregate_and_headline():
    cells = [{"arm": "dense", "budget": 10, "seed": s, "scores": _scores(a, 0.4)} for s, a in enumerate([0.6, 0.8])]
    cells.append({"arm": "random", "budget": 10, "seed": 0, "scores": _scores(0.5, 0.3)})
    table, forgetting = aggregate(cells)
    d = next(r for r in table if r["arm"] == "dense" and r["task"] == "mean")
    assert d["mean"] == pytest.approx(0.7) and d["sd"] == pytest.approx(0.1414, abs=1e-3) and d["n"] == 2
    assert next(r for r in forgetting if r["arm"] == "random")["mean"] == pytest.approx(0.3)
    md = headline_markdown({"arms": ["dense", "random"], "budgets": [10], "seeds": [0, 1], "corpus_size": 1000,
                            "targets": ["a"], "baseline": {"scores": _scores(0.45, 0.5)}, "table": table,
                            "forgetting": forgetting})
    assert "| ours (switch + skill + dense) | 0.700 ± 0.141 |" in md
    assert "| majority baseline | 0.500 |" in md and "| generic student | 0.450 | 0.500 |" in md
