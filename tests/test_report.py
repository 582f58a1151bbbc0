"""The HTML test report: its content from a real ``lightning test`` run, and the page in a real browser.

The browser test renders the report with headless Chromium (Debian's ``chromium-headless-shell``
or ``chromium``): a screenshot that must not be blank, and the DOM the browser built, which must
hold the phrases, metric rows and gallery items of the run. Without a browser it skips and says
how to get one (``make test`` installs it with apt as root on Debian); under ``CI=true`` a
missing browser is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from fnmatch import fnmatch
from html.parser import HTMLParser
from pathlib import Path

import pytest
from helpers.cli import FLICKR_YAML, REPO, TINY_MODEL_YAML, data_args, tiny_model_args, trainer_args
from helpers.flickr import make_tiny_flickr
from helpers.shared import in_ci
from PIL import Image

from lightning_wsg.callbacks.report import PhraseRecord, TestReport, proposal_rows, render_report, size_rows, type_rows
from lightning_wsg.cli import main
from lightning_wsg.report_html import MAX_TYPES, stylesheet

REPORT_YAML = str(REPO / "cli_configs" / "report.yaml")
DDP_SIM_YAML = str(REPO / "cli_configs" / "trainer" / "ddp_sim.yaml")
BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome", "chrome-headless-shell")
#: flags for a browser that must not reach the network or keep state
BROWSER_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
)  # fmt: skip
NUM_GALLERY = 3


class Page(HTMLParser):
    """What a test checks in a report: counts of phrases, metric rows, gallery items, chart bars, URLs.

    ``cards`` maps each summary card's label to the text it shows; ``rows`` holds per chart one
    ``(label, value text, accuracy bar share, upper-bound bar share)`` per bar, the shares read
    from the drawn widths against the chart's 0 % and 100 % grid lines.
    """

    def __init__(self, text: str) -> None:
        super().__init__()
        self.num_phrases: int | None = None
        self.metric_rows: list[str] = []
        self.gallery: dict[str, list[float]] = defaultdict(list)
        self.bars: dict[str, list[int]] = defaultdict(list)
        self.cards: dict[str, str] = {}
        self.rows: dict[str, list[tuple[str, str, float, float]]] = defaultdict(list)
        self.sources: list[str] = []
        self.tags: Counter[str] = Counter()
        self._chart: str | None = None
        self._card_value: str | None = None
        self._capture: str | None = None  # the field whose text is being read
        self._text = ""
        self._label = ""
        self._grid: list[float] = []
        self._row: dict = {}
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags[tag] += 1
        classes = a.get("class", "").split()
        if a.get("id") == "num-phrases":
            self.num_phrases = int(a["data-count"])
        if tag == "tr" and "metric" in classes:
            self.metric_rows.append(a["data-metric"])
        if tag == "figure" and "item" in classes:
            self.gallery[a["data-kind"]].append(float(a["data-iou"]))
        if tag == "figure" and "chart" in classes:
            self._chart, self._grid = a["data-chart"], []
        if tag == "div" and classes in (["v"], ["l"]):
            self._capture, self._text = classes[0], ""
        if tag == "line" and self._chart is not None:
            self._grid.append(float(a["x1"]))
        if tag == "title" and self._chart is not None:
            self._capture, self._text = "title", ""
        if tag == "rect" and "bar" not in classes and self._chart is not None:  # a row's upper-bound bar comes first
            self._row = {"bound": self._share(a)}
        if tag == "rect" and "bar" in classes:
            self.bars[self._chart].append(int(a["data-n"]))
            self._row["acc"] = self._share(a)
        if tag == "tspan" and a.get("font-weight") == "600":
            self._capture, self._text = "value", ""
        for name in ("src", "href"):
            if name in a:
                self.sources.append(a[name])

    def _share(self, rect: dict[str, str]) -> float:
        zero, full = min(self._grid), max(self._grid)
        assert float(rect["x"]) == zero, "a bar starts at the 0 % line"
        return float(rect["width"]) / (full - zero)

    def handle_data(self, data: str) -> None:
        if self._capture is not None:
            self._text += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "div" and self._capture == "v":
            self._card_value, self._capture = self._text, None
        elif tag == "div" and self._capture == "l":
            self.cards[self._text] = self._card_value or ""
            self._capture = None
        elif tag == "title" and self._capture == "title":
            self._row, self._label, self._capture = {}, self._text, None
        elif tag == "tspan" and self._capture == "value":
            self.rows[self._chart].append((self._label, self._text, self._row["acc"], self._row["bound"]))
            self._capture = None
        elif tag == "figure":
            self._chart = None


# ---------------------------------------------------------------- a real `lightning test` run
@pytest.fixture(scope="module")
def tested(tiny_flickr, tmp_path_factory: pytest.TempPathFactory):
    """``lightning test`` (weights as initialised) with ``cli_configs/report.yaml`` on the tiny dataset."""
    tmp = tmp_path_factory.mktemp("report")
    args = [
        "test",
        "--config", FLICKR_YAML, "--config", TINY_MODEL_YAML, "--config", REPORT_YAML,
        *data_args(tiny_flickr.root, tiny_flickr.image_dir, tiny_flickr.detections),
        *tiny_model_args(), *trainer_args(tmp),
        "--data.image_size=64", "--data.batch_size=4", "--data.num_workers=0",
        f"--trainer.callbacks.output_dir={tmp / 'out'}", f"--trainer.callbacks.num_gallery={NUM_GALLERY}",
    ]  # fmt: skip
    cli = main(args)
    report = next(c for c in cli.trainer.callbacks if isinstance(c, TestReport))
    entries = cli.datamodule.datasets["test"].entries
    return {
        "path": tmp / "out" / "report.html",
        "callback": report,
        "metrics": {k: float(v) for k, v in cli.trainer.callback_metrics.items()},
        "num_phrases": sum(len(e.phrase_spans) for e in entries),
    }


def test_report_holds_the_runs_phrases_metrics_charts_and_gallery(tested) -> None:
    path, metrics = tested["path"], tested["metrics"]
    assert tested["callback"].path == path and path.is_file()
    text = path.read_text(encoding="utf-8")
    page = Page(text)
    n = tested["num_phrases"]
    assert page.num_phrases == n == metrics["test/num_phrases"] > 2 * NUM_GALLERY
    # its records are the metrics' phrases: the same accuracy and upper bound
    records = tested["callback"].records
    assert sum(r.correct for r in records) / n == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert sum(r.reachable for r in records) / n == pytest.approx(metrics["test/upper_bound"], abs=1e-6)
    # and the page's cards show the logged values
    assert page.cards["accuracy"] == f"{100 * metrics['test/acc']:.1f}%"
    assert page.cards["upper bound"] == f"{100 * metrics['test/upper_bound']:.1f}%"
    assert page.cards["phrases"] == f"{n:,}"
    # one table row per logged metric but the per-type accuracies (charted instead)
    logged = {k[5:] for k in metrics if k.startswith("test/") and (k == "test/acc_any" or "/acc_" not in k)}
    assert sorted(page.metric_rows) == sorted(logged) and "acc" in page.metric_rows
    # the size and proposal charts each share out every phrase once; a typed phrase counts once per type
    assert sum(page.bars["size"]) == sum(page.bars["proposals"]) == n
    assert sum(page.bars["type"]) == sum(max(1, len(r.types)) for r in records)
    # the worst and best galleries: full, disjoint by IoU order
    assert len(page.gallery["worst"]) == len(page.gallery["best"]) == NUM_GALLERY
    assert page.gallery["worst"] == sorted(page.gallery["worst"])
    assert max(page.gallery["worst"]) <= min(page.gallery["best"])
    # self-contained: no script, stylesheet link or frame, every picture inlined, no web address at all
    assert page.tags["script"] == page.tags["link"] == page.tags["iframe"] == 0
    assert page.tags["img"] == 2 * NUM_GALLERY and all(s.startswith("data:image/") for s in page.sources)
    outside_pictures = re.sub(r'"data:image/[^"]*"', '""', text)
    assert not re.search(r"https?:|//[a-z0-9]|@import|url\(", outside_pictures, re.IGNORECASE)


def _record(k: int, correct: bool, reachable: bool, types: list[str], area: float, proposals: int) -> PhraseRecord:
    return PhraseRecord(
        "test", f"s{k}", f"i{k}", "a dog and a cat", (0, 2), "a dog", types, correct,
        0.9 if correct else 0.1, 0.5, area, proposals, reachable,
    )  # fmt: skip


#: hand records where accuracy (3 of 7), accuracy among the reachable (3 of 5) and the upper
#: bound (5 of 7) all differ, overall and in most bars: a chart or card that mixes them shows it
HAND_RECORDS = [
    _record(0, True, True, ["animals"], 0.004, 10),
    _record(1, False, True, ["animals", "people"], 0.004, 10),
    _record(2, False, False, ["animals"], 0.004, 30),
    _record(3, True, True, [], 0.6, 30),
    _record(4, True, True, ["people"], 0.04, 30),
    _record(5, False, True, ["people"], 0.04, 10),
    _record(6, False, False, ["people"], 0.25, 10),
]


def test_charts_and_gallery_order_on_hand_records() -> None:
    records = HAND_RECORDS
    assert type_rows(records, known=("people", "animals")) == [
        ("people", 4, 1, 3),
        ("animals", 3, 1, 2),
        ("(no type)", 1, 1, 1),
    ]
    assert size_rows(records) == [
        ("< 0.5%", 3, 1, 2),
        ("3%\u20135%", 2, 1, 2),
        ("20%\u201330%", 1, 0, 0),
        ("\u2265 50%", 1, 1, 1),
    ]
    assert proposal_rows(records) == [("10", 4, 1, 3), ("30", 3, 2, 2)]
    many = [_record(k, k % 2 == 0, True, [], 0.1, 5 + k) for k in range(60)]
    rows = proposal_rows(many)
    assert len(rows) <= 6 and sum(r[1] for r in rows) == 60 and rows[0][0].startswith("5\u2013")
    page = Page(render_report(records, {"test/acc": 0.75, "test/num_phrases": 4.0}, [(records[1], "data:,")]))
    assert page.num_phrases == 7 and page.metric_rows == ["acc", "num_phrases"]
    assert page.gallery == {"worst": [0.1]}


def test_cards_and_bars_show_accuracy_and_upper_bound_of_all_phrases() -> None:
    """The shown percentages, worked out by hand: accuracy over every phrase, not the reachable ones."""
    page = Page(render_report(HAND_RECORDS, {}, phrase_types=("people", "animals")))
    assert page.cards == {
        "phrases": "7",
        "images": "7",
        "sentences": "7",
        "accuracy": "42.9%",  # 3 / 7 (3 / 5 reachable would read 60.0%)
        "upper bound": "71.4%",  # 5 / 7
    }
    # per bar: label, the value written beside it (accuracy), the accuracy bar and the upper-bound bar behind it
    expected = {
        "type": [("people", 1, 3, 4), ("animals", 1, 2, 3), ("(no type)", 1, 1, 1)],
        "size": [("< 0.5%", 1, 2, 3), ("3%\u20135%", 1, 2, 2), ("20%\u201330%", 0, 0, 1), ("\u2265 50%", 1, 1, 1)],
        "proposals": [("10", 1, 3, 4), ("30", 2, 2, 3)],
    }
    assert set(page.rows) == set(expected)
    for chart, rows in expected.items():
        shown = page.rows[chart]
        assert [(label, value) for label, value, _, _ in shown] == [
            (label, f"{100 * correct / n:.1f}%") for label, correct, _, n in rows
        ], chart
        assert [acc for _, _, acc, _ in shown] == pytest.approx([c / n for _, c, _, n in rows], abs=1e-3), chart
        assert [bound for *_, bound in shown] == pytest.approx([r / n for _, _, r, n in rows], abs=1e-3), chart
        assert page.bars[chart] == [n for *_, n in rows], chart
    assert page.rows["type"][0][1] == "25.0%" and page.rows["proposals"][1][1] == "66.7%"


def test_type_rows_order_known_types_then_by_frequency_then_by_name() -> None:
    records = [_record(k, k < 2, True, types, 0.1, 10) for k, types in enumerate(
        [["zebra"], ["zebra", "cat"], ["cat"], ["ant"], ["bee"], ["bee"], []]
    )]  # fmt: skip
    # zebra, cat and bee twice, ant once; ties by name
    assert [r[0] for r in type_rows(records)] == ["bee", "cat", "zebra", "(no type)", "ant"]
    assert [r[0] for r in type_rows(records, known=("zebra", "dog"))] == ["zebra", "bee", "cat", "(no type)", "ant"]
    assert type_rows(records)[2] == ("zebra", 2, 2, 2)
    # at most MAX_TYPES bars: the known first, then the most frequent
    many = [_record(k, False, False, [f"t{k:02d}"] * 1 + (["common"] if k % 2 else []), 0.1, 10) for k in range(30)]
    rows = type_rows(many, known=("t29",))
    assert len(rows) == MAX_TYPES == 20
    assert [r[0] for r in rows[:3]] == ["t29", "common", "t00"] and rows[1][1] == 15 and rows[-1][0] == "t17"


def test_size_rows_put_an_area_on_an_edge_in_the_bin_above() -> None:
    areas = [0.0, 0.00499, 0.005, 0.01, 0.0999, 0.1, 0.5, 1.0]
    rows = size_rows([_record(k, True, k % 2 == 0, [], a, 10) for k, a in enumerate(areas)])
    assert rows == [
        ("< 0.5%", 2, 2, 1),
        ("0.5%\u20131%", 1, 1, 1),
        ("1%\u20132%", 1, 1, 0),
        ("7.5%\u201310%", 1, 1, 1),
        ("10%\u201315%", 1, 1, 0),
        ("\u2265 50%", 2, 2, 1),
    ]


def test_proposal_rows_one_bar_per_count_up_to_max_bars_then_sixths() -> None:
    eight = [_record(k, True, True, [], 0.1, 10 + k % 8) for k in range(16)]
    assert [r[:2] for r in proposal_rows(eight)] == [(str(10 + v), 2) for v in range(8)]
    nine = [_record(k, True, True, [], 0.1, 10 + k) for k in range(9)]
    assert len(proposal_rows(nine)) == 6 and len(proposal_rows(nine, max_bars=9)) == 9
    assert [r[0] for r in proposal_rows(eight, max_bars=7)] == ["10", "11", "12\u201313", "14", "15", "16\u201317"]
    # (the sixths of the 16 sorted counts start at 10, 11, 12, 14, 15, 16; each range ends before the next)
    # 60 phrases with 5..64 proposals: six ranges of ten phrases each, from the sorted counts' sixths
    many = [_record(k, k % 2 == 0, k % 3 == 0, [], 0.1, 5 + k) for k in range(60)]
    assert proposal_rows(many) == [
        ("5\u201314", 10, 5, 4),
        ("15\u201324", 10, 5, 3),
        ("25\u201334", 10, 5, 3),
        ("35\u201344", 10, 5, 4),
        ("45\u201354", 10, 5, 3),
        ("55\u201364", 10, 5, 3),
    ]
    # a count that fills several sixths starts one range only: of the 39 sorted counts the sixths
    # (0, 6, 13, 19, 26, 32) are 3 but the last, 6; the last range ends at the largest count
    skewed = [_record(k, False, False, [], 0.1, n) for k, n in enumerate([3] * 30 + list(range(4, 13)))]
    assert proposal_rows(skewed) == [("3\u20135", 32, 0, 0), ("6\u201312", 7, 0, 0)]


#: the golden page: every string and number of the page (its stylesheet left out, checked above)
GOLDEN_PAGE = Path(__file__).parent / "golden" / "report_page.html"


def golden_report() -> str:
    """A page with two splits, escaped text, a long label, many proposal counts and both galleries."""
    val = [
        PhraseRecord(
            "val", f"v{k}", f"img{k // 2}", 'a "big" <dog> & a cat on a mat', (1, 3), '"big" <dog>',
            # labels of 22 characters (the longest drawn whole) and 23 (cut)
            ["a very long phrase type name", "animals"] if k % 3 == 0
            else ["twenty-two characters!"] if k == 1 else ["twenty-three characters"] if k == 2 else ["animals"],
            k % 4 == 0,
            0.12345 + k / 100, 0.5 + k / 10, 0.001 * k, 10 + 3 * k, k % 4 != 3,
        )  # fmt: skip
        for k in range(12)
    ]
    records = HAND_RECORDS + val
    metrics = {
        "test/acc": 0.4285714, "test/num_phrases": 1234.0, "test/recall@5": 0.5, "test/acc_people": 0.25,
        "test/my_score": 0.125, "test/loss/kd": 0.0625, "val/acc": 0.25, "val/upper_bound": 0.75,
    }  # fmt: skip
    worst = [(val[1], "data:image/png;base64,AAAA"), (HAND_RECORDS[2], "data:image/png;base64,BBBB")]
    best = [(val[0], "data:image/png;base64,CCCC"), (HAND_RECORDS[3], "data:image/png;base64,DDDD")]  # 2 types, none
    return render_report(
        records, metrics, worst, best, title="Run <1> & co", phrase_types=("scene", "animals", "people"),
        details={"checkpoint": "best.ckpt", "model": "<wsg>"},
    )  # fmt: skip


def test_the_page_matches_its_golden_copy() -> None:
    """Every text, attribute and number of the page, against a copy checked by eye once.

    After a deliberate change of the page, rewrite the copy with
    ``UPDATE_GOLDEN=1 pytest tests/test_report.py -k golden`` and review its diff.
    """
    page = golden_report().replace(stylesheet(), "/* report.css */\n")
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN_PAGE.parent.mkdir(exist_ok=True)
        GOLDEN_PAGE.write_text(page, encoding="utf-8")
    assert page == GOLDEN_PAGE.read_text(encoding="utf-8")


def test_the_golden_page_says_what_its_records_say() -> None:
    """The values of the golden page that matter, read back (so that its copy was right to keep)."""
    text = golden_report()
    page = Page(text)
    assert page.num_phrases == 19 and page.cards["images"] == "13" and page.cards["sentences"] == "19"
    assert page.cards["accuracy"] == "31.6%" and page.cards["upper bound"] == "73.7%"  # 6 / 19, 14 / 19
    # the table: known metrics in their order, then the others; per-type accuracies left out
    assert page.metric_rows == ["acc", "recall@5", "upper_bound", "num_phrases", "my_score", "loss/kd"]
    assert '<td>loss/kd</td><td class="num">6.2%</td>' in text  # a name may hold a "/" after the split's
    assert '<td class="num">1,234</td>' in text and '<td class="num">42.9%</td>' in text
    assert '<tr class="metric" data-metric="upper_bound"><td>upper_bound</td><td class="num"></td>' in text
    # escaped everywhere, the phrase marked in its sentence
    assert "<dog>" not in text and "<h1>Run &lt;1&gt; &amp; co</h1>" in text and "model <b>&lt;wsg&gt;</b>" in text
    assert 'a <mark>&quot;big&quot; &lt;dog&gt;</mark> &amp; a cat on a mat' in text
    assert 'alt="&quot;big&quot; &lt;dog&gt;"' in text
    # a long label is cut in the chart, whole in its tooltip
    assert "<title>a very long phrase type name</title>a very long phrase ty\u2026</text>" in text
    assert "<title>twenty-two characters!</title>twenty-two characters!</text>" in text
    assert "<title>twenty-three characters</title>twenty-three characte\u2026</text>" in text
    assert "a very long phrase type name, animals</div>" in text and "&middot; no type</div>" in text
    assert page.gallery == {"worst": [0.1335, 0.1], "best": [0.1235, 0.9]}
    assert [label for label, *_ in page.rows["proposals"]][:2] == ["10", "30"]
    # the known types first, in their order (people are the more frequent in the test split)
    assert [label for label, *_ in page.rows["type"]][:3] == ["animals", "people", "(no type)"]
    assert len([t for t in page.rows["proposals"]]) == 2 + 6  # the val split has 12 counts: sixths


def test_a_page_of_one_phrase_or_none_and_no_metric() -> None:
    text = render_report(HAND_RECORDS[:1], {})
    page = Page(text)
    assert "<title>Grounding test report</title>" in text and "<h1>Grounding test report</h1>" in text
    assert '<h2>Metrics</h2><p class="empty">No metric was logged.</p></section>' in text and page.metric_rows == []
    assert page.cards["accuracy"] == page.cards["upper bound"] == "100.0%" and page.cards["phrases"] == "1"
    assert '<div class="gallery" data-kind="worst"><p class=empty>none</p></div>' in text
    page = Page(render_report([], {}))
    assert page.num_phrases == 0 and page.cards["accuracy"] == page.cards["upper bound"] == "0.0%"
    assert not page.rows  # no split, no chart


def test_the_page_inlines_the_stylesheet_as_it_is() -> None:
    css = (REPO / "lightning_wsg" / "report.css").read_text(encoding="utf-8")
    assert stylesheet() == css and css.startswith("body{") and css.endswith("}\n")
    assert f"<style>\n{css}</style></head>" in render_report(HAND_RECORDS, {})


def test_a_wheel_carries_every_data_file_of_the_package() -> None:
    """``[tool.setuptools.package-data]`` names each non-Python file under ``lightning_wsg/`` (the stylesheet too)."""
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")
    package = REPO / "lightning_wsg"
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = pyproject["tool"]["setuptools"]["package-data"]["lightning_wsg"]
    data = [
        p.relative_to(package).as_posix()
        for p in package.rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
    ]
    assert "report.css" in data
    assert [f for f in data if not any(fnmatch(f, pattern) for pattern in patterns)] == []


# ------------------------------------------------------------------------- a real browser
def find_browser() -> str:
    """A headless-capable Chromium on PATH; skip (fail under CI) without one."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    message = (
        f"no headless Chromium on PATH (looked for {', '.join(BROWSERS)}): `make test` installs "
        "chromium-headless-shell with apt when it runs as root on Debian; elsewhere install one"
    )
    if in_ci():
        pytest.fail(f"{message}; CI=true, so a missing browser is a failure, not a skip", pytrace=False)
    pytest.skip(message)


def browse(browser: str, page: Path, tmp: Path, *args: str) -> str:
    """Run the browser on ``page`` with ``args``; its stdout."""
    out = subprocess.run(
        [browser, *BROWSER_FLAGS, f"--user-data-dir={tmp / 'profile'}", *args, page.resolve().as_uri()],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HOME": str(tmp)},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def screenshot_is_not_blank(path: Path) -> None:
    image = Image.open(path).convert("RGB")
    assert image.size == (1200, 1600)
    colours = image.getcolors(maxcolors=1 << 24)
    dominant = max(count for count, _ in colours)
    assert len(colours) > 200, f"{len(colours)} colours: the page did not render"
    assert dominant < 0.9 * image.width * image.height, "one colour covers most of the page"


def test_report_renders_in_a_headless_browser(tested, tmp_path: Path) -> None:
    browser = find_browser()
    shot = tmp_path / "report.png"
    browse(browser, tested["path"], tmp_path, f"--screenshot={shot}", "--window-size=1200,1600")
    screenshot_is_not_blank(shot)
    # the DOM as the browser built it: the same phrases, metric rows and gallery items
    dom = Page(browse(browser, tested["path"], tmp_path, "--dump-dom"))
    expected = Page(tested["path"].read_text(encoding="utf-8"))
    assert dom.num_phrases == tested["num_phrases"]
    assert dom.metric_rows == expected.metric_rows and len(dom.metric_rows) >= 8
    assert {k: len(v) for k, v in dom.gallery.items()} == {"worst": NUM_GALLERY, "best": NUM_GALLERY}
    assert dom.bars == expected.bars


# ----------------------------------------------------------------------------------- DDP
@pytest.mark.slow
def test_two_processes_write_one_report_of_every_phrase(tmp_path: Path) -> None:
    """``lightning test`` on 2 CPU processes: rank 0 writes the report of both processes' phrases."""
    tiny = make_tiny_flickr(tmp_path / "data", n_images=12, seed=0, split_sizes=(3, 3))
    out = tmp_path / "out"
    args = [
        "test", "--config", FLICKR_YAML, "--config", TINY_MODEL_YAML, "--config", DDP_SIM_YAML,
        "--config", REPORT_YAML, *data_args(tiny.root, tiny.image_dir, tiny.detections), *tiny_model_args(),
        *trainer_args(tmp_path / "run"), "--data.image_size=32", "--data.batch_size=4", "--data.num_workers=0",
        f"--trainer.callbacks.output_dir={out}", "--trainer.callbacks.num_gallery=2",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK")}
    env["TOKENIZERS_PARALLELISM"] = "false"
    lightning = str(Path(sys.executable).parent / "lightning")
    run = subprocess.run(
        [lightning, *args], check=False, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    from lightning_wsg.data import Flickr30kEntitiesDataModule

    dm = Flickr30kEntitiesDataModule(tiny.root, tiny.image_dir, tiny.detections, num_workers=0)
    dm.setup()
    expected = sum(len(e.phrase_spans) for e in dm.datasets["test"].entries)
    assert [p.name for p in out.iterdir()] == ["report.html"]
    page = Page((out / "report.html").read_text(encoding="utf-8"))
    assert page.num_phrases == expected > 0 and sum(page.bars["size"]) == expected
    assert len(page.gallery["worst"]) == len(page.gallery["best"]) == 2
