import pytest

from growlm.errors import GrowlmError
from growlm.sft.template import ALPACA, PLAIN, Segment, Template, load_template


def test_alpaca_with_and_without_input():
    with_input = ALPACA.render_alpaca("Add the numbers.", "2 and 3", "5")
    assert with_input[1] == Segment("5", True)
    assert not with_input[0].train
    assert (
        "### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3\n\n### Response:\n"
        in with_input[0].text
    )
    without = ALPACA.render_alpaca("Say hi.", "", "hi")
    assert "### Input" not in without[0].text
    assert without[0].text.endswith("### Instruction:\nSay hi.\n\n### Response:\n")


def test_one_turn_chat_renders_like_an_alpaca_record():
    chat = ALPACA.render_chat([("user", "Say hi."), ("assistant", "hi")])
    assert chat == ALPACA.render_alpaca("Say hi.", "", "hi")
    assert ALPACA.chat_prompt("Say hi.") == ALPACA.prompt_text("Say hi.")


def test_multi_turn_chat_trains_only_assistant_words():
    segs = PLAIN.render_chat(
        [
            ("system", "Be brief."),
            ("user", "a?"),
            ("assistant", "A"),
            ("user", "b?"),
            ("assistant", "B"),
        ]
    )
    assert [s.train for s in segs] == [False, True, False, True]
    assert segs[0].text == "Be brief.\n\n### Instruction:\na?\n\n### Response:\n"
    assert segs[1].text == "A" and segs[3].text == "B"
    assert segs[2].text == "### Instruction:\nb?\n\n### Response:\n"


def test_literal_braces_and_text_after_content():
    t = Template(
        name="t",
        prompt="{{x}} {instruction} {input}",
        prompt_no_input="{{x}} {instruction}",
        assistant="<a>{content}</a>",
        user="{content}|",
    )
    assert t.prompt_text("q") == "{x} q"
    segs = t.render_chat([("user", "u"), ("assistant", "{raw}")])
    assert segs == [Segment("u|<a>", False), Segment("{raw}</a>", True)]


@pytest.mark.parametrize(
    "field,text,placeholder",
    [
        ("prompt", "{instruction} {input} {question}", "{question}"),
        ("prompt_no_input", "{instruction} {input}", "{input}"),
        ("response", "{answer}", "{answer}"),
        ("user", "{content} {name}", "{name}"),
    ],
)
def test_unknown_placeholder_is_named(field, text, placeholder):
    fields = {
        "name": "bad",
        "prompt": "{instruction}{input}",
        "prompt_no_input": "{instruction}",
        field: text,
    }
    with pytest.raises(
        GrowlmError,
        match=f"{field}: unknown placeholder {placeholder}",
    ):
        Template(**fields)


def test_missing_and_malformed_placeholders():
    with pytest.raises(GrowlmError, match=r"missing placeholder \{output\}"):
        Template(
            name="t", prompt="{instruction}{input}", prompt_no_input="{instruction}", response="ok"
        )
    with pytest.raises(GrowlmError, match="malformed template"):
        Template(name="t", prompt="{instruction", prompt_no_input="{instruction}")
    with pytest.raises(GrowlmError, match="exactly once"):
        Template(
            name="t",
            prompt="{instruction}{input}",
            prompt_no_input="{instruction}",
            assistant="{content}{content}",
        )


def test_template_from_toml(kit, tmp_path, qa_toml):
    assert load_template(str(qa_toml)).prompt_text("hi") == kit.QA.prompt_text("hi")
    assert load_template("alpaca") is ALPACA
    table = tmp_path / "table.toml"
    table.write_text('[template]\nprompt_no_input = "> {instruction}\\n"\n')
    t = load_template(str(table))
    assert t.prompt_text("hi") == "> hi\n"
    assert t.prompt == ALPACA.prompt  # keys not given keep the alpaca value


def test_toml_template_errors_name_file_and_placeholder(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('prompt_no_input = "{instruction} {topic}"\n')
    with pytest.raises(
        GrowlmError, match=r"bad\.toml.*prompt_no_input.*unknown placeholder \{topic\}"
    ):
        load_template(str(bad))
    bad.write_text('promt = "{instruction}"\n')
    with pytest.raises(GrowlmError, match="unknown template key 'promt'"):
        load_template(str(bad))
    with pytest.raises(GrowlmError, match="not a built-in"):
        load_template("no-such-template")
    with pytest.raises(GrowlmError, match=r"sft\.template.*unknown placeholder \{x\}"):
        load_template({"response": "{x}"})
