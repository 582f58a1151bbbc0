"""The project's own documentation: a short README with a fixed first screen, no pointer to notes
outside the repository, and relative links (and their headings) that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers.shared import ANNOTATION_SOURCES, require_shared

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"

MAX_README_LINES = 260

#: Everything above README's first ``##`` heading: what it is, the two commands, what the demo gives.
FIRST_SCREEN = """\
# lightning_wsg

Weakly supervised phrase grounding in PyTorch Lightning: the method of Wang et al.,
"Improving Weakly Supervised Visual Grounding by Contrastive Knowledge Distillation"
(CVPR 2021). From image-caption pairs alone it learns which region each phrase of a
caption refers to. An object detector, at training time only, names what is in each
region; a region-phrase score is distilled from soft matches between those class names
and the phrases (a KL term), and an image-sentence score built from the region-phrase
scores is trained with InfoNCE against the other images of the batch. At test time each
phrase takes its highest-scoring proposal: no detector classification is needed.

```bash
make demo   # set-up + train and test on the built-in synthetic world (CPU)
make test   # set-up + the whole test suite
```

Both create `.venv` and install the package when it is missing (Python 3.10+, `pip`;
torch 2.14.1 / torchvision 0.29.1 are pinned). `make demo` generates a synthetic grounding
world once (`outputs/demo/world`), trains with `lightning fit --config cli_configs/demo.yaml`,
then runs `lightning test` on the best checkpoint and prints the test metrics; its last lines
name the checkpoint, the test report, the TensorBoard logs and the command that exports the
model to share ("Sharing a trained model").

The demo trains the paper's method with the paper's distillation settings (WordNet
class matching, KL towards the teacher, tau 1 / 2, top-K 8, the reference lambda ramp scaled
to the run) on a world whose captions name objects as real captions do ("a toddler", "the
puppy", "a sedan") while the simulated detector says "person", "dog", "car". Measured on this
2-core machine (the benchmark's seed-0 run of exactly this config, 128 s of training): `test/acc`
0.892 (union box, IoU >= 0.5), `test/pointing` 0.924, best `val/acc` 0.879; the world's upper
bound (phrases some proposal reaches) is 0.94. On a fresh clone after `make test` had installed
`.venv`, `make demo` took 2 min 46 s (world generation, 3 epochs, test) and printed exactly
these metrics. The run is deterministic on a given CPU; its last digits depend on the CPU's
vector instructions: 0.892 with AVX-512 kernels, 0.877 with AVX2 ones, 0.882 on the machine of
the first measurement ([docs/benchmarks.md](docs/benchmarks.md#the-demo-on-other-cpus)).

"""

#: Notes that live outside the repository; the package, configs and docs must not send readers there.
FOREIGN_REFERENCES = ("METHOD.md", "DATA.md", "../shared")
#: Where those references must not appear (folders are searched recursively).
SCANNED = (REPO / "lightning_wsg", REPO / "cli_configs", DOCS, README)
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".txt", ".json", ".ini", ".toml", ".cfg", ".sh"}

#: Link targets that another change adds (the feature-world page and its recommended config):
#: a link to them may point nowhere yet; every other target must exist.
PENDING_TARGETS: set[str] = set()

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.MULTILINE)


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code (brackets there are no links)."""
    return _INLINE_CODE.sub("", _FENCE.sub("", text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The heading anchors of a Markdown file (repeated headings get ``-1``, ``-2``... as on GitHub)."""
    seen: dict[str, int] = {}
    out = set()
    for _, heading in _HEADING.findall(_FENCE.sub("", path.read_text(encoding="utf-8"))):
        slug = _slug(heading)
        count = seen.get(slug, 0)
        out.add(slug if count == 0 else f"{slug}-{count}")
        seen[slug] = count + 1
    return out


def relative_links(path: Path) -> list[str]:
    """The link and image targets of a Markdown file that are neither URLs nor mail addresses."""
    targets = _LINK.findall(_prose(path.read_text(encoding="utf-8")))
    return [t for t in targets if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", t)]


def broken_links(path: Path, repo: Path = REPO, pending: set[str] = PENDING_TARGETS) -> list[str]:
    """``"target (why)"`` for each relative link of ``path`` whose file or heading does not exist."""
    broken = []
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        try:
            name = resolved.relative_to(repo.resolve()).as_posix()
        except ValueError:
            broken.append(f"{target} (outside the repository)")
            continue
        if not resolved.exists():
            if name not in pending:
                broken.append(f"{target} (no such file: {name})")
            continue
        if anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target} (no heading '{anchor}' in {name})")
    return broken


def foreign_references(paths=SCANNED) -> list[str]:
    """``"file:line: reference"`` for each mention of a note outside the repository."""
    found = []
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            if path.suffix not in TEXT_SUFFIXES or "__pycache__" in path.parts:
                continue
            for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                found += [f"{path.relative_to(REPO)}:{lineno}: {ref}" for ref in FOREIGN_REFERENCES if ref in line]
    return found


def markdown_pages() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


def test_readme_first_screen_is_unchanged():
    text = README.read_text(encoding="utf-8")
    assert text.startswith(FIRST_SCREEN), "README.md's first screen (up to the first '## ') changed"
    assert text[len(FIRST_SCREEN) :].startswith("## "), "the first screen must end at README's first '## ' heading"


def test_no_references_to_notes_outside_the_repository():
    found = foreign_references()
    assert not found, "references to notes outside the repository:\n" + "\n".join(found)


@pytest.mark.parametrize("page", markdown_pages(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_reach_existing_files_and_headings(page):
    broken = broken_links(page)
    assert not broken, f"{page.relative_to(REPO)}: broken links:\n" + "\n".join(broken)


def test_the_link_checker_sees_what_it_must(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A page\n\n## The `s(r, p)` score\n\n## Again\n\n## Again\n")
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](docs/a.md#the-sr-p-score) [twice](docs/a.md#again-1) ![img](docs/missing.png)\n"
        "[gone](docs/nowhere.md) [bad anchor](docs/a.md#nowhere) [self](#top) [web](https://example.com/x.md)\n"
        "```\n[in code](docs/code.md)\n```\n`[inline](docs/inline.md)` [pending](docs/later.md)\n# Top\n"
    )
    assert broken_links(page, repo=tmp_path, pending={"docs/later.md"}) == [
        "docs/missing.png (no such file: docs/missing.png)",
        "docs/nowhere.md (no such file: docs/nowhere.md)",
        "docs/a.md#nowhere (no heading 'nowhere' in docs/a.md)",
    ]


@pytest.mark.parametrize(
    "folder, name, source",
    [
        ("flickr30k_entities", "annotations.tar.gz", "github.com/BryanPlummer/flickr30k_entities"),
        ("refcoco", "refcoco_unc_testA.csv.gz", "github.com/lichengunc/refer"),
        ("visual_genome", "vg_objects_vocab.txt", "github.com/peteanderson80/bottom-up-attention"),
    ],
)
def test_a_missing_annotation_file_skips_naming_its_source_and_the_script(tmp_path, monkeypatch, folder, name, source):
    monkeypatch.delenv("CI", raising=False)
    missing = tmp_path / folder / name
    expected = rf"^the files not found: {re.escape(str(missing))}\. Source: "
    with pytest.raises(pytest.skip.Exception, match=expected) as info:
        require_shared(missing, "the files")
    message = str(info.value)
    assert source in message and "scripts/get_annotations.sh <folder>" in message
    assert [s for s in ANNOTATION_SOURCES.values() if s in message] == [ANNOTATION_SOURCES[folder]]
    assert (REPO / "scripts" / "get_annotations.sh").is_file()
    monkeypatch.setenv("CI", "true")
    failure = rf"{re.escape(source)}.*CI=true, so a missing shared file is a failure"
    with pytest.raises(pytest.fail.Exception, match=failure):
        require_shared(missing, "the files")
