"""The tokeniser's definition (train/vocab.py), which the C engine implements too (engine/text.c,
tests/test_request.c): words split at exactly the characters str.isspace() is true for, only A-Z
lowercased."""
from train.vocab import UNK, WHITESPACE, Vocab, split, words

# the list docs/SERVER.md gives and engine/text.c vt_is_space tests
SPACES = [0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x1F, 0x20, 0x85, 0xA0, 0x1680,
          *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000]


def test_whitespace_is_what_str_split_splits_on():
    assert sorted(map(ord, WHITESPACE)) == SPACES
    assert [c for c in range(0x110000) if chr(c).isspace()] == SPACES
    for c in range(0x110000):
        if 0xD800 <= c <= 0xDFFF:
            continue
        text = "scented%sscarf" % chr(c)
        assert split(text) == text.split(), hex(c)


def test_words_lowercase_ascii_only():
    assert words("Scented\u001fSCARF") == ["scented", "scarf"]
    assert words("\u3000 wool\u00a0\u2028\x1c Scarf\x85") == ["wool", "scarf"]
    assert words("\u00c9T\u00c9 \u0130") == ["\u00c9t\u00c9", "\u0130"]  # not str.lower()
    assert split("") == [] and words(" \t\n") == []


def test_encode_splits_on_every_space():
    v = Vocab(["scarf", "scented"])
    for c in SPACES:
        assert v.encode("Scented%sscarf" % chr(c)) == [v.stoi["scented"], v.stoi["scarf"]]
    assert v.encode("scented\u200bscarf") == [UNK]  # a zero-width space is not whitespace
