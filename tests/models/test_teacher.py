"""Teacher: class-phrase matching, the teacher scores t(r, p), the distillation mask."""

import copy

import pytest
import torch

from lightning_wsg.models import Teacher
from lightning_wsg.models.teacher import head_word, phrase_texts, singular_forms

CLASSES = ["ball", "car", "dog"]


@pytest.fixture(scope="module", params=["lexical", "glove", "minilm"])
def teacher(request):
    return Teacher(matching=request.param)


def test_red_ball_matches_ball(teacher):
    m = teacher.match(CLASSES, ["the red ball", "two dogs"])
    assert m[:, 0].argmax().item() == 0 and m[0, 0] == pytest.approx(1.0)
    assert m[:, 1].argmax().item() == 2


def test_unmatched_phrase_gets_no_distillation(teacher):
    t, kd = teacher(
        [["the red ball", "the cloudy sky"]],
        [CLASSES],
        scores=torch.tensor([[0.9, 0.8, 0.7]]),
        proposal_mask=torch.ones(1, 3, dtype=torch.bool),
    )
    assert kd.tolist() == [[True, False]]
    assert t[0, 0].argmax().item() == 0


def test_no_parameters_and_empty_state_dict(teacher):
    teacher([["a dog"]], [CLASSES], scores=torch.ones(1, 3), proposal_mask=torch.ones(1, 3, dtype=torch.bool))
    assert list(teacher.parameters()) == [] and list(teacher.buffers()) == []
    assert teacher.state_dict() == {}
    clone = copy.deepcopy(teacher)  # caches and embeddings are not copied, reloaded lazily
    assert clone._embedder is None


@pytest.mark.parametrize(("matching", "phrase", "cls"), [("glove", "a bike", "bicycle"), ("minilm", "a puppy", "dog")])
def test_embedding_matching_finds_synonyms(matching, phrase, cls):
    m = Teacher(matching).similarity(["bicycle", "car", "dog", "tree"], [phrase])[:, 0]
    assert ["bicycle", "car", "dog", "tree"][m.argmax()] == cls
    assert Teacher("lexical").similarity([cls], [phrase]).item() == 0.0


def test_head_noun_and_naive_singular():
    assert head_word("Two young , White males .") == "males"
    assert head_word(", .") is None
    assert "bush" in singular_forms("bushes") and "horse" in singular_forms("horses")
    assert "man" in singular_forms("men")
    lexical = Teacher("lexical")
    m = lexical.similarity(
        ["sports ball", "person", "traffic_light", "bush"], ["sports balls", "people", "traffic lights", "bushes"]
    )
    torch.testing.assert_close(m, torch.eye(4))
    # class names are matched whole: "a dog" is no "hot dog", "balls" no "sports ball"
    m = lexical.similarity(["hot dog", "teddy bear", "sports ball", "dog"], ["a dog", "a bear", "balls"])
    torch.testing.assert_close(m, torch.tensor([[0.0, 0, 0], [0, 0, 0], [0, 0, 0], [1, 0, 0]]))


def test_teacher_scores_from_top1_labels_by_hand():
    teacher = Teacher("lexical")
    labels = [["ball", "dog", "car"], ["dog", "dog"]]
    scores = torch.tensor([[0.9, 0.5, 0.7], [0.6, 0.6, 0.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    texts = [["a dog", "the balls"], ["the dog"]]
    t, kd = teacher(texts, labels, scores, mask)
    expected = torch.tensor(
        [
            [[0.0, 0.5, 0.0], [0.9, 0.0, 0.0]],
            [[0.6, 0.6, 0.0], [0.0, 0.0, 0.0]],
        ]
    )
    torch.testing.assert_close(t, expected)
    # image 1: both boxes are equally scored dogs, a flat teacher: no distillation; padding phrase: none
    assert kd.tolist() == [[True, True], [False, False]]


def test_teacher_scores_from_class_probs_by_hand():
    teacher = Teacher("glove")
    names = ["ball", "dog", "car", "bicycle"]
    probs = torch.tensor([[[0.7, 0.1, 0.1, 0.1], [0.1, 0.2, 0.1, 0.6], [0.0, 0.0, 0.0, 0.0]]])
    texts = [["a bike", "the red ball", "the cloudy sky"]]
    m = teacher.match(names, texts[0])  # [C, P]
    t, kd = teacher(texts, None, torch.zeros(1, 3), torch.tensor([[True, True, False]]), probs, names)
    expected = torch.einsum("rc,cp->pr", probs[0], m)
    torch.testing.assert_close(t[0], expected)
    assert 0 < m[3, 0] < 1  # soft: bike ~ bicycle, rescaled above min_match
    assert t[0, 0].argmax() == 1 and t[0, 1].argmax() == 0
    assert kd.tolist() == [[True, True, False]]


# three boxes x three classes ("person", "dog", "car"): rows sum to at most 1 (the rest: background)
HAND_CLASSES = ["person", "dog", "car"]
HAND_PROBS = torch.tensor(
    [
        [0.70, 0.20, 0.05],  # box 0: top-1 person
        [0.30, 0.60, 0.00],  # box 1: top-1 dog, yet 0.30 of it is person
        [0.10, 0.05, 0.80],  # box 2: top-1 car
    ]
)
HAND_PHRASES = ["a woman", "the puppy", "a red car", "the sky"]


def test_teacher_from_class_probs_wordnet_by_hand():
    """t(r, p) = sum_c P(c | r) m(c, p), every box's whole row read, not only its top-1 label."""
    # WordNet: woman -> person (2 steps), puppy -> dog (1), car -> car; sky reaches no class.
    # m(c, p) = 1 for the nearest class of each phrase: the identity on the first three phrases.
    # Image 1: two real boxes equally "dog" (a flat teacher) and a padding box with a row of its own.
    probs = torch.stack([HAND_PROBS, torch.tensor([[0.1, 0.5, 0.2], [0.3, 0.5, 0.0], [0.0, 0.9, 0.1]])])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    texts = [HAND_PHRASES, ["two dogs"]]
    t, kd = Teacher("wordnet")(texts, None, torch.zeros(2, 3), mask, probs, HAND_CLASSES)
    expected = torch.tensor(
        [
            [
                [0.70, 0.30, 0.10],  # a woman: P(person | r); box 1 (top-1 dog) still gives 0.30
                [0.20, 0.60, 0.05],  # the puppy: P(dog | r)
                [0.05, 0.00, 0.80],  # a red car: P(car | r)
                [0.00, 0.00, 0.00],  # the sky: no class
            ],
            [
                [0.50, 0.50, 0.00],  # two dogs: P(dog | r) on the real boxes, 0 on the padding box
                [0.00, 0.00, 0.00],  # padding phrases
                [0.00, 0.00, 0.00],
                [0.00, 0.00, 0.00],
            ],
        ]
    )
    torch.testing.assert_close(t, expected)
    assert kd.tolist() == [[True, True, True, False], [False, False, False, False]]  # flat "two dogs": none
    # the same boxes with top-1 labels only: box 1 is a dog, so "a woman" learns from box 0 alone
    labels = [["person", "dog", "car"]]
    top1, _ = Teacher("wordnet")([HAND_PHRASES], labels, torch.tensor([[0.70, 0.60, 0.80]]), mask[:1])
    torch.testing.assert_close(top1[0, 0], torch.tensor([0.70, 0.00, 0.00]))


def test_teacher_from_class_probs_lexical_by_hand():
    """Lexical matching: "a red car" ends in the class name car; woman and puppy name no class."""
    mask = torch.ones(1, 3, dtype=torch.bool)
    t, kd = Teacher("lexical")([HAND_PHRASES], None, torch.zeros(1, 3), mask, HAND_PROBS[None], HAND_CLASSES)
    expected = torch.tensor(
        [
            [0.00, 0.00, 0.00],  # a woman: no class called woman
            [0.00, 0.00, 0.00],  # the puppy: no class called puppy
            [0.05, 0.00, 0.80],  # a red car: P(car | r)
            [0.00, 0.00, 0.00],  # the sky
        ]
    )
    torch.testing.assert_close(t[0], expected)
    assert kd.tolist() == [[False, False, True, False]]


def test_rescale_off_gives_raw_cosines():
    raw = Teacher("glove", rescale=False)
    sim = raw.similarity(CLASSES, ["a puppy", "the red ball"])
    torch.testing.assert_close(raw.match(CLASSES, ["a puppy", "the red ball"]), sim.clamp(min=0))


def test_rescale_maps_min_match_to_zero_and_one_to_one():
    teacher = Teacher("glove", min_match=0.4)
    phrases = ["a puppy", "the red ball", "two dogs"]
    sim = teacher.similarity(CLASSES, phrases)
    assert ((sim > 0.4) & (sim < 1.0)).any() and (sim < 0.4).any()  # values on both sides of the threshold
    torch.testing.assert_close(teacher.match(CLASSES, phrases), ((sim - 0.4) / 0.6).clamp(0.0, 1.0))


def test_phrase_texts_helper():
    assert phrase_texts([["A", "man", "in", "a", "hat"]], [[(0, 2), (3, 5)]]) == [["A man", "a hat"]]


def test_inputs_are_checked():
    with pytest.raises(ValueError, match="unknown matching 'word2vec'"):
        Teacher("word2vec")
    with pytest.raises(ValueError, match="the teacher needs labels or class_probs"):
        Teacher("lexical")([["a dog"]], None, torch.ones(1, 1), torch.ones(1, 1, dtype=torch.bool))


def test_full_score_spreads_mass_over_every_confident_box_of_the_class():
    labels = [["ball", "ball", "ball", "dog"]]
    scores = torch.tensor([[0.9, 0.6, 0.25, 0.8]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    t, kd = Teacher("lexical", full_score=0.5)([["the red ball"]], labels, scores, mask)
    # both confident balls weigh 1 whatever the detector preferred; the weak one 0.25 / 0.5
    torch.testing.assert_close(t, torch.tensor([[[1.0, 1.0, 0.5, 0.0]]]))
    assert kd.tolist() == [[True]]
    raw, _ = Teacher("lexical")([["the red ball"]], labels, scores, mask)
    torch.testing.assert_close(raw, torch.tensor([[[0.9, 0.6, 0.25, 0.0]]]))
    with pytest.raises(ValueError, match="full_score"):
        Teacher("lexical", full_score=0.0)


def test_score_floor_lifts_every_box_of_the_class_above_the_rest():
    labels = [["ball", "ball", "dog"]]
    scores = torch.tensor([[0.9, 0.5, 0.8]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    t, _ = Teacher("lexical", score_floor=0.5)([["the red ball", "a dog"]], labels, scores, mask)
    # 0.5 + 0.5 * s on the class's boxes, 0 elsewhere
    torch.testing.assert_close(t, torch.tensor([[[0.95, 0.75, 0.0], [0.0, 0.0, 0.9]]]))
    with pytest.raises(ValueError, match="score_floor"):
        Teacher("lexical", score_floor=1.0)


@pytest.mark.parametrize("rescale", [False, True])
@pytest.mark.parametrize("matching", ["glove", "minilm"])
def test_kd_mask_reads_only_the_classes_of_the_phrases_own_image(matching, rescale):
    # "dog" is among the batch's class names (image 1 has a dog) but image 0 saw only cars:
    # there the phrase's best class is "car", below min_match, so it must not be distilled
    teacher = Teacher(matching, rescale=rescale)
    labels = [["car", "car"], ["dog", "car"]]
    scores = torch.tensor([[0.9, 0.5], [0.8, 0.3]])
    t, kd = teacher([["the dog"], ["the dog"]], labels, scores, torch.ones(2, 2, dtype=torch.bool))
    cos = teacher.similarity(["car"], ["the dog"]).item()
    assert 0.0 < cos < teacher.min_match  # a weak, positive similarity: not a match, yet not zero
    match = cos if not rescale else 0.0  # raw cosine, or rescaled below min_match to 0
    torch.testing.assert_close(t[:, 0], torch.tensor([[0.9 * match, 0.5 * match], [0.8, 0.3 * match]]))
    # without rescaling image 0's teacher is not flat (0.9 cos vs 0.5 cos): only the image's own
    # classes keep it out of the distillation
    assert kd.tolist() == [[False], [True]]


# ------------------------------------------------------------------ words, forms, arguments


def test_singular_forms_strip_s_and_es_only_from_words_long_enough():
    assert singular_forms("bus") == {"bus", "bu"}
    assert singular_forms("us") == {"us"}  # two letters: kept whole
    assert singular_forms("yes") == {"yes", "ye"}  # three letters: "es" is not stripped
    assert singular_forms("axes") == {"axes", "axe", "ax"}
    assert singular_forms("dog") == {"dog"}
    irregular = {"men": "man", "women": "woman", "children": "child", "people": "person", "feet": "foot",
                 "teeth": "tooth"}  # fmt: skip
    for plural, singular in irregular.items():
        assert singular_forms(plural) == {plural, singular}, plural


def test_words_keep_hyphens_and_apostrophes_inside_a_word():
    assert head_word("A man-made LAKE_side!") == "side"
    assert head_word("the children's") == "children's"
    assert head_word("the man - ") == "man"
    assert head_word("") is None
    assert phrase_texts([["a", "b", "c"], ["d"]], [[(0, 3), (1, 2)], []]) == [["a b c", "b"], []]


def test_lru_cache_evicts_the_least_recently_used_key():
    from collections import OrderedDict

    from lightning_wsg.models.teacher import _lru

    cache, calls = OrderedDict(), []

    def compute(key):
        calls.append(key)
        return key.upper()

    assert _lru(cache, "a", compute, max_size=2) == "A"
    assert _lru(cache, "b", compute, max_size=2) == "B"
    assert _lru(cache, "a", compute, max_size=2) == "A"  # cached; now the most recent
    assert _lru(cache, "c", compute, max_size=2) == "C"  # evicts b, the least recent
    assert list(cache) == ["a", "c"] and calls == ["a", "b", "c"]
    assert _lru(cache, "b", compute) == "B" and calls == ["a", "b", "c", "b"]  # default size: nothing evicted
    assert list(cache) == ["a", "c", "b"]
    # the default bound: 100 000 entries
    big = OrderedDict((i, i) for i in range(100_000))
    assert _lru(big, -1, lambda key: key) == -1 and len(big) == 100_000 and 0 not in big


def test_teacher_arguments_and_defaults():
    assert Teacher().matching == "glove"
    for matching, (min_match, head) in {
        "wordnet": (0.5, "last"), "mapping": (0.5, "last"), "lexical": (0.5, "last"), "glove": (0.8, "last"),
        "minilm": (0.55, "all"),
    }.items():  # fmt: skip
        if matching != "mapping":
            t = Teacher(matching)
            assert (t.min_match, t.phrase_head) == (min_match, head), matching
    t = Teacher("glove", min_match=0.3, phrase_head="all", full_score=1.0, score_floor=0.25)
    assert (t.min_match, t.phrase_head, t.full_score, t.score_floor) == (0.3, "all", 1.0, 0.25)
    assert repr(t) == "Teacher(matching='glove', min_match=0.3, phrase_head='all', full_score=1.0, score_floor=0.25)"
    with pytest.raises(ValueError, match="unknown phrase_head 'first'"):
        Teacher("lexical", phrase_head="first")
    for bad in (1.01, -0.5):
        with pytest.raises(ValueError, match=rf"full_score must lie in \(0, 1\], got {bad}"):
            Teacher("lexical", full_score=bad)
    assert Teacher("lexical", score_floor=0.0).score_floor == 0.0
    with pytest.raises(ValueError, match=r"score_floor must lie in \[0, 1\), got -0.1"):
        Teacher("lexical", score_floor=-0.1)
    with pytest.raises(ValueError, match="mapping_file is only read by matching='mapping', not 'lexical'"):
        Teacher("lexical", mapping_file="heads.tsv")
    with pytest.raises(ValueError, match=r"^matching='mapping' needs mapping_file and the detector's vocabulary$"):
        Teacher("mapping", vocabulary=["dog"])


def test_mapping_teacher_reads_a_vocabulary_file(tmp_path):
    mapping = tmp_path / "heads.tsv"
    mapping.write_text("puppy\tdog\n", encoding="utf-8")
    vocabulary = tmp_path / "classes.txt"
    vocabulary.write_text("# detector classes\nperson\ndog\n", encoding="utf-8")
    teacher = Teacher("mapping", mapping_file=str(mapping), vocabulary=str(vocabulary))
    assert teacher.nearest_classes(["person", "dog"], ["a puppy", "a tree"]).tolist() == [[False, False], [True, False]]
    listed = Teacher("mapping", mapping_file=str(mapping), vocabulary=("person", "dog"))  # a list, not a file
    assert listed.nearest_classes(["person", "dog"], ["a puppy"]).tolist() == [[False], [True]]


def test_wordnet_teacher_passes_its_senses_and_siblings_on():
    # siblings: a donkey is taught by the horses (equine, 2 steps up), unless siblings stop at 1
    assert Teacher("wordnet").similarity(["horse", "dog"], ["a donkey"]).tolist() == [[1.0], [0.0]]
    assert Teacher("wordnet", wordnet_siblings=1).similarity(["horse", "dog"], ["a donkey"]).tolist() == [[0.0], [0.0]]
    # two steps by default: a lion reaches cat (feline), not bear (carnivore, three steps up)
    assert Teacher("wordnet").similarity(["cat", "bear"], ["a lion"]).tolist() == [[1.0], [0.0]]
    assert (Teacher("wordnet")._matcher.senses, Teacher("wordnet", wordnet_senses=2)._matcher.senses) == (1, 2)


def test_a_pickled_teacher_drops_its_caches_and_keeps_its_settings():
    import pickle

    teacher = Teacher("glove", min_match=0.7, full_score=0.5)
    before = teacher.similarity(CLASSES, ["a puppy"])
    assert teacher._embedder is not None and len(teacher._cache) > 0
    clone = pickle.loads(pickle.dumps(teacher))
    assert clone._embedder is None and len(clone._cache) == 0
    assert (clone.matching, clone.min_match, clone.full_score) == ("glove", 0.7, 0.5)
    assert teacher._embedder is not None and len(teacher._cache) > 0  # the original keeps them
    torch.testing.assert_close(clone.similarity(CLASSES, ["a puppy"]), before)


# ------------------------------------------------------------------ matching


def test_lexical_matching_reads_aliases_and_the_longest_class_name():
    lexical = Teacher("lexical")
    names = ["tv,television", "traffic light", "light", "dining table"]
    m = lexical.similarity(names, ["a television", "the traffic lights", "a light", "tables", "the tv"])
    expected = torch.tensor(
        [[1.0, 0, 0, 0, 1], [0, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0]]
    )  # "traffic lights" is the traffic light only; "tables" no dining table
    torch.testing.assert_close(m, expected)
    # a class name (or an alias) without a word names nothing
    torch.testing.assert_close(lexical.similarity(["dog,", "!!"], ["a dog", "!!"]), torch.tensor([[1.0, 0], [0, 0]]))
    # another vocabulary: the cached class forms are rebuilt
    torch.testing.assert_close(lexical.similarity(["table"], ["tables"]), torch.ones(1, 1))
    torch.testing.assert_close(lexical.similarity(names, []), torch.zeros(4, 0))


def test_nearest_classes_keep_the_best_classes_that_reach_min_match():
    lexical = Teacher("lexical")
    nearest = lexical.nearest_classes(["dog", "hot dog", "dogs", "cat"], ["a dog", "the sky"])
    assert nearest.tolist() == [[True, False], [False, False], [True, False], [False, False]]  # ties: both
    for empty in (lexical.nearest_classes([], ["a dog"]), lexical.nearest_classes(["dog"], [])):
        assert empty.dtype == torch.bool and empty.numel() == 0
    assert lexical.nearest_classes([], ["a dog"]).shape == (0, 1)
    assert lexical.nearest_classes(["dog"], []).shape == (1, 0)
    wordnet = Teacher("wordnet")
    # each phrase's nearest class, however near the class is to another phrase ("a person": 0 steps)
    nearest = wordnet.nearest_classes(["person", "dog", "car"], ["a woman", "a puppy", "the sky", "a person"])
    assert nearest.tolist() == [[True, False, False, True], [False, True, False, False], [False, False, False, False]]
    torch.testing.assert_close(
        wordnet.similarity(["person", "dog"], ["a woman", "the sky"]), torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    )


def test_match_of_a_min_match_of_one_is_an_exact_match():
    strict = Teacher("lexical", min_match=1.0)
    torch.testing.assert_close(strict.match(["dog", "cat"], ["a dog"]), torch.tensor([[1.0], [0.0]]))
    raw = Teacher("lexical", rescale=False)
    torch.testing.assert_close(raw.match(["dog", "cat"], ["a dog"]), torch.tensor([[1.0], [0.0]]))


def test_glove_phrase_head_last_or_best_word():
    last, every = Teacher("glove"), Teacher("glove", phrase_head="all")
    # "dog" only in the middle: the last word (park) decides with "last", the best word with "all"
    s_last = last.similarity(["dog"], ["a dog in a park"]).item()
    s_all = every.similarity(["dog"], ["a dog in a park"]).item()
    assert s_all == pytest.approx(1.0, abs=1e-5) and s_last < 0.8
    # words without a vector are skipped; a phrase or class without any has cosine -1 (similarity 0)
    assert last.similarity(["dog"], ["a dog qqzzxxq"]).item() == pytest.approx(1.0, abs=1e-5)
    cos = last._cosine(["dog", "qqzzxxq"], ["zzqqxx", "a dog"])
    assert cos[0, 1].item() == pytest.approx(1.0, abs=1e-5) and [cos[0, 0], cos[1, 0], cos[1, 1]] == [-1.0] * 3
    assert last.similarity(["dog", "qqzzxxq"], ["zzqqxx", "a dog"])[1].tolist() == [0.0, 0.0]


# ------------------------------------------------------------------ forward


def test_forward_reads_labels_up_to_the_proposals_and_pads_short_ones():
    teacher = Teacher("lexical")
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])  # an integer mask is a bool one
    labels = [["dog", "cat", "dog", "dog"], ["cat", "dog"]]  # longer than R / shorter than R
    scores = torch.tensor([[0.9, 0.8, 0.7], [0.6, 0.5, 0.4]], dtype=torch.float64)
    t, kd = teacher([["a dog", "   "], ["the dog"]], labels, scores, mask)
    expected = torch.tensor([[[0.9, 0.0, 0.0], [0.0, 0.0, 0.0]], [[0.0, 0.5, 0.0], [0.0, 0.0, 0.0]]])
    torch.testing.assert_close(t, expected)
    assert t.dtype == torch.float32 and kd.tolist() == [[True, False], [True, False]]  # a blank phrase is padding


def test_forward_without_real_boxes_or_phrases_teaches_nothing():
    teacher = Teacher("lexical")
    t, kd = teacher([["a dog"]], [["dog", "dog"]], torch.ones(1, 2), torch.zeros(1, 2, dtype=torch.bool))
    assert t.shape == (1, 1, 2) and not t.any() and kd.tolist() == [[False]]
    t, kd = teacher([[""], []], [["dog"], ["dog"]], torch.ones(2, 1), torch.ones(2, 1, dtype=torch.bool))
    assert t.shape == (2, 1, 1) and not t.any() and not kd.any()
    t, kd = teacher([], [], torch.ones(0, 1), torch.ones(0, 1, dtype=torch.bool))
    assert t.shape == (0, 0, 1) and kd.shape == (0, 0)


def test_a_teacher_flat_to_a_millionth_is_left_out():
    teacher = Teacher("lexical")
    mask = torch.ones(1, 2, dtype=torch.bool)
    for gap, taught in ((5e-7, False), (1e-5, True)):
        _, kd = teacher([["a dog"]], [["dog", "dog"]], torch.tensor([[0.5 + gap, 0.5]]), mask)
        assert kd.tolist() == [[taught]], gap


def test_class_probs_need_one_name_per_column():
    teacher = Teacher("lexical")
    probs = torch.ones(1, 2, 3) / 3
    for names in (None, ["a", "b"]):
        with pytest.raises(ValueError, match="class_probs needs class_names, one per column"):
            teacher([["a dog"]], None, torch.ones(1, 2), torch.ones(1, 2, dtype=torch.bool), probs, names)
    # full_score applies to the probabilities; every class counts as present in every image
    t, kd = Teacher("lexical", full_score=0.5)(
        [["a dog"]], None, torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool),
        torch.tensor([[[0.6, 0.1], [0.2, 0.3]]]), ["dog", "cat"],
    )  # fmt: skip
    torch.testing.assert_close(t, torch.tensor([[[1.0, 0.4]]]))
    assert kd.tolist() == [[True]]


def test_nearest_classes_of_similarities_are_per_phrase():
    glove = Teacher("glove", min_match=0.5)
    # "a dog" is nearer to cat (0.92) than "a puppy" is to dog (0.78): each phrase keeps its own best
    nearest = glove.nearest_classes(["dog", "cat", "car"], ["a puppy", "a dog", "a car"])
    assert nearest.tolist() == [[True, True, False], [False, False, False], [False, False, True]]
    # a similarity equal to min_match is enough
    assert Teacher("lexical", min_match=1.0).nearest_classes(["dog", "cat"], ["a dog"]).tolist() == [[True], [False]]


def test_glove_class_names_are_their_words_averaged():
    import torch.nn.functional as F

    glove = Teacher("glove")
    cos = glove._cosine(["traffic light", "light"], ["the stoplight"])[:, 0]
    emb = glove._embedder
    stoplight = emb.vector("stoplight")
    expected = [F.cosine_similarity(emb.text_vector(c), stoplight, dim=0).item() for c in ("traffic light", "light")]
    assert cos.tolist() == pytest.approx(expected, abs=1e-5) and abs(expected[0] - expected[1]) > 0.05


def test_embeddings_are_read_from_the_given_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="glove_6B_index.parquet"):
        Teacher("glove", glove_root=str(tmp_path / "glove")).similarity(["dog"], ["a cat"])
    with pytest.raises(OSError, match="no_minilm_here"):
        Teacher("minilm", minilm_path=str(tmp_path / "no_minilm_here")).similarity(["dog"], ["a cat"])


def test_minilm_embeds_the_phrase_or_its_head_and_keeps_its_model():
    every, last = Teacher("minilm"), Teacher("minilm", phrase_head="last")
    cos = every._cosine(["dog", "traffic light"], ["A dog, in a park!"])
    emb = every._embedder
    expected = emb.encode(["dog", "traffic light"]) @ emb.encode(["a dog in a park"]).T
    torch.testing.assert_close(cos, expected)
    # the head noun alone with "last"
    torch.testing.assert_close(last._cosine(["dog", "traffic light"], ["A dog, in a park!"]),
                               every._cosine(["dog", "traffic light"], ["park"]))  # fmt: skip
    assert (cos[0] - last._cosine(["dog"], ["A dog, in a park!"])[0]).abs().item() > 0.1
    # a phrase or a class without a word has cosine -1
    assert every._cosine(["dog", "!!"], [", .", "a dog"]).tolist()[0][0] == -1.0
    assert every._cosine(["dog", "!!"], [", .", "a dog"])[1].tolist() == [-1.0, -1.0]
    assert every._embedder is emb  # loaded once, not per call


def test_matching_scores_stay_within_zero_and_one():
    """Cosines of a word with itself can come out a rounding error above 1 (here some do, in both
    embeddings); m(c, p) still stops at 1."""
    names = ["dog", "ball", "car", "person", "traffic light", "cat", "tree", "man", "woman", "bicycle"]
    phrases = [f"a {n}" for n in names] + names
    for matching in ("glove", "minilm"):
        teacher = Teacher(matching)
        m = teacher.match(names, phrases)
        assert m.max().item() == 1.0 and m.min().item() == 0.0, matching


def test_glove_similarity_of_single_words_and_empty_lists():
    glove = Teacher("glove")
    # a phrase of one word, read whole ("puppy", not a shorter key): cosine 0.78 with dog
    assert glove.similarity(["dog", "car"], ["puppy"])[:, 0].tolist() == pytest.approx([0.7755, 0.1840], abs=1e-3)
    assert glove.similarity([], ["a dog"]).shape == (0, 1) and glove.similarity(["dog"], []).shape == (1, 0)
