"""The answer switch on hand-made traces, and the candidates and prompts it reads."""

import pytest

from mmtune.teacher.prompts import load_template
from mmtune.teacher.switch import NO_ANSWER, candidates_for, find_switch, switch_prompts


def test_switch_needs_delta_and_patience():
    # P(gold) after prefixes 0..4; the prediction overtakes at step 2 and stays ahead.
    pg = [0.6, 0.55, 0.3, 0.2, 0.1]
    pp = [0.4, 0.45, 0.7, 0.8, 0.9]
    r = find_switch(pg, pp, delta=0.1, patience=2)
    assert (r.step, r.method) == (2, "switch")
    assert r.p_gold == pg and r.p_pred == pp


def test_margin_below_delta_is_not_a_switch():
    pg = [0.6, 0.48, 0.47, 0.2]
    pp = [0.4, 0.52, 0.53, 0.8]  # steps 1-2 lead by < δ = 0.1; step 3 by 0.6
    assert find_switch(pg, pp, delta=0.1, patience=2).step == 3


def test_a_blip_that_does_not_persist_is_ignored():
    pg = [0.6, 0.2, 0.7, 0.6, 0.1, 0.1]
    pp = [0.4, 0.8, 0.3, 0.4, 0.9, 0.9]
    r = find_switch(pg, pp, delta=0.1, patience=2)
    assert (r.step, r.method) == (4, "switch")
    assert find_switch(pg, pp, delta=0.1, patience=1).step == 1


def test_switch_at_the_last_step_counts():
    # [ours] persistence is cut short by the end of the chain.
    assert find_switch([0.6, 0.6, 0.1], [0.4, 0.4, 0.9], 0.1, 2).step == 2


def test_fallback_is_the_largest_drop_in_p_gold():
    pg = [0.7, 0.65, 0.45, 0.44]  # never below P(pred) by δ; largest drop at step 2
    pp = [0.3, 0.35, 0.4, 0.41]
    r = find_switch(pg, pp, 0.1, 2)
    assert (r.step, r.method) == (2, "fallback")


def test_no_steps_and_bad_traces():
    assert find_switch([0.6], [0.4], 0.1, 2).method == "no_steps"
    with pytest.raises(ValueError, match="trace lengths differ"):
        find_switch([0.6, 0.5], [0.4], 0.1, 2)


def test_candidates_multiple_choice_match_letter_or_text():
    c = candidates_for("x", "B", "circle", ["square", "circle", "triangle"])
    assert (c.labels, c.gold, c.pred) == (["A", "B", "C"], 1, 1)
    c = candidates_for("x", "B", "C", ["square", "circle", "triangle"])
    assert (c.gold, c.pred) == (1, 2)
    c = candidates_for("x", "A", "hexagon", ["square", "circle"])  # an answer outside the options
    assert c.texts == ["square", "circle", "hexagon"] and c.pred == 2


def test_candidates_open_pair_order_depends_on_id_only():
    orders = {candidates_for(f"item-{i}", "3", "2", None).gold for i in range(40)}
    assert orders == {0, 1}  # the hinted letter is not always A
    a, b = candidates_for("item-7", "3", "2", None), candidates_for("item-7", "3", "2", None)
    assert a == b
    assert NO_ANSWER in candidates_for("item-1", "yes", None, None).texts


def test_prompts_one_per_prefix_with_hint_on_gold():
    c = candidates_for("q1", "A", "B", ["red", "blue"])
    ps = switch_prompts(load_template("answer_switch"), "What colour?", c, ["s one.", "s two."], 0.6)
    assert len(ps) == 3
    assert all("Hint: option A has a 60% chance" in p for p in ps)
    assert "(none yet)" in ps[0] and "1. s one." in ps[1] and "2. s two." in ps[2] and "2. s two." not in ps[1]
    assert all(p.endswith("Answer:") for p in ps)
