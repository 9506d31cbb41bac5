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
    assert T.arc_hub(arc_hub, "x") == T.arc_local(arc_local, "x")

    piqa_hub = {"goal": "Open a jar", "sol1": "twist", "sol2": "pull", "label": 0}
    piqa_local = {"query": "Question: Open a jar\n", "choices": ["twist", "pull"], "gold": 0}
    assert T.piqa_hub(piqa_hub, "x") == T.piqa_local(piqa_local, "x")

    obqa_hub = {"question_stem": "Predators eat", "answerKey": "C",
                "choices": {"text": ["lions", "humans", "bunnies", "grass"],
                            "label": ["A", "B", "C", "D"]}}
    obqa_local = {"query": "Predators eat", "choices": ["lions", "humans", "bunnies", "grass"],
                  "gold": 2}
    assert T.obqa_hub(obqa_hub, "x") == T.obqa_local(obqa_local, "x")

    wg_hub = {"sentence": "Sarah was better than Maria so _ got the easy cases.",
              "option1": "Sarah", "option2": "Maria", "answer": "2"}
    wg_local = {"context_options": ["Sarah was better than Maria so Sarah",
                                    "Sarah was better than Maria so Maria"],
                "continuation": "got the easy cases.", "gold": 1}
    assert T.winogrande_hub(wg_hub, "x") == T.winogrande_local(wg_local, "x")

    hs_hub = {"activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.",
              "ctx_b": "he", "endings": ["is [title] here.", "b"], "label": "1"}
    hs_local = {"ctx": "Roof shingle removal: A man is sitting on a roof. he",
                "endings": ["is [title] here.", "b"], "label": 1}
    assert T.hellaswag_hub(hs_hub, "x") == T.hellaswag_local(hs_local, "x")
    assert T.hellaswag_hub(hs_hub, "x").choices[0] == "is. here."

    lam_hub = {"text": "he looked at the sky"}
    lam_local = {"context": "he looked at the", "continuation": "sky"}
    assert T.lambada_hub(lam_hub, "x") == T.lambada_local(lam_local, "x")


def test_hellaswag_tail_rule():
    cap = T.hellaswag_capitalise_tail
    assert cap("Label: One thing. the Man") == "Label: One thing. The man"  # as str.capitalize
    assert cap("Label: Full sentence. Another one.") == "Label: Full sentence. Another one."
    assert cap("Label: no sentence end here") == "Label: no sentence end here"


def test_load_hub_uses_datasets(monkeypatch):
    import datasets

    record = {"goal": "Open a jar", "sol1": "twist", "sol2": "pull", "label": 1}
    calls = []

    def fake_load(path, name=None, split=None):
        calls.append((path, name, split))
        return [record, record]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    examples = T.load_examples("piqa", source="hub", limit=1)
    assert calls == [("baber/piqa", None, "validation")]
    assert len(examples) == 1 and examples[0].gold == 1


@pytest.mark.parametrize("name,hub,record", [
    ("sciq", ("allenai/sciq", None, "test"),
     {"question": "q", "distractor1": "a", "distractor2": "b", "distractor3": "c",
      "correct_answer": "d", "support": "s"}),
    ("logiqa", ("EleutherAI/logiqa", "logiqa", "test"),
     {"label": "b", "context": "p", "question": "q", "options": ["1", "2", "3", "4"]}),
])
def test_sciq_and_logiqa_read_the_hub_datasets(monkeypatch, name, hub, record):
    import datasets

    calls = []

    def fake_load(path, name=None, split=None):
        calls.append((path, name, split))
        return [record] * 3

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    examples = T.load_examples(name, source="hub", limit=2)
    assert calls == [hub] and len(examples) == 2
    assert examples[0] == getattr(T, f"{name}_hub")(record, "x")


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


# ---------------------------------------------------------------- SciQ and LogiQA

LOGIQA_TEXT = (
    "\nb\nThe park.These two areas are north.Road No.1 is 7.3 km long. Done\n"
    "Which follows?\nA.North of the park\nB The leisure area.\nC?20-year-old clerk\n"
    "When the land is dry\n"
    "\nd\nSecond passage\nSecond question\nA.one\nB.two\nC.three\nD.four\n")


def test_logiqa_text_is_read_like_the_hub_loader(tmp_path):
    path = tmp_path / "Test.txt"
    path.write_text(LOGIQA_TEXT)
    (rec, where), (rec2, where2) = list(T.read_logiqa_text(path))
    assert where.endswith("Test.txt:2") and where2.endswith("Test.txt:10")
    assert rec["label"] == "b"
    # A space after every "." (also "No. 1", "7. 3", and a double space where one was already).
    assert rec["context"] == "The park. These two areas are north. Road No. 1 is 7. 3 km long.  Done"
    assert rec["question"] == "Which follows?"
    # The first two characters of every option line go, whatever they are.
    assert rec["options"] == ["North of the park", "The leisure area.", "20-year-old clerk",
                              "en the land is dry"]
    ex = T.logiqa_hub(rec, where)
    assert ex.gold == 1 and ex.choices == tuple(rec["options"])
    assert ex.pairs[0] == (
        "Passage: The park. These two areas are north. Road No. 1 is 7. 3 km long.  Done\n"
        "Question: Which follows?\nChoices:\nA. North of the park\nB. The leisure area.\n"
        "C. 20-year-old clerk\nD. en the land is dry\nAnswer:", " North of the park")
    assert T.logiqa_hub(rec2, where2).gold == 3


def test_sciq_record_follows_lm_eval():
    rec = {"question": "What is H2O?", "distractor1": "salt", "distractor2": "air",
           "distractor3": "fire", "correct_answer": "water", "support": "  Water is H2O."}
    ex = T.sciq_hub(rec, "x")
    assert ex.pairs[0] == ("Water is H2O.\nQuestion: What is H2O?\nAnswer:", " salt")
    assert [c for _, c in ex.pairs] == [" salt", " air", " fire", " water"] and ex.gold == 3
    empty = T.sciq_hub({**rec, "support": ""}, "x")
    assert empty.pairs[0][0] == "\nQuestion: What is H2O?\nAnswer:"  # lm-eval keeps the "\n"


@pytest.mark.shared_data
def test_real_sciq_and_logiqa_files(shared_data):
    sciq = T.load_examples("sciq", data_dir=shared_data)
    assert len(sciq) == 1000 and {ex.gold for ex in sciq} == {3}
    assert sciq[0].pairs[0][0].startswith("Oxidants and Reductants Compounds that are capable")
    assert sciq[0].pairs[0][0].endswith("saylor. org/books.\nQuestion: Compounds that are "
                                        "capable of accepting electrons, such as o 2 or f2, are "
                                        "called what?\nAnswer:")
    assert [c for _, c in sciq[0].pairs] == [" antioxidants", " Oxygen", " residues", " oxidants"]
    assert sciq[35].pairs[0][0].startswith("\nQuestion: ")  # empty support

    logiqa = T.load_examples("logiqa", data_dir=shared_data)
    assert len(logiqa) == 651
    assert [sum(ex.gold == g for ex in logiqa) for g in range(4)] == [132, 159, 179, 181]
    first = logiqa[0]
    assert first.pairs[0][0].startswith(
        "Passage: In the planning of a new district in a township, it was decided to build a "
        "special community in the southeast, northwest, centered on the citizen park. These "
        "four communities")
    assert first.pairs[0][0].endswith(
        "\nQuestion: Based on the above statement, which of the following can be derived?\n"
        "Choices:\nA. Civic Park is north of the administrative service area\nB. The leisure "
        "area is southwest of the cultural area\nC. The cultural district is in the northeast "
        "of the business district\nD. The business district is southeast of the leisure area"
        "\nAnswer:")
    assert logiqa[1].choices[0] == "20-year-old accountant, 20-year-old salesperson, " \
                                   "24-year-old salesperson"  # whole, unlike llm-foundry's copy
    assert logiqa[2].choices[:2] == ("No dangshen", "No Shouwu")  # "A " prefixes cut too


@pytest.mark.parametrize("content,suffix,match", [
    ('{"question": "q"}', "test.json", r"test.json: expected a JSON array of records, got dict"),
    ('[{"question": "q"}]', "test.json", r"test.json\[0\]: missing field 'support'"),
    ('[{"question": "q", "distractor1": 1, "distractor2": "b", "distractor3": "c", '
     '"correct_answer": "d", "support": ""}]', "test.json",
     r"test.json\[0\]: field 'distractor1' should be str, got int"),
    ('[1, 2]', "test.json", r"test.json\[0\]: expected a JSON object, got int"),
    ('[{"question": ', "test.json", r"test.json: not valid JSON"),
    ("\na\npassage\nquestion\n", "Test.txt", r"Test.txt:2: a LogiQA question needs .* 3 lines"),
    ("\ne\np\nq\nA.1\nB.2\nC.3\nD.4\n", "Test.txt", r"Test.txt:2: field 'label' = 'e'"),
    ("\na\np\nq\nA.1\nB.2\nC.3\nD.4\nE.5\n", "Test.txt",
     r"Test.txt:2: field 'options' should be a list of 4 strings"),
])
def test_bad_sciq_and_logiqa_files_name_file_and_field(tmp_path, content, suffix, match):
    path = tmp_path / suffix
    path.write_text(content)
    task = T.get_task("sciq" if suffix == "test.json" else "logiqa")
    with pytest.raises(GrowlmError, match=match) as err:
        T.load_local(task, path=path)
    assert len(str(err.value).splitlines()) == 1
