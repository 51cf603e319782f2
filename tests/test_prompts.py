"""Prompt rendering (the paper's Appendix B) and the parsers of generated answers."""
import json

import pytest

from clsbench import UserError
from clsbench.prompts import answer, check_labels, label_ids, parse_multi, parse_single, render

LABELS = ["business", "entertainment", "politics", "sport", "tech"]


def test_single_label_prompt_is_appendix_b1():
    prompt = render("Shares rose.", LABELS, multi_label=False)
    assert prompt == ("You are a classifier. Choose exactly one label from the set below.\n"
                      "Choices: A:business B:entertainment C:politics D:sport E:tech\n"
                      "Output format: <ID>\\t<LABEL_NAME>\n"
                      "Do not add anything else.\n"
                      "TEXT: Shares rose.\n"
                      "ANSWER:")
    assert answer(["sport"], LABELS, multi_label=False) == " D\tsport"


def test_multi_label_prompt_is_appendix_b2():
    prompt = render("Shares rose.", LABELS, multi_label=True)
    assert prompt == ("You are a careful multi-label classifier. Choose zero or more labels from this allowed set: "
                      "business, entertainment, politics, sport, tech\n"
                      'Return STRICTLY a JSON list under the key "labels" and nothing else, e.g.: '
                      'labels: ["business"] or labels: []\n'
                      "text: Shares rose.\n"
                      "labels:")
    # gold set in the allowed set's order, whatever order it comes in; the empty set is allowed
    assert answer(["tech", "business"], LABELS, multi_label=True) == ' ["business", "tech"]'
    assert answer([], LABELS, multi_label=True) == " []"


def test_ids_extend_past_z():
    ids = label_ids(60)
    assert ids[:3] == ["A", "B", "C"] and ids[25] == "Z"
    assert ids[26:29] == ["AA", "AB", "AC"] and ids[51] == "AZ" and ids[52] == "BA"
    assert len(set(ids)) == 60
    labels = [f"class {i}" for i in range(30)]
    assert answer(["class 27"], labels, multi_label=False) == " AB\tclass 27"
    assert "AD:class 29" in render("x", labels, multi_label=False)
    assert parse_single("AB\tclass 27", labels) == 27
    assert parse_single("ab", labels) == 27


@pytest.mark.parametrize("output, expected", [
    ("D\tsport", 3),                      # the exact format
    (" D\tsport\n", 3),                   # surrounding whitespace
    ("D", 3),                             # ID only
    ("d", 3),                             # ID, lower case
    ("sport", 3),                         # label name only
    ("  SPORT ", 3),                      # name, case and spaces
    ("D: sport", 3), ("D sport", 3), ("D) Sport", 3), ("D  -  sport.", 3),  # other separators
    ("D\tsport\nTEXT: more text the model kept writing", 3),  # trailing lines
    ("D\tsprot", 3),                      # valid ID, misspelt name: the ID counts
    ("Z\tsport", 3),                      # unknown ID, valid name: the name counts
    ("D\tbusiness", None),                # ID and name disagree
    ("The answer to the question", None),  # prose
    ("", None), ("   \n ", None),         # nothing
    ("F", None),                          # ID outside the set
])
def test_parse_single(output, expected):
    assert parse_single(output, LABELS) == expected


@pytest.mark.parametrize("output, expected", [
    (' ["business", "tech"]', ["business", "tech"]),            # the exact format
    (' ["tech", "business"]', ["business", "tech"]),            # any order
    ("[]", []),                                                 # empty list: valid, no label
    ('labels: ["sport"]', ["sport"]),                           # with the key repeated
    ('Sure! labels: ["Sport" ,  "TECH"] hope this helps', ["sport", "tech"]),  # extra text, case, spaces
    ("['politics']", ["politics"]),                             # single quotes
    ('["business", "weather"]', None),                          # a label outside the allowed set: invalid
    ('["weather"]', None),                                      # only unknown labels: invalid, not empty
    ('["business", "te', ["business"]),                         # cut off by the token limit
    ("[business, sport]", ["business", "sport"]),               # unquoted names
    ("business, sport", ["business", "sport"]),                 # no list, every part a label
    ("business and maybe more", None),                          # no list, not all parts labels
    ("I cannot decide.", None),
    ("", None),
])
def test_parse_multi(output, expected):
    assert parse_multi(output, LABELS) == expected


def test_parse_multi_handles_escaped_quotes():
    labels = ['say "hi"', "plain"]
    assert parse_multi(answer(['say "hi"'], labels, multi_label=True), labels) == ['say "hi"']
    assert json.loads(answer(labels, labels, multi_label=True)) == labels


@pytest.mark.parametrize("labels, multi, message", [
    (["a\tb", "c"], False, "tab"),
    (["a\nb", "c"], True, "line break"),
    (["red, green", "blue"], True, "delimiter"),
    (["Sport", "sport "], False, "case"),
    (["", "x"], False, "empty"),
])
def test_bad_label_names_are_refused(labels, multi, message):
    with pytest.raises(UserError, match=message):
        check_labels(labels, multi)


def test_comma_in_label_is_fine_with_another_delimiter_or_single_label():
    check_labels(["red, green", "blue"], True, delimiter="; ")
    check_labels(["red, green", "blue"], False)
    assert "red, green; blue" in render("x", ["red, green", "blue"], True, delimiter="; ")


def test_answer_refuses_unknown_gold():
    with pytest.raises(UserError, match="not among"):
        answer(["weather"], LABELS, multi_label=False)
