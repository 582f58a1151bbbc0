"""Head nouns of real phrases, WordNet reachability, whole-name class matching, mapping files."""

import pytest
import torch

from lightning_wsg.lexicon import WordNetNouns, head_noun
from lightning_wsg.lexicon.classes import COCO80, MappingMatcher, WordNetMatcher, class_aliases
from lightning_wsg.models import Teacher

INF = float("inf")


@pytest.mark.parametrize(
    ("phrase", "head"),
    [
        # Flickr30K Entities phrases of each type (from the real train/val captions)
        ("Two young men", "men"),  # people, plural
        ("a group of people", "people"),  # people, collective "of"
        ("a couple of dogs", "dogs"),  # animals
        ("the man 's shirt", "shirt"),  # clothing, possessive
        ("her left hand", "hand"),  # bodyparts, position word before the head
        ("a white t-shirt", "t-shirt"),  # hyphenated
        ("A black and white dog", "dog"),  # conjoined colours inside one noun phrase
        ("a cup of coffee", "cup"),  # "of" after a non-collective noun
        ("one of the men", "men"),
        ("a red sedan", "sedan"),  # vehicles
        ("a large building", "building"),  # scene: a noun that is mostly a verb, but alone
        ("an acoustic guitar", "guitar"),  # instruments
        # referring expressions: the head of the first noun phrase
        ("the man in yellow coat", "man"),
        ("giraffe on the left behind the fence", "giraffe"),
        ("left guy", "guy"),
        # a place on an object is the object's box; a kind of thing is the thing
        ("the back of a truck", "truck"),
        ("the middle of a crowd", "crowd"),
        ("some sort of vehicle", "vehicle"),
        ("a piece of cake", "piece"),  # but a piece is neither a kind nor a place
        ("the inside of a bus", "bus"),
        ("a yellow moped", "moped"),  # a colour is no head, though "moped" is also a verb form
        ("a blue and white boat", "boat"),
        # "-ing" ends the noun phrase only after a noun ("man holding an umbrella")
        ("two smiling women", "women"),
        ("a red racing car", "car"),
        ("the next train", "train"),  # "next" ends it only in "next to"
        ("woman standing", "woman"),
        ("man holding an umbrella", "man"),
        ("a teddy bear", "bear"),
        ("a man alone", "man"),  # a last word that is no noun: the noun before it
        ("the boy barefoot", "boy"),
    ],
)
def test_head_noun_of_real_phrases(phrase, head):
    assert head_noun(phrase) == head


@pytest.mark.parametrize(
    "phrase", ["bottom left", "the one on the right", "second from left", "it", "white", "a part of the wall"]
)
def test_no_head_where_the_expression_names_no_object(phrase):
    assert head_noun(phrase) is None


def test_wordnet_reachability():
    wn = WordNetNouns.load()
    assert wn.base_forms("women") == ["woman"]
    assert wn.base_forms("puppies") == ["puppy"]
    assert "person" in wn.ancestors("woman") and "person" in wn.ancestors("toddler") and "person" in wn.ancestors("guy")
    assert "dog" in wn.ancestors("puppy") and "dog" in wn.ancestors("terrier")
    assert "car" in wn.ancestors("sedan") and "car" in wn.ancestors("taxi")
    assert "person" not in wn.ancestors("shirt") and "person" not in wn.ancestors("hand")
    # a synonym whose own main sense is something else does not count: "guy" is not a "cat"
    assert "cat" not in wn.ancestors("guy")
    # collective nouns reach their members
    assert "person" in wn.ancestors("people") and "person" in wn.ancestors("crowd")
    # an agent noun WordNet lacks is someone who does it
    assert "person" in wn.ancestors("kayaker")
    assert wn.is_collective("group") and not wn.is_collective("cup")
    # read in the main and the first sense only: a second sense that is a group (a train's) does not count
    assert not wn.is_collective("train") and not wn.is_collective("body")
    # a main sense that is not the first: a hunt is the hunt club (WordNet's first hunt is a painter)
    assert wn.is_collective("hunt")


@pytest.mark.parametrize(
    ("word", "not_reached", "why"),
    [
        ("kiss", "bus", "a synonym's singular counts only where it is read so: buss is no bus"),
        ("kisses", "bus", "the same through a plural"),
        ("india", "person", "a named place's members are its inhabitants, not what it shows"),
        ("france", "person", "the same"),
        ("fields", "person", "a plural that is also a named person (W. C. Fields) is the plural"),
        ("gates", "person", "Bill Gates"),
        ("younger", "person", "a comparative is no agent noun"),
        ("smaller", "person", "the same"),
    ],
)
def test_wordnet_readings_that_would_teach_a_wrong_kind(word, not_reached, why):
    assert not_reached not in WordNetNouns.load().ancestors(word), why


def test_members_still_make_up_groups_and_trains():
    wn = WordNetNouns.load()
    assert "person" in wn.ancestors("people") and "cattle" in wn.ancestors("herd")
    assert "railcar" in wn.ancestors("train")  # not a group, not named: its cars still count
    assert "cow" in wn.ancestors("cows")  # a plural synonym ("cows" of cattle) in the singular
    assert "field" in wn.base_forms("fields")
    assert wn.agent_noun("kayaker") and not wn.agent_noun("younger")


# Words whose most often tagged senses tie: WordNet's order decides (the earlier sense wins).
# word -> (synonyms of its main sense, its first hypernym, a name it reaches, the tied sense's name it must not reach)
TIED_SENSES = {
    "adult": (["adult", "grownup"], "person", "person", "animal"),
    "banana": (["banana", "banana tree"], "herb", "herb", "edible fruit"),
    "band": (["band", "banding", "stria", "striation"], "stripe", "stria", "adornment"),
    "carriage": (["passenger car", "coach", "carriage"], "car", "railcar", "horse-drawn vehicle"),
    "carrier": (["carrier", "bearer", "toter"], "traveler", "person", "warship"),
    "grip": (["handle", "grip", "handgrip", "hold"], "appendage", "handle", "suitcase"),
    "privy": (["toilet", "lavatory", "lav", "can", "john", "privy", "bathroom"], "room", "toilet", "outbuilding"),
    "trunk": (["trunk", "tree trunk", "bole"], "stalk", "tree trunk", "luggage"),
}


@pytest.mark.parametrize("word", sorted(TIED_SENSES))
def test_equally_tagged_senses_are_read_in_wordnet_order(word):
    wn = WordNetNouns.load()
    names, hypernym, reached, not_reached = TIED_SENSES[word]
    (sense,) = wn.main_senses(word)
    # a real tie: the word's most often tagged physical senses are tagged equally often
    senses, counts = wn._senses[word], wn._sense_counts[word]
    physical = [(n, i) for i, (s, n) in enumerate(zip(senses, counts)) if wn.physical(s)]
    tied = [i for n, i in physical if n == max(physical)[0]]
    assert len(tied) >= 2 and senses.index(sense) == tied[0]
    assert wn.names(sense) == names
    assert hypernym in wn.names(wn._synsets[sense][1][0])
    ancestors = wn.ancestors(word)
    assert reached in ancestors and not_reached not in ancestors


@pytest.mark.parametrize(
    ("phrase", "expected"),
    [("an adult", ["person"]), ("the carrier", ["person"]), ("the privy", ["toilet"]), ("a grip", [])],
)
def test_tied_senses_decide_the_coco_class(phrase, expected):
    d = WordNetMatcher().distances(phrase, list(COCO80))
    best = min(d)
    assert [COCO80[i] for i, x in enumerate(d) if x == best and best < float("inf")] == expected


@pytest.mark.parametrize(
    ("phrase", "expected"),
    [
        ("a woman", "person"),
        ("two guys", "person"),
        ("a crowd", "person"),
        ("a puppy", "dog"),
        ("the taxi", "car"),
        ("a dog", "dog"),  # not "hot dog"
        ("a hot dog", "hot dog"),
        ("a bear", "bear"),  # not "teddy bear"
        ("a teddy bear", "teddy bear"),
        ("an animal", "dog"),  # a class that is a kind of the noun (the only animal class here)
        ("his shirt", None),  # clothing never reaches person
        ("a man 's hand", None),
        ("bottom left", None),
    ],
)
def test_wordnet_class_matching_on_whole_names(phrase, expected):
    names = ["person", "dog", "hot dog", "bear", "teddy bear", "car", "traffic light"]
    d = WordNetMatcher().distances(phrase, names)
    best = min(d)
    nearest = [names[i] for i, x in enumerate(d) if x == best and best < float("inf")]
    assert nearest == ([expected] if expected else [])


@pytest.mark.parametrize(
    ("phrase", "names", "max_distance", "expected"),
    [
        # woman -> adult (1) -> person (2): a class exactly max_distance steps up is still reached
        ("a woman", ["person", "dog"], 2, [2.0, INF]),
        ("a woman", ["person", "dog"], 1, [INF, INF]),
        ("a woman", ["person", "dog"], None, [2.0, INF]),
        # sedan -> car (1) ... vehicle (5); the nearer car keeps the fallback readings out
        ("a sedan", ["vehicle", "car"], 5, [5.0, 1.0]),
        ("a sedan", ["vehicle", "car"], 4, [INF, 1.0]),
        # a name past the limit does not end the reading: people -> grouping (1) -> abstract entity
        # (2, skipped), then its members, person (1), read after the group's hypernyms
        ("people", ["person"], 1, [1.0]),
    ],
)
def test_max_distance_is_inclusive(phrase, names, max_distance, expected):
    assert WordNetMatcher(max_distance=max_distance).distances(phrase, names) == expected


def test_visual_genome_synonym_lists_are_aliases():
    assert class_aliases("man,men") == ["man", "men"]
    assert class_aliases("Traffic_Light") == ["traffic light"]
    names = ["person,people", "man,men", "dog"]
    # the class named by the noun itself, by an alias, is the nearest; man -> adult -> person
    assert WordNetMatcher().distances("two men", names) == [2.0, 0.0, INF]
    assert WordNetMatcher().distances("a crowd of people", names) == [0.0, INF, INF]


def test_coco80_has_the_80_detector_names():
    assert len(COCO80) == 80 and len(set(COCO80)) == 80
    assert COCO80[0] == "person" and "teddy bear" in COCO80 and "hair drier" in COCO80


def test_mapping_file(tmp_path):
    path = tmp_path / "map.tsv"
    path.write_text("# head noun -> class\nwoman\tperson\npuppy\tdog\n\n", encoding="utf-8")
    m = MappingMatcher(path, ["person", "dog", "car"])
    assert m.distances("two women", ["person", "dog", "car"]) == [0.0, float("inf"), float("inf")]
    assert m.distances("a puppy", ["dog"]) == [0.0]
    assert m.distances("a man", ["person", "dog"]) == [float("inf")] * 2  # not in the table
    teacher = Teacher("mapping", mapping_file=str(path), vocabulary=["person", "dog", "car"])
    t, kd = teacher(
        [["the woman", "a sedan"]], [["dog", "person"]], torch.tensor([[0.9, 0.6]]), torch.ones(1, 2, dtype=torch.bool)
    )
    torch.testing.assert_close(t[0, 0], torch.tensor([0.0, 0.6]))
    assert kd.tolist() == [[True, False]]


def test_mapping_file_naming_an_unknown_class_is_refused(tmp_path):
    path = tmp_path / "map.tsv"
    path.write_text("woman\tperson\nsedan\tautomobile\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"map\.tsv:2: class 'automobile' is not in the detector's vocabulary"):
        MappingMatcher(path, ["person", "car"])
    path.write_text("woman person\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"map\.tsv:1: expected 'head noun<TAB>class name'"):
        MappingMatcher(path, ["person"])
    with pytest.raises(ValueError, match="needs mapping_file and the detector's vocabulary"):
        Teacher("mapping", mapping_file=str(path))
    with pytest.raises(FileNotFoundError, match="teacher mapping file .*missing.tsv not found"):
        MappingMatcher(tmp_path / "missing.tsv", ["person"])


def test_wordnet_teacher_keeps_the_nearest_class_each_image_has():
    """A "woman" is taught by the image's "woman" boxes when it has some, else by "person"."""
    teacher = Teacher("wordnet")
    labels = [["woman", "person", "dog"], ["person", "dog", "dog"]]
    scores = torch.tensor([[0.9, 0.8, 0.7], [0.6, 0.5, 0.4]])
    # the images list their phrases in different orders (and numbers): a mix-up between them shows
    texts = [["a woman", "a dog"], ["two dogs", "a woman", "the sky"]]
    t, kd = teacher(texts, labels, scores, torch.ones(2, 3, dtype=torch.bool))
    expected = [
        [[0.9, 0.0, 0.0], [0.0, 0.0, 0.7], [0.0, 0.0, 0.0]],  # woman; dog; padding
        [[0.0, 0.5, 0.4], [0.6, 0.0, 0.0], [0.0, 0.0, 0.0]],  # dogs; woman, taught by "person" here; sky
    ]
    torch.testing.assert_close(t, torch.tensor(expected))
    assert kd.tolist() == [[True, True, False], [True, True, False]]


def test_mapping_file_maps_the_longest_name_it_lists(tmp_path):
    path = tmp_path / "map.tsv"
    path.write_text("police car\tbus\ncar\tcar\nglove\tperson\n", encoding="utf-8")
    m = MappingMatcher(path, ["person", "car", "bus"])
    assert m.distances("the police car", ["person", "car", "bus"]) == [INF, INF, 0.0]  # not its last word
    assert m.distances("a red car", ["person", "car", "bus"]) == [INF, 0.0, INF]
    # a name of two words not in the table falls back to its last word
    assert m.distances("a baseball glove", ["person", "car", "bus"]) == [0.0, INF, INF]


def test_read_class_names_skips_comments_and_blank_lines(tmp_path):
    from lightning_wsg.lexicon.classes import read_class_names

    path = tmp_path / "classes.txt"
    path.write_text("# COCO\n  person \n\ndog\n#cat\nteddy bear\n", encoding="utf-8")
    assert read_class_names(path) == ["person", "dog", "teddy bear"]
    assert read_class_names(str(path)) == ["person", "dog", "teddy bear"]
    path.write_text("# nothing\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"classes\.txt: no class names in the file"):
        read_class_names(path)
    with pytest.raises(FileNotFoundError, match=r"class name file .*missing\.txt not found"):
        read_class_names(tmp_path / "missing.txt")


@pytest.mark.parametrize(
    ("word", "agent", "why"),
    [
        ("kayaker", True, "kayak + er"),
        ("kayakers", True, "a plural"),
        ("wakeboarder", True, "a noun that is no verb + er"),
        ("biker", True, "bike, the stem with its e back"),
        ("moper", True, "five letters are enough: mope + r"),
        ("bobsledder", True, "a doubled consonant: bobsled"),
        ("oxxer", True, "a doubled consonant after a stem of three letters: ox"),
        ("skier", False, "a WordNet noun of its own"),
        ("dog", False, "no -er"),
        ("kayaked", False, "no -er, though kayak is a noun"),
        ("xyzzyer", False, "no stem is a word"),
        ("vlogger", False, "vlog is no WordNet word"),
        ("bmxer", False, "bm is a word, but only a doubled consonant is dropped"),
        ("younger", False, "a comparative"),
        ("flyfisher", True, "flyfish is only a verb"),
    ],
)
def test_agent_nouns(word, agent, why):
    assert WordNetNouns.load().agent_noun(word) is agent, why


def test_reaches_a_named_sense_through_hypernyms():
    wn = WordNetNouns.load()
    assert wn.reaches("bus", "public transport") and wn.reaches("sedan", "car") and wn.reaches("buses", "bus")
    assert not wn.reaches("dog", "car") and not wn.reaches("xyzzy", "car")
    # the root has no hypernym above it, "physical entity" one
    assert wn.ancestor_count(wn._senses["entity"][0]) == 0
    assert wn.ancestor_count(wn._senses["physical entity"][0]) == 1


def test_main_senses_prefer_tagged_physical_senses_then_untagged_objects():
    wn = WordNetNouns.load()
    assert wn.main_senses("xyzzy") == []
    # never tagged: the pushchair, not the person who strolls (WordNet's first sense), even when two are asked
    assert [wn.names(s)[0] for s in wn.main_senses("stroller", 2)] == ["baby buggy"]
    # tagged, but no tagged sense is physical: the first, not an untagged physical one
    assert [wn.names(s) for s in wn.main_senses("trick")] == [["trick", "fast one"]]
    assert [wn.names(s) for s in wn.main_senses("trick", 2)] == [["trick", "fast one"], ["trick"]]
    # a named place or person is never the main sense of a word that has other senses
    assert "wellington boot" in wn.names(wn.main_senses("wellington")[0])  # not New Zealand's capital
    assert wn.names(wn.main_senses("china")[0]) == ["china"]  # the porcelain, not the country


def test_siblings_name_the_nearest_class_the_vocabulary_has():
    """donkey -> equine (2 steps) <- horse, zebra; goat -> bovid (1) <- sheep, goat -> ruminant (2) <-
    giraffe: SIBLING + steps up + 1."""
    names = ["person", "horse", "zebra", "sheep", "giraffe", "dog", "car"]
    matcher = WordNetMatcher()
    assert matcher.distances("a donkey", names) == [INF, 203.0, 203.0, INF, INF, INF, INF]
    assert matcher.distances("a goat", names) == [INF, INF, INF, 202.0, 203.0, INF, INF]
    assert WordNetMatcher(downward=False).distances("a donkey", names) == [INF, 203.0, 203.0, INF, INF, INF, INF]
    one = WordNetMatcher(siblings=1)
    assert one.distances("a donkey", names) == [INF] * 7
    assert one.distances("a goat", names) == [INF, INF, INF, 202.0, INF, INF, INF]
    assert WordNetMatcher(siblings=0).distances("a goat", names) == [INF] * 7
    # stool -> seat (1, 8 hypernyms above it) <- chair, bench
    assert matcher.distances("a stool", ["chair", "bench", "person"]) == [202.0, 202.0, INF]
    # a hub with exactly MIN_HUB_ANCESTORS (7) hypernyms counts: schoolbag -> bag (1) <- backpack
    assert matcher.distances("a schoolbag", ["backpack", "suitcase", "person"]) == [202.0, INF, INF]
    # two steps up by default: lion -> big cat (1) -> feline (2) <- cat, not carnivore (3) <- bear
    assert matcher.distances("a lion", ["cat", "bear"]) == [203.0, INF]
    assert WordNetMatcher(siblings=3).distances("a lion", ["cat", "bear"]) == [203.0, 204.0]
    # a class below the noun comes first: an animal is taught by its dogs, not by relatives
    assert matcher.distances("an animal", names)[5] == 102.0


def test_a_pickled_matcher_drops_wordnet_and_its_cache():
    import pickle

    matcher = WordNetMatcher()
    before = matcher.distances("a woman", ["person", "dog"])
    clone = pickle.loads(pickle.dumps(matcher))
    assert clone._wn is None and len(clone._cache) == 0 and clone.senses == 1
    assert matcher._wn is not None and len(matcher._cache) == 1
    assert clone.distances("a woman", ["person", "dog"]) == before


@pytest.mark.parametrize(
    ("phrase", "names", "expected", "why"),
    [
        ("a sports ball", ["sports ball", "ball", "person"], [0.0, INF, INF], "a class said in full wins alone"),
        ("a kitchen wine glass", ["wine glass", "cup", "glass"], [0.0, INF, INF], "in full within longer words"),
        ("a kitchen chair", ["chair", "person"], [0.0, INF], "two words that are no noun: the last one"),
        ("a teddy bear", ["bear", "toy"], [INF, 1.0], "a noun of two words, no kind of its last word"),
        ("a teddy bear", ["bear", "person"], [INF, INF], "reaching no class does not make it a bear"),
        ("a police car", ["car", "person"], [1.0, INF], "a noun of two words that reaches a class"),
        ("a police car", ["taxi", "person"], [101.0, INF], "reaches none: read as the car it is a kind of"),
        ("a rocky mountain sheep", ["sheep", "person"], [203.0, INF], "three words read as the two it is a kind of"),
    ],
)
def test_multi_word_heads_and_class_names(phrase, names, expected, why):
    assert WordNetMatcher().distances(phrase, names) == expected, why


def test_matcher_arguments_are_checked_and_its_cache_follows_use():
    refused = (({"senses": 0}, r"^senses must be >= 1, got 0$"), ({"siblings": -1}, r"^siblings must be >= 0, got -1$"))
    for kwargs, message in refused:
        with pytest.raises(ValueError, match=message):
            WordNetMatcher(**kwargs)
    assert WordNetMatcher(siblings=0).siblings == 0
    matcher = WordNetMatcher()
    names = ["person", "dog"]
    for phrase in ("a woman", "a dog", "a woman"):
        assert matcher.distances(phrase, names) == ([2.0, INF] if phrase == "a woman" else [INF, 0.0])
    assert list(matcher._cache) == [("a dog",), ("a woman",)]  # the most recent last
    # at most 200 000 phrases: the 200 000th is kept, the least recent goes only past it
    matcher._cache.update(((f"p{i}",), [INF, INF]) for i in range(200_000 - 3))
    assert matcher.distances("a puppy", names) == [INF, 1.0]
    assert len(matcher._cache) == 200_000 and next(iter(matcher._cache)) == ("a dog",)
    assert matcher.distances("a kitten", names) == [INF, INF]
    assert len(matcher._cache) == 200_000 and next(iter(matcher._cache)) == ("a woman",)


def test_generic_class_names_are_taught_only_by_the_word_itself():
    wn = WordNetNouns.load()
    # a main sense with at most 4 hypernyms above it: artifact (4), not organism (5)
    assert wn.is_generic("artifact") and wn.is_generic("group") and not wn.is_generic("organism")
    matcher = WordNetMatcher()
    assert matcher.distances("a structure", ["artifact", "whole"]) == [INF, INF]  # structure -> artifact: 1 step
    assert matcher.distances("an artifact", ["artifact"]) == [0.0]
    # a crowd is a group (generic, skipped) and is made of persons, read after it
    assert matcher.distances("a crowd", ["group", "person"]) == [INF, 1.0]
    # classes below the noun without the siblings, and the other way round
    assert WordNetMatcher(siblings=0).distances("an animal", ["dog", "person"]) == [102.0, INF]


def test_plural_class_names_match_singular_phrases():
    matcher = WordNetMatcher()
    assert matcher.distances("a ski", ["skis", "person"]) == [0.0, INF]  # COCO's "skis"
    assert matcher.distances("a sports ball", ["sports balls"]) == [0.0]
    assert matcher.distances("a kitchen wine glass", ["kitchen wine glasses", "glasses"]) == [0.0, INF]


def test_a_second_sense_reaches_classes_the_first_does_not():
    names = ["car", "train", "suitcase"]
    assert WordNetMatcher().distances("a van", names)[:2] == [INF, 202.0]  # the first sense reaches no car
    assert WordNetMatcher(senses=2).distances("a van", names) == [1.0, INF, INF]  # the second: a car
    assert WordNetMatcher().distances("a trunk", names) == [INF, INF, INF]  # a tree's trunk
    assert WordNetMatcher(senses=2).distances("a trunk", names) == [INF, INF, 202.0]  # luggage
    assert "car" in WordNetNouns.load().ancestors("van", senses=2) and "car" not in WordNetNouns.load().ancestors("van")


def test_groups_reach_their_members_one_step_away():
    wn = WordNetNouns.load()
    assert wn.ancestors("people")["person"] == 1 and wn.ancestors("herd")["cattle"] == 1
    # a social group without listed members, at most 3 steps below "social group", is made of persons
    assert wn.ancestors("couple")["person"] == 1  # social group 3 steps up
    assert "person" not in wn.ancestors("firm")  # 4 steps up: a firm is no picture of its people


def test_mapping_file_lines_are_checked(tmp_path):
    path = tmp_path / "map.tsv"
    path.write_text("  # an indented comment\nKayaker\tperson\nhydrant\tFire  Hydrant\n", encoding="utf-8")
    m = MappingMatcher(path, ["person", "dog", "fire hydrant"])
    assert m.distances("a kayaker", ["person", "dog"]) == [0.0, INF]  # a noun WordNet lacks, lower-cased
    assert m.distances("the hydrant", ["person", "fire hydrant"]) == [INF, 0.0]  # a class name's case and spaces
    path.write_text("puppy\tdoggy\n", encoding="utf-8")
    vocabulary = ["person", "dog", "cat", "car", "bus", "train"]
    with pytest.raises(ValueError, match=r"\(6 classes, e\.g\. person, dog, cat, car, bus\)$"):
        MappingMatcher(path, vocabulary)
    for line in ("\tperson", "puppy\t ", "puppy\tdog\textra"):
        path.write_text(line + "\n", encoding="utf-8")
        with pytest.raises(ValueError, match=r"map\.tsv:1: expected 'head noun<TAB>class name'"):
            MappingMatcher(path, ["person", "dog"])


def test_a_fresh_table_reads_senses_counts_and_verbs():
    """The table is read once per process; a second reader from the same file must read the same."""
    import gzip
    import json

    from lightning_wsg.lexicon.wordnet import TABLE

    with gzip.open(TABLE, "rt", encoding="utf-8") as f:
        fresh = WordNetNouns(json.load(f))
    assert fresh.agent_noun("kayaker") and not fresh.agent_noun("younger")  # verbs, parts of speech
    assert fresh.agent_noun("flyfisher")  # a stem that is only a verb
    assert [fresh.names(s) for s in fresh.main_senses("trick")] == [["trick", "fast one"]]  # sense counts
    assert fresh.ancestors("woman")["person"] == 2 and fresh.is_colour("blue") and not fresh.is_colour("silver")
    assert fresh.is_collective("group") and fresh.is_collective("sort") and not fresh.is_collective("cup")
    assert fresh.is_collective("herd") and fresh.is_collective("couple")  # the first sense of "group"
    assert fresh.ancestors("couple")["person"] == 1  # a social group: made of persons
    assert [fresh.names(s)[0] for s in fresh.main_senses("stroller")] == ["baby buggy"]  # an object before a person


def test_tokens_split_possessives_and_strip_punctuation():
    from lightning_wsg.lexicon.heads import tokens

    assert tokens("The MAN's dog_house, (ok) j's") == ["the", "man", "'s", "dog", "house", "ok", "j", "'s"]
    assert tokens("the man\u2019s hat") == ["the", "man", "'s", "hat"]  # a typographic apostrophe
    assert tokens("'s , .") == ["'s"]  # too short to be a word's possessive


def test_a_group_outside_of_something_is_the_group():
    # "outside of" ends the noun phrase once it has a noun ("the outside of a bus" is the bus)
    assert head_noun("a crowd outside of the stadium") == "crowd"


def test_head_with_modifiers_and_base_forms():
    from lightning_wsg.lexicon import head_with_modifiers

    assert head_with_modifiers("the man next to the car") == ["man"]
    assert head_with_modifiers("a black or white dog") == ["dog"] and head_with_modifiers("a dog or a cat") == ["dog"]
    assert head_with_modifiers("a man 's hard hat") == ["hard", "hat"]  # a possessive stops the modifiers
    assert head_with_modifiers("the kitchen wine glass") == ["kitchen", "wine", "glass"]  # two words at most
    assert head_with_modifiers("the old kitchen wine glass") == ["kitchen", "wine", "glass"]
    assert head_with_modifiers("the city bus stop sign") == ["bus", "stop", "sign"]  # not a third noun either
    assert head_with_modifiers("teddy bear") == ["teddy", "bear"]  # a first word is a modifier too
    # an adjective or a position word before the head is no part of its name ("White Horse", "top shelf")
    assert head_with_modifiers("a white horse") == ["horse"] and head_with_modifiers("the top shelf") == ["shelf"]
    # a head that is not the last word: what comes after it is no modifier
    assert head_with_modifiers("the boy barefoot") == ["boy"]
    assert head_with_modifiers("giraffe second from left") == ["giraffe"]  # a position after the head
    wn = WordNetNouns.load()
    assert wn.base_forms("hard-hat") == wn.base_forms("Hard_Hat") == ["hard hat"]
    assert wn.base_forms("t-shirt") == ["t-shirt"]
    assert wn.base_forms("foxes") == ["fox"] and wn.base_forms("xes") == ["xe"]  # "xes" is too short to be "x"
    # a plural needs a stem of two letters: "uses" is no plural of "us", "as" none of "a"
    assert wn.base_forms("uses") == ["use"] and wn.base_forms("as") == ["as"]


@pytest.mark.parametrize(
    ("phrase", "words", "why"),
    [
        ("the bear next to the tree", ["bear"], '"next to" ends the phrase before "next", so bear stays its last word'),
        ("the one with the hat", [], "no object before the preposition: none, not the hat after it"),
        ("a crowd outside the stadium", ["crowd"], '"outside" ends the phrase unless "of" follows it'),
        ("a chicken wing", ["chicken", "wing"], 'an "-ing" word that is mainly a noun goes on the phrase'),
        ("a horse led by a man", ["horse"], 'a last word that is mostly a verb in "-ed" is no head after a noun'),
        ("a blue and white boat", ["boat"], '"and" between colours: the colours are no modifiers of the boat'),
    ],
)
def test_where_the_first_noun_phrase_ends(phrase, words, why):
    from lightning_wsg.lexicon import head_with_modifiers

    assert head_with_modifiers(phrase) == words, why


def test_a_second_sense_is_followed_only_where_asked():
    """A trunk is a tree's trunk; read in two senses, it is also luggage, at every level."""
    wn = WordNetNouns.load()
    luggage = wn._senses["luggage"][0]
    assert not wn.reaches("trunk", "luggage") and wn.reaches("trunk", "luggage", senses=2)
    assert luggage not in wn.synset_distances("trunk") and wn.synset_distances("trunk", 2)[luggage] == 1
    assert "luggage" not in wn.ancestors("trunk") and wn.ancestors("trunk", senses=2)["luggage"] == 1
    # a class below the noun in its second sense: the matcher's senses reach the class names too
    assert WordNetMatcher(senses=2).distances("the luggage", ["trunk", "car"]) == [101.0, INF]
    assert WordNetMatcher().distances("the luggage", ["trunk", "car"]) == [INF, INF]


def test_plural_names_count_in_the_singular_at_their_nearest_distance():
    wn = WordNetNouns.load()
    # a herd's members are cattle, named "cows": the detector's cow, one step away
    assert wn.ancestors("herd")["cow"] == 1 and wn.ancestors("cattle")["cow"] == 0
    # a cow is a cow (0), though cattle, one step up, is also called "cows"
    assert wn.ancestors("cow")["cow"] == 0
    # jam's hypernym is also called "preserves", but a preserve is a domain or a reserve in its two main senses
    assert wn.ancestors("jam", senses=2)["preserves"] == 1 and "preserve" not in wn.ancestors("jam", senses=2)


def test_related_classes_follow_the_nearest_reading_of_the_noun():
    # "cows" is a lemma of its own (cattle itself) and the plural of cow (cattle one step up): the
    # nearer reading decides, so a bull, a kind of cattle, lies below the noun
    assert WordNetMatcher().distances("two cows", ["bull", "person"]) == [101.0, INF]
    # a class below the noun is read first and the siblings are not: pony below horse, zebra beside it
    assert WordNetMatcher().distances("a horse", ["pony", "zebra"]) == [101.0, INF]
    # without the downward reading the sibling: a class below the noun itself is none
    assert WordNetMatcher(downward=False).distances("a horse", ["pony", "zebra"]) == [INF, 202.0]


def test_a_class_name_wordnet_lacks_is_matched_as_it_is():
    # a vocabulary may name things WordNet lacks (an agent noun): the name itself still matches
    assert WordNetMatcher().distances("a kayaker", ["kayaker", "person", "dog"]) == [0.0, 0.0, INF]
