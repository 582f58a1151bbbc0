"""The distillation teacher (``docs/method.md``, section 6): detector classes matched to phrases.

For region ``r`` and phrase ``p`` the teacher scores ``t(r, p) = sum_c P(c | r) m(c, p)``,
where ``m(c, p)`` says how well the phrase describes the detector class NAME ``c``:

* ``"wordnet"`` (the default of the dataset configs): the phrase's head noun, parsed as
  real phrases and referring expressions have it ("two men" -> men, "the man in yellow
  coat" -> man, "bottom left" -> none), reaches a class when the class is the noun, a
  synonym or a hypernym of it in WordNet (woman, guy -> person; puppy -> dog; sedan ->
  car); of the classes an image's detections name, the nearest gets ``m = 1`` (the
  reference code's approach; :mod:`lightning_wsg.lexicon`).
* ``"mapping"``: a fixed ``head noun<TAB>class`` file (``mapping_file``), checked against
  ``vocabulary`` when the teacher is built.
* ``"lexical"``: 1 when the phrase ends in the whole class name (its last word naively
  singularised: a trailing ``"s"`` / ``"es"`` stripped, plus a few irregular plurals), else
  0: "a dog" is not "hot dog".
* ``"glove"``: cosine of GloVe 50-d vectors of the class name (words averaged) and of the
  phrase's head noun (``phrase_head="last"``: its last word with a vector) or its
  best-matching word (``phrase_head="all"``).
* ``"minilm"``: cosine of all-MiniLM-L6-v2 sentence embeddings of the class name and of
  the phrase text (``phrase_head="all"``) or its head noun (``"last"``).

For the embedding types an exact lexical head match always counts as similarity 1, and
``min_match`` is the similarity a class needs to count: with ``rescale=True`` (default)
``m = clamp((sim - min_match) / (1 - min_match), 0, 1)``, so classes below the threshold
add nothing and an exact match gives 1; with ``rescale=False`` ``m = max(sim, 0)``.

``P(c | r)``: with detector class probabilities ``class_probs`` ``[B, R, C]`` those are
used; with only a top-1 label per box, ``P(c | r)`` is the box's score on its label and 0
on every other class, so ``t(r, p) = score_r * m(label_r, p)``.

A phrase takes part in distillation (``kd_mask``) when its best similarity over the
candidate classes (the labels of its image's boxes, or the whole ``class_names``
vocabulary with ``class_probs``) reaches ``min_match`` and its teacher scores are not
all equal over the real regions (a flat teacher carries no signal).

The teacher has no parameters and no buffers: embeddings are loaded lazily and cached per
string in plain attributes, so nothing reaches ``state_dict``.

Example:
    >>> import torch
    >>> teacher = Teacher(matching="lexical")
    >>> t, kd = teacher(
    ...     [["the red ball", "the sky"]], [["ball", "dog"]],
    ...     scores=torch.tensor([[0.9, 0.8]]), proposal_mask=torch.tensor([[True, True]]),
    ... )
    >>> t[0]
    tensor([[0.9000, 0.0000],
            [0.0000, 0.0000]])
    >>> kd.tolist()
    [[True, False]]
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..lexicon.classes import MappingMatcher, WordNetMatcher, read_class_names
from .embeddings import GloveEmbeddings, MiniLMEmbeddings
from .towers import RecordsInitArgs

__all__ = ["DEFAULT_MIN_MATCH", "Teacher", "head_word", "phrase_texts", "singular_forms"]

#: Default ``min_match`` per matching type (see the report in the class docstring).
DEFAULT_MIN_MATCH = {"wordnet": 0.5, "mapping": 0.5, "lexical": 0.5, "glove": 0.8, "minilm": 0.55}
_DEFAULT_HEAD = {"wordnet": "last", "mapping": "last", "lexical": "last", "glove": "last", "minilm": "all"}
_BY_DISTANCE = ("wordnet", "mapping")
_IRREGULAR = {"men": "man", "women": "woman", "children": "child", "people": "person", "feet": "foot", "teeth": "tooth"}


def _words(text: str) -> list[str]:
    """Lower-cased words of a text, punctuation dropped (``"man-made"`` stays one word)."""
    return re.findall(r"[a-z0-9]+(?:[-'][a-z0-9]+)*", text.lower().replace("_", " "))


def head_word(text: str) -> str | None:
    """The head noun of a phrase: its last word (``None`` when it has none)."""
    words = _words(text)
    return words[-1] if words else None


def singular_forms(word: str) -> set[str]:
    """The word and its naive singulars (``"bushes"`` -> ``{"bushes", "bushe", "bush"}``)."""
    forms = {word}
    if word in _IRREGULAR:
        forms.add(_IRREGULAR[word])
    if word.endswith("s") and len(word) > 2:
        forms.add(word[:-1])
    if word.endswith("es") and len(word) > 3:
        forms.add(word[:-2])
    return forms


def phrase_texts(words: list[list[str]], phrase_spans: list[list[tuple[int, int]]]) -> list[list[str]]:
    """Phrase strings of a batch: the words of each span joined by spaces."""
    return [[" ".join(w[s:e]) for s, e in spans] for w, spans in zip(words, phrase_spans)]


def _lru(cache: OrderedDict, key: str, compute, max_size: int = 100_000):
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    value = cache[key] = compute(key)
    if len(cache) > max_size:
        cache.popitem(last=False)
    return value


class Teacher(RecordsInitArgs, nn.Module):
    """Teacher scores ``t(r, p)`` from detector classes matched to phrases; frozen.

    Defaults of ``min_match`` (similarities measured on common Flickr30K head nouns
    against COCO / Visual Genome style class names): ``"lexical"`` 0.5 (``m`` is 0 or 1);
    ``"glove"`` 0.8 (50-d GloVe is crude: someone/person 0.85, jeans/pants 0.90 pass, but
    guy/man 0.76 and puppy/dog 0.78 fail, while vague heads sit just below: something/person
    0.75, air/traffic light 0.79; related wrong classes pass anyway: dog/cat 0.92);
    ``"minilm"`` 0.55 (a dog/dog 0.84, a man/person 0.60, the crowd/people 0.71, a bike/
    bicycle 0.86 pass; something/child 0.50, the camera/car 0.49, a dog/cat 0.48 fail).
    Exact head-noun matches (plurals included) score 1 in every mode.

    Args:
        matching: ``"wordnet"``, ``"mapping"``, ``"glove"``, ``"minilm"`` or ``"lexical"``.
        min_match: similarity a class needs to count; ``None`` uses ``DEFAULT_MIN_MATCH``.
        phrase_head: ``"last"`` (the head noun) or ``"all"`` (glove: best-matching word,
            minilm: the whole phrase); ``None``: ``"last"`` for glove, ``"all"`` for minilm.
            Lexical matching always uses the head noun.
        rescale: map similarities in ``[min_match, 1]`` to ``[0, 1]`` (else raw, clipped at 0).
        full_score: spread the teacher's mass over every confident box of a matching class:
            a detector probability or score ``P`` counts as ``min(P / full_score, 1)``, so all
            boxes scored ``>= full_score`` weigh the same and the detector's ranking among them
            (which of two balls it liked better) is not passed on; ``None`` uses ``P`` as is.
        score_floor: with top-1 labels, a box's score ``s`` counts as
            ``score_floor + (1 - score_floor) * s``: every box of a matching class stands
            clearly above the boxes of other classes (the category signal) while the scores
            still rank the boxes of the class, more gently (0: raw scores). Ignored with
            class probabilities.
        glove_root: GloVe folder (``None``: the installed package).
        minilm_path: MiniLM folder (``None``: the installed package).
        mapping_file: ``head noun<TAB>class`` file of the ``"mapping"`` matching.
        vocabulary: the detector's class names (a list, or a file with one a line) that
            ``mapping_file`` is checked against; required with ``"mapping"``.
        wordnet_senses: how many of a head noun's main senses the ``"wordnet"`` matching follows.
        wordnet_siblings: when no class is the noun, a hypernym or a kind of it, the
            ``"wordnet"`` matching names a class one step below a specific hypernym at most
            this many steps above the noun ("donkey" -> horse, "cart" -> bicycle); 0: off.
    """

    def __init__(
        self,
        matching: Literal["wordnet", "mapping", "glove", "minilm", "lexical"] = "glove",
        min_match: float | None = None,
        phrase_head: Literal["last", "all"] | None = None,
        rescale: bool = True,
        full_score: float | None = None,
        score_floor: float = 0.0,
        glove_root: str | None = None,
        minilm_path: str | None = None,
        mapping_file: str | None = None,
        vocabulary: list[str] | str | None = None,
        wordnet_senses: int = 1,
        wordnet_siblings: int = 2,
    ) -> None:
        super().__init__()
        if matching not in DEFAULT_MIN_MATCH:
            raise ValueError(f"unknown matching {matching!r}")
        self.matching = matching
        self.min_match = DEFAULT_MIN_MATCH[matching] if min_match is None else float(min_match)
        self.phrase_head = phrase_head or _DEFAULT_HEAD[matching]
        if self.phrase_head not in ("last", "all"):
            raise ValueError(f"unknown phrase_head {phrase_head!r}")
        self.rescale = rescale
        if full_score is not None and not 0.0 < full_score <= 1.0:
            raise ValueError(f"full_score must lie in (0, 1], got {full_score}")
        self.full_score = full_score
        if not 0.0 <= score_floor < 1.0:
            raise ValueError(f"score_floor must lie in [0, 1), got {score_floor}")
        self.score_floor = float(score_floor)
        self.glove_root = glove_root
        self.minilm_path = minilm_path
        self._embedder: GloveEmbeddings | MiniLMEmbeddings | None = None
        self._cache: OrderedDict[str, Tensor] = OrderedDict()
        self._forms_key: tuple[str, ...] | None = None
        self._forms: dict[str, list[int]] = {}
        self._matcher: WordNetMatcher | MappingMatcher | None = None
        if matching == "wordnet":
            self._matcher = WordNetMatcher(senses=wordnet_senses, siblings=wordnet_siblings)
        elif matching == "mapping":
            if mapping_file is None or vocabulary is None:
                raise ValueError("matching='mapping' needs mapping_file and the detector's vocabulary")
            names = read_class_names(vocabulary) if isinstance(vocabulary, str) else list(vocabulary)
            self._matcher = MappingMatcher(mapping_file, names)
        elif mapping_file is not None:
            raise ValueError(f"mapping_file is only read by matching='mapping', not {matching!r}")

    def extra_repr(self) -> str:
        return (
            f"matching={self.matching!r}, min_match={self.min_match}, phrase_head={self.phrase_head!r}, "
            f"full_score={self.full_score}, score_floor={self.score_floor}"
        )

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_embedder"], state["_cache"] = None, OrderedDict()  # reloaded lazily
        return state

    # ------------------------------------------------------------------ matching
    def _class_forms(self, class_names: list[str]) -> dict[str, list[int]]:
        """Whole class names (last word in its singular forms) -> class indices (cached)."""
        key = tuple(class_names)
        if self._forms_key != key:
            by_form: dict[str, list[int]] = {}
            for c, name in enumerate(class_names):
                for alias in name.split(","):
                    words = _words(alias)
                    for form in singular_forms(words[-1]) if words else ():
                        by_form.setdefault(" ".join(words[:-1] + [form]), []).append(c)
            self._forms_key, self._forms = key, by_form
        return self._forms

    def _lexical(self, class_names: list[str], phrases: list[str]) -> Tensor:
        """1 where the phrase ends in the whole class name ("traffic lights": traffic light)."""
        by_form = self._class_forms(class_names)
        longest = max((len(f.split()) for f in by_form), default=1)
        rows, cols = [], []
        for p, phrase in enumerate(phrases):
            words = _words(phrase)
            for k in range(min(longest, len(words)), 0, -1):
                hits = {c for form in singular_forms(words[-1]) for c in by_form.get(" ".join(words[-k:-1] + [form]), [])}
                if hits:
                    rows += sorted(hits)
                    cols += [p] * len(hits)
                    break
        out = torch.zeros(len(class_names), len(phrases))
        out[rows, cols] = 1.0
        return out

    def distances(self, class_names: list[str], phrases: list[str]) -> Tensor:
        """``[C, P]`` WordNet steps (or 0 for a mapped class) from each phrase to each class; inf: none."""
        return torch.tensor([self._matcher.distances(p, class_names) for p in phrases]).reshape(len(phrases), -1).T

    def nearest_classes(self, class_names: list[str], phrases: list[str]) -> Tensor:
        """``[C, P]`` bool: the class(es) each phrase maps to among ``class_names`` (none: all False).

        Distance matchings keep the nearest classes; the others the best-matching class
        when it reaches ``min_match``.
        """
        if not class_names or not phrases:
            return torch.zeros(len(class_names), len(phrases), dtype=torch.bool)
        if self.matching in _BY_DISTANCE:
            d = self.distances(class_names, phrases)
            return (d == d.amin(dim=0, keepdim=True)) & d.isfinite()
        sim = self.similarity(class_names, phrases)
        return (sim == sim.amax(dim=0, keepdim=True)) & (sim >= self.min_match)

    def _glove_vectors(self, text: str, kind: str) -> Tensor:
        """Unit GloVe vectors ``[n, 50]`` of a class name (``n <= 1``) or a phrase's words."""
        if kind == "class":
            vectors = [self._embedder.text_vector(" ".join(_words(text)))]
        else:
            vectors = [self._embedder.vector(w) for w in _words(text)]
            vectors = [v for v in vectors if v is not None]
            vectors = vectors[-1:] if self.phrase_head == "last" else vectors
        vectors = [v for v in vectors if v is not None]
        return F.normalize(torch.stack(vectors), dim=-1) if vectors else torch.zeros(0, GloveEmbeddings.dim)

    def _load(self) -> None:
        if self._embedder is None and self.matching == "glove":
            self._embedder = GloveEmbeddings(self.glove_root)
        elif self._embedder is None and self.matching == "minilm":
            self._embedder = MiniLMEmbeddings(self.minilm_path)

    def _cosine(self, class_names: list[str], phrases: list[str]) -> Tensor:
        """Embedding cosines ``[C, P]`` (-1 where a side has no vector)."""
        self._load()
        if self.matching == "minilm":
            texts = [(head_word(p) if self.phrase_head == "last" else " ".join(_words(p))) or "" for p in phrases]
            cos = self._embedder.encode([" ".join(_words(c)) for c in class_names]) @ self._embedder.encode(texts).T
            empty = torch.tensor([not _words(c) for c in class_names])[:, None] | torch.tensor([not t for t in texts])
            return cos.masked_fill(empty, -1.0)
        classes = [_lru(self._cache, "c:" + c, lambda k: self._glove_vectors(k[2:], "class")) for c in class_names]
        words = [_lru(self._cache, "p:" + p, lambda k: self._glove_vectors(k[2:], "phrase")) for p in phrases]
        C = torch.stack([v[0] if len(v) else torch.zeros(GloveEmbeddings.dim) for v in classes])  # [C, d]
        W = torch.zeros(len(phrases), max(max(len(v) for v in words), 1), GloveEmbeddings.dim)
        valid = torch.zeros(W.shape[:2], dtype=torch.bool)
        for p, v in enumerate(words):
            W[p, : len(v)], valid[p, : len(v)] = v, True
        cos = torch.einsum("cd,pld->cpl", C, W).masked_fill(~valid, -1.0).amax(dim=-1)
        no_class = torch.tensor([len(v) == 0 for v in classes])[:, None]
        return cos.masked_fill(no_class, -1.0)

    def similarity(self, class_names: list[str], phrases: list[str]) -> Tensor:
        """Raw similarities ``[C, P]``: cosine, or 1 for an exact head-noun match (distance
        matchings: 1 for every class the phrase reaches, 0 otherwise)."""
        if self.matching in _BY_DISTANCE:
            return self.distances(class_names, phrases).isfinite().float()
        lexical = self._lexical(class_names, phrases)
        if self.matching == "lexical" or not class_names or not phrases:
            return lexical
        return torch.maximum(self._cosine(class_names, phrases), lexical)

    def match(self, class_names: list[str], phrases: list[str]) -> Tensor:
        """Matching scores ``m(c, p)`` ``[C, P]`` used by the teacher (see the module docstring)."""
        return self._to_match(self.similarity(class_names, phrases))

    def _to_match(self, sim: Tensor) -> Tensor:
        if not self.rescale:
            return sim.clamp(min=0.0)
        if self.min_match >= 1.0:
            return (sim >= self.min_match).float()
        return ((sim - self.min_match) / (1.0 - self.min_match)).clamp(0.0, 1.0)

    def _spread(self, probs: Tensor) -> Tensor:
        """``min(P / full_score, 1)`` (identity when ``full_score`` is ``None``)."""
        return probs if self.full_score is None else (probs / self.full_score).clamp(max=1.0)

    # ------------------------------------------------------------------ forward
    @torch.no_grad()
    def forward(
        self,
        phrase_texts: list[list[str]],
        labels: list[list[str]] | None,
        scores: Tensor,
        proposal_mask: Tensor,
        class_probs: Tensor | None = None,
        class_names: list[str] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Teacher scores for every phrase and region of each image.

        Args:
            phrase_texts: ``B`` lists of phrase strings (shorter lists are padded; ``""``
                is padding).
            labels: per image, the top-1 class name of each box (at least its real boxes);
                may be ``None`` when ``class_probs`` is given.
            scores: ``[B, R]`` detector confidences of the top-1 labels.
            proposal_mask: ``[B, R]`` bool, real boxes.
            class_probs: optional ``[B, R, C]`` class probabilities (used instead of
                ``labels`` and ``scores``).
            class_names: the ``C`` class names of ``class_probs``.

        Returns:
            ``teacher_scores`` ``[B, P, R]`` (zero on padding) and ``kd_mask`` ``[B, P]`` bool.
        """
        device = scores.device
        proposal_mask = proposal_mask.to(torch.bool)
        B, R = proposal_mask.shape
        P = max((len(row) for row in phrase_texts), default=0)
        rows = [list(row) + [""] * (P - len(row)) for row in phrase_texts]
        phrases = sorted({t for row in rows for t in row if t.strip()})
        if class_probs is not None:
            if class_names is None or len(class_names) != class_probs.shape[-1]:
                raise ValueError("class_probs needs class_names, one per column")
            names = list(class_names)
            probs = self._spread(class_probs.float()) * proposal_mask[..., None]
            present = torch.ones(B, len(names), dtype=torch.bool, device=device)
        else:
            if labels is None:
                raise ValueError("the teacher needs labels or class_probs")
            real_box = proposal_mask.tolist()
            names = sorted({lab for b in range(B) for r, lab in enumerate(labels[b][:R]) if real_box[b][r]})
            column = {n: c for c, n in enumerate(names)}
            index = [[column[lab] if real_box[b][r] else -1 for r, lab in enumerate(labels[b][:R])] for b in range(B)]
            index = torch.tensor([row + [-1] * (R - len(row)) for row in index], dtype=torch.long, device=device)
            onehot = (
                F.one_hot(index.clamp(min=0), max(len(names), 1))[..., : len(names)].float() * (index >= 0)[..., None]
            )
            confidence = self._spread(scores.float())
            probs = onehot * (self.score_floor + (1.0 - self.score_floor) * confidence)[..., None]
            present = onehot.bool().any(dim=1)
        teacher = torch.zeros(B, P, R, device=device)
        kd_mask = torch.zeros(B, P, dtype=torch.bool, device=device)
        if not phrases or not names:
            return teacher, kd_mask
        if self.matching == "minilm":
            self._load()
            self._embedder.to(device)

        column = {p: u for u, p in enumerate(phrases)}
        pidx = torch.tensor([[column.get(t, -1) for t in row] for row in rows], dtype=torch.long, device=device)
        real = pidx >= 0
        pidx = pidx.clamp(min=0)
        if self.matching in _BY_DISTANCE:
            # per image, the nearest of the classes its detections name: a "woman" is taught by
            # the "woman" boxes where the detector saw some, else by the "person" boxes
            d = self.distances(names, phrases).to(device)[None].expand(B, -1, -1)  # [B, C, U]
            d = d.masked_fill(~present[..., None], float("inf"))
            nearest = d.amin(dim=1, keepdim=True)
            m = ((d == nearest) & nearest.isfinite()).float()
            t_all = torch.einsum("brc,bcu->bru", probs, m)
            best = torch.gather(nearest[:, 0].isfinite().float(), 1, pidx) * 2.0 - 1.0  # 1 reached, -1 not
        else:
            sim = self.similarity(names, phrases).to(device)  # [C, U]
            t_all = probs @ self._to_match(sim)  # [B, R, U]
            best = sim[:, pidx].permute(1, 2, 0).masked_fill(~present[:, None, :], -1.0).amax(dim=-1)  # [B, P]
        teacher = torch.gather(t_all, 2, pidx[:, None, :].expand(B, R, P)).transpose(1, 2)
        teacher = teacher * proposal_mask[:, None, :] * real[..., None]
        t_max = teacher.masked_fill(~proposal_mask[:, None, :], float("-inf")).amax(dim=-1)
        t_min = teacher.masked_fill(~proposal_mask[:, None, :], float("inf")).amin(dim=-1)
        kd_mask = real & (best >= self.min_match) & (t_max - t_min > 1e-6)
        return teacher, kd_mask
