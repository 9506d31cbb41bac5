import json

import pytest

from growlm.errors import GrowlmError
from growlm.eval import tasks as T


def first(name, shared_data, n=3):
    return T.load_examples(name, data_dir=shared_data, limit=n)


@pytest.mark.shared_data
def test_local_prompts_follow_lm_eval_templates(shared_data):
    arc = first("arc_easy", shared_data)[0]
    assert arc.pairs[0][0] == ("Question: Which statement best explains why photosynthesis is "
                               "the foundation of most food webs?\nAnswer:")
    assert arc.pairs[0][1] == " Sunlight is the source of energy for nearly all ecosystems."
    assert arc.gold == 0 and len(arc.pairs) == 4 and arc.choices[0].startswith("Sunlight")

    piqa = first("piqa", shared_data)[0]
    assert piqa.pairs[0][0] == ("Question: How do I ready a guinea pig cage for it's new "
                                "occupants?\nAnswer:")

    obqa = first("openbookqa", shared_data)[0]
    assert obqa.pairs[1] == (obqa.pairs[1][0], " quit eating lunch out") and obqa.gold == 1

    hs = first("hellaswag", shared_data, 2)
    # lm-eval capitalises ctx_b ("he" → "He"); the local file has it lower-case.
    assert hs[0].pairs[0][0] == "Roof shingle removal: A man is sitting on a roof. He"
    assert hs[1].pairs[0][0].endswith("grabs the pole. The lady") and hs[0].gold == 3

    wg = first("winogrande", shared_data)[0]
    assert wg.pairs == (("Sarah was a much better surgeon than Maria so Sarah",
                         " always got the easier cases."),
                        ("Sarah was a much better surgeon than Maria so Maria",
                         " always got the easier cases."))
    assert wg.gold == 1

    lam = first("lambada", shared_data)[0]
    assert lam.pairs[0][1] == " signs" and lam.pairs[0][0].endswith("I don't care about")


@pytest.mark.shared_data
def test_limit_and_full_sizes(shared_data):
    assert len(first("arc_challenge", shared_data, 7)) == 7
    assert len(T.load_examples("openbookqa", data_dir=shared_data)) == 500


def test_hub_records_convert_like_local_ones():
    arc_hub = {"question": "What is 2+2?", "answerKey": "B",
               "choices": {"text": ["3", "4", "5"], "label": ["A", "B", "C"]}}
    arc_local = {"query": "Question: What is 2+2?", "choices": ["3", "4", "5"], "gold": 1}
    assert T.arc_hf(arc_hub, "x") == T.arc_local(arc_local, "x")

    piqa_hub = {"goal": "Open a jar", "sol1": "twist", "sol2": "pull", "label": 0}
    piqa_local = {"query": "Question: Open a jar\n", "choices": ["twist", "pull"], "gold": 0}
    assert T.piqa_hf(piqa_hub, "x") == T.piqa_local(piqa_local, "x")

    obqa_hub = {"question_stem": "Predators eat", "answerKey": "C",
                "choices": {"text": ["lions", "humans", "bunnies", "grass"],
                            "label": ["A", "B", "C", "D"]}}
    obqa_local = {"query": "Predators eat", "choices": ["lions", "humans", "bunnies", "grass"],
                  "gold": 2}
    assert T.obqa_hf(obqa_hub, "x") == T.obqa_local(obqa_local, "x")

    wg_hub = {"sentence": "Sarah was better than Maria so _ got the easy cases.",
              "option1": "Sarah", "option2": "Maria", "answer": "2"}
    wg_local = {"context_options": ["Sarah was better than Maria so Sarah",
                                    "Sarah was better than Maria so Maria"],
                "continuation": "got the easy cases.", "gold": 1}
    assert T.winogrande_hf(wg_hub, "x") == T.winogrande_local(wg_local, "x")

    hs_hub = {"activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.",
              "ctx_b": "he", "endings": ["is [title] here.", "b"], "label": "1"}
    hs_local = {"ctx": "Roof shingle removal: A man is sitting on a roof. he",
                "endings": ["is [title] here.", "b"], "label": 1}
    assert T.hellaswag_hf(hs_hub, "x") == T.hellaswag_local(hs_local, "x")
    assert T.hellaswag_hf(hs_hub, "x").choices[0] == "is. here."

    lam_hub = {"text": "he looked at the sky"}
    lam_local = {"context": "he looked at the", "continuation": "sky"}
    assert T.lambada_hf(lam_hub, "x") == T.lambada_local(lam_local, "x")


def test_hellaswag_tail_rule():
    cap = T.hellaswag_capitalise_tail
    assert cap("Label: One thing. the Man") == "Label: One thing. The man"  # as str.capitalize
    assert cap("Label: Full sentence. Another one.") == "Label: Full sentence. Another one."
    assert cap("Label: no sentence end here") == "Label: no sentence end here"


def test_load_hf_uses_datasets(monkeypatch):
    import datasets

    record = {"goal": "Open a jar", "sol1": "twist", "sol2": "pull", "label": 1}
    calls = []

    def fake_load(path, name=None, split=None):
        calls.append((path, name, split))
        return [record, record]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    examples = T.load_examples("piqa", source="hf", limit=1)
    assert calls == [("baber/piqa", None, "validation")]
    assert len(examples) == 1 and examples[0].gold == 1


def test_unknown_task_lists_allowed():
    with pytest.raises(GrowlmError, match="unknown zero-shot task 'squad'.*arc_easy"):
        T.get_task("squad")


@pytest.mark.parametrize("record,field", [
    ({"query": "Question: q", "gold": 0}, "choices"),
    ({"query": "Question: q", "choices": ["a", "b"], "gold": "x"}, "gold"),
    ({"query": "Question: q", "choices": ["a", "b"], "gold": 5}, "gold"),
    ({"query": 3, "choices": ["a", "b"], "gold": 0}, "query"),
])
def test_bad_local_file_names_file_and_field(tmp_path, record, field):
    path = tmp_path / "arc.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(GrowlmError) as err:
        T.load_local(T.get_task("arc_easy"), path=path)
    assert "arc.jsonl:1" in str(err.value) and repr(field) in str(err.value)


def test_not_json_and_missing_file(tmp_path):
    path = tmp_path / "piqa.jsonl"
    path.write_text("{not json\n")
    with pytest.raises(GrowlmError, match="piqa.jsonl:1: not valid JSON"):
        T.load_local(T.get_task("piqa"), path=path)
    with pytest.raises(GrowlmError, match="not found"):
        T.load_local(T.get_task("piqa"), path=tmp_path / "missing.jsonl")
    with pytest.raises(GrowlmError, match="--data-dir"):
        T.load_local(T.get_task("piqa"))
