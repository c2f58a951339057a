"""The hf backend on a tiny random Llama saved with save_pretrained, and the Teacher over it."""

import pytest
import torch

from mmtune.config import TeacherConfig
from mmtune.teacher import HFBackend, Teacher
from mmtune.teacher.prompts import load_template
from tests.tiny import make_tiny_llama

TEXTS = [load_template(n).text for n in ("answer_switch", "skill_analysis", "annotate", "which_step")] + [
    "counting objects; reading digits", "The square is in the top left cell.", "Answer: A B C yes no"] * 20


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("llama"), TEXTS)


@pytest.fixture(scope="module")
def backend(llama_dir):
    return HFBackend(llama_dir, batch_size=3, max_new_tokens=8)


def _manual_logprob(b: HFBackend, prompt: str, option: str) -> float:
    ctx = b._context_ids(prompt)
    cont = b._ids(" " + option)
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(b.model(input_ids=ids).logits.float(), -1)[0]
    return sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))


def test_score_options_are_continuation_logprobs(backend):
    prompts = ["Question: Is it red?\nAnswer:", "Which shape?\nA. square B. circle\nAnswer:"]
    options = [["yes", "no"], ["A", "B", "top left cell"]]  # one- and multi-token options
    got = backend.score_options(prompts, options)
    assert [len(g) for g in got] == [2, 3]
    for p, opts, scores in zip(prompts, options, got):
        for o, s in zip(opts, scores):
            assert s == pytest.approx(_manual_logprob(backend, p, o), abs=1e-4)
            assert s < 0


def test_scores_do_not_depend_on_batching(llama_dir):
    prompts = ["short?\nAnswer:", "a much longer prompt with many more words in it?\nAnswer:", "mid length\nAnswer:"]
    options = [["A", "B"]] * 3
    one = HFBackend(llama_dir, batch_size=1).score_options(prompts, options)
    many = HFBackend(llama_dir, batch_size=16).score_options(prompts, options)
    for a, b in zip(one, many):  # padding never leaks into a score
        assert a == pytest.approx(b, abs=1e-4)


def test_generate_left_pads_consistently(llama_dir):
    prompts = ["Skill:", "List the general skills this example exercises.\nSkills:"]
    one = HFBackend(llama_dir, batch_size=1, max_new_tokens=6).generate(prompts)
    many = HFBackend(llama_dir, batch_size=8, max_new_tokens=6).generate(prompts)
    assert one == many and all(isinstance(t, str) for t in one)


def test_option_count_mismatch_and_chat_template_errors(backend, llama_dir):
    with pytest.raises(ValueError, match="option lists"):
        backend.score_options(["a"], [["A"], ["B"]])
    with pytest.raises(ValueError, match="no chat template"):
        HFBackend(llama_dir, chat_template="always")
    assert not backend.use_chat


def test_next_token_top_is_sorted(backend):
    (top,) = backend.next_token_top(["Answer:"], 5)
    assert len(top) == 5 and [lp for _, lp in top] == sorted((lp for _, lp in top), reverse=True)


class CountingBackend(HFBackend):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.generate_calls = 0

    def generate(self, prompts, max_new_tokens=None, temperature=0.0):
        self.generate_calls += 1
        return super().generate(prompts, max_new_tokens, temperature)


def test_teacher_records_every_item(llama_dir):
    """A random model's replies are garbage: every item still comes back, unparsed ones with
    their raw text after the configured re-asks, and an item with no steps is skipped."""
    cfg = TeacherConfig(parse_retries=2)
    b = CountingBackend(llama_dir, batch_size=4, max_new_tokens=6)
    t = Teacher(b, cfg)
    items = [
        {"id": "a", "question": "Is the square red?", "steps": ["The square is in the top left cell.",
                                                                 "The object in the top left cell is blue."],
         "prediction": "no", "gold": "yes", "options": None},
        {"id": "b", "question": "Which shape?\nA. square B. circle", "steps": ["It is a circle."],
         "prediction": "B", "gold": "A", "options": ["square", "circle"]},
        {"id": "c", "question": "How many?", "steps": [], "prediction": None, "gold": "3", "options": None},
    ]
    out = t.analyse(items)
    assert [a.id for a in out] == ["a", "b", "c"]
    assert out[2].status == "skipped" and "no reasoning steps" in out[2].reason
    for a, it in zip(out[:2], items[:2]):
        assert 1 <= a.mistake_step <= len(it["steps"])
        assert len(a.switch_trace["p_gold"]) == len(it["steps"]) + 1
        assert all(0 <= p <= 1 for p in a.switch_trace["p_gold"] + a.switch_trace["p_pred"])
        assert a.status in ("ok", "unparsed")
        if a.status == "unparsed":
            assert "3 attempt(s)" in a.reason
        assert a.prompts == {"locate": "answer_switch.v1", "skill": "skill_analysis.v1"}
    unparsed = sum(a.status == "unparsed" for a in out[:2])
    assert b.generate_calls == 1 + (2 if unparsed else 0)  # re-asks happen only for unparsed replies


def test_teacher_locate_alternatives(backend):
    t = Teacher(backend, TeacherConfig())
    items = [{"id": str(i), "question": "q?", "steps": ["s1.", "s2.", "s3."], "prediction": "x", "gold": "y",
              "options": None} for i in range(6)]
    steps, methods, _ = t.locate(items, "random", seed=1)
    assert all(1 <= s <= 3 for s in steps) and set(methods) == {"random"}
    assert t.locate(items, "random", seed=1)[0] == steps  # seeded
    steps, methods, traces = t.locate(items, "which_step")
    assert all(s is None or 1 <= s <= 3 for s in steps) and all("raw" in tr for tr in traces)
    with pytest.raises(ValueError, match="unknown localisation"):
        t.locate(items, "oracle")
    texts = Teacher(backend, TeacherConfig(score_candidates="text")).answer_switch(items[:1])
    assert texts[0][0].step in (1, 2, 3)


@pytest.mark.gpu
def test_hf_backend_on_gpu_matches_cpu(llama_dir):
    """GPU path: the backend moves to CUDA in bf16 and ranks options as on the CPU."""
    gpu = HFBackend(llama_dir, device="cuda")
    assert next(gpu.model.parameters()).is_cuda and next(gpu.model.parameters()).dtype == torch.bfloat16
    cpu = HFBackend(llama_dir, device="cpu")
    prompts, options = ["Is it red?\nAnswer:"] * 2, [["yes", "no"], ["A", "B"]]
    for g, c in zip(gpu.score_options(prompts, options), cpu.score_options(prompts, options)):
        assert g == pytest.approx(c, abs=0.1)
    assert len(gpu.generate(["Skill:"])) == 1
