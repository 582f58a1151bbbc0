"""``lightning_wsg.detection.mmdet``'s own logic, with small stand-ins for mmengine and mmdet.

These run whether or not MMDetection is installed: the stand-ins replace the modules in
``sys.modules`` for the test only. What they check is the backend's part: the config it
writes (thresholds, maximum boxes, input size, no weight download), the fingerprint's
settings, class names from the checkpoint's meta or a file, the post-processing of
MMDetection's output, the class-probability hook and the errors. The real thing runs in
``tests/detection/test_backends.py`` (slow, needs ``scripts/install_mmdet.sh``).
"""

from __future__ import annotations

import copy
import json
import sys
import types
from pathlib import Path

import pytest
import torch

from lightning_wsg.detection import mmdet as backend_module
from lightning_wsg.detection.cache import ShardedCache
from lightning_wsg.detection.mmdet import MMDetectionBackend, _predict_single_with_probs, mmdet_config_path

NAMES = ["person", "dog", "car"]


# ------------------------------------------------------------------------------ stand-ins
class AttrDict(dict):
    """mmengine's ConfigDict in brief: keys as attributes, nested dicts converted."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for key, value in self.items():
            self[key] = _wrap(value)

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value) -> None:
        self[name] = _wrap(value)


def _wrap(value):
    if isinstance(value, dict) and not isinstance(value, AttrDict):
        return AttrDict(value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


class FakeConfig(AttrDict):
    """``Config.fromfile`` reads JSON here; ``merge_from_dict`` takes dotted keys like mmengine's."""

    @classmethod
    def fromfile(cls, path: str) -> FakeConfig:
        return cls(json.loads(Path(path).read_text()))

    def merge_from_dict(self, options: dict) -> None:
        for dotted, value in options.items():
            *parents, last = dotted.split(".")
            node = self
            for key in parents:
                node = node.setdefault(key, AttrDict())
            node[last] = _wrap(value)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(self))


class InstanceData:
    """mmengine's InstanceData: fields as attributes, ``len`` of the first tensor field."""

    def __len__(self) -> int:
        for value in vars(self).values():
            if isinstance(value, torch.Tensor):
                return len(value)
        return 0


def fake_multiclass_nms(multi_bboxes, multi_scores, score_thr, nms_cfg, max_num=-1, return_inds=False, box_dim=4):
    """mmdet's contract without the NMS: every (proposal, class) above ``score_thr``, best first;
    ``inds`` index the flattened ``[N * C]`` (proposal, class) pairs."""
    n, num_classes = multi_scores.shape[0], multi_scores.shape[1] - 1
    bboxes = multi_bboxes.view(n, -1, box_dim).expand(n, num_classes, box_dim).reshape(-1, box_dim)
    scores = multi_scores[:, :-1].reshape(-1)
    labels = torch.arange(num_classes).expand(n, num_classes).reshape(-1)
    inds = torch.nonzero(scores > score_thr).squeeze(1)
    inds = inds[torch.argsort(scores[inds], descending=True, stable=True)]
    if max_num > 0:
        inds = inds[:max_num]
    dets = torch.cat([bboxes[inds], scores[inds, None]], 1)
    return (dets, labels[inds], inds) if return_inds else (dets, labels[inds])


class FakeHead:
    """A BBoxHead: ``_predict_by_feat_single`` returns raw scores without a test config."""

    def __init__(self, num_classes: int, raw_scores: torch.Tensor, raw_boxes: torch.Tensor) -> None:
        self.num_classes = num_classes
        self.raw_scores, self.raw_boxes = raw_scores, raw_boxes
        self.calls: list[object] = []

    def _predict_by_feat_single(self, roi, cls_score, bbox_pred, img_meta, rescale=False, rcnn_test_cfg=None):
        self.calls.append(rcnn_test_cfg)
        results = InstanceData()
        if rcnn_test_cfg is None:  # raw: class-specific boxes, softmax with background last
            results.bboxes, results.scores = self.raw_boxes[: len(roi)], self.raw_scores[: len(roi)]
            return results
        results.bboxes = torch.zeros(0, 4)
        results.scores = torch.zeros(0)
        results.labels = torch.zeros(0, dtype=torch.long)
        return results


def fake_model(num_classes: int = 3, meta: list[str] | None = NAMES, two_stage: bool = True):
    head = FakeHead(num_classes, torch.zeros(0, num_classes + 1), torch.zeros(0, 4))
    model = types.SimpleNamespace(dataset_meta={"classes": tuple(meta)} if meta is not None else {})
    if two_stage:
        model.roi_head = types.SimpleNamespace(bbox_head=head)
    else:
        model.bbox_head = types.SimpleNamespace(num_classes=num_classes)
    return model


@pytest.fixture
def fake_mm(monkeypatch, tmp_path):
    """Stand-in mmengine / mmdet modules; returns a namespace to steer and inspect them."""
    state = types.SimpleNamespace(model=fake_model(), init_calls=[], samples=[])
    package = tmp_path / "site" / "mmdet"
    (package / ".mim" / "configs" / "faster_rcnn").mkdir(parents=True)

    def init_detector(cfg, checkpoint=None, palette=None, device=None):
        state.init_calls.append({"cfg": cfg, "checkpoint": checkpoint, "palette": palette, "device": device,
                                 "random": torch.rand(1).item()})  # fmt: skip
        return state.model

    def inference_detector(model, paths):
        assert model is state.model
        return state.samples[: len(paths)]

    modules = {
        "mmengine": types.ModuleType("mmengine"),
        "mmengine.config": types.SimpleNamespace(Config=FakeConfig),
        "mmengine.structures": types.SimpleNamespace(InstanceData=InstanceData),
        "mmdet": types.SimpleNamespace(__file__=str(package / "__init__.py")),
        "mmdet.apis": types.SimpleNamespace(init_detector=init_detector, inference_detector=inference_detector),
        "mmdet.models": types.ModuleType("mmdet.models"),
        "mmdet.models.layers": types.SimpleNamespace(multiclass_nms=fake_multiclass_nms),
    }
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    state.configs = package / ".mim" / "configs"
    return state


def _config(**overrides) -> dict:
    resize = {"type": "mmdet.Resize", "scale": [1333, 800], "keep_ratio": True}
    pipeline = [{"type": "LoadImageFromFile"}, resize, {"type": "PackDetInputs"}]
    cfg = {
        "model": {
            "type": "FasterRCNN",
            "backbone": {"type": "ResNet", "init_cfg": {"type": "Pretrained", "checkpoint": "torchvision://resnet50"}},
            "test_cfg": {"rpn": {"nms_pre": 1000}, "rcnn": {"score_thr": 0.05, "max_per_img": 100}},
        },
        "test_pipeline": pipeline,
        "test_dataloader": {"dataset": {"pipeline": copy.deepcopy(pipeline)}},
    }
    return cfg | overrides


def _write_config(folder: Path, name: str = "faster_rcnn/model.py", **overrides) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_config(**overrides)))
    return path


# ------------------------------------------------------------------------- the config
def test_config_paths_resolve_inside_the_installed_package_or_as_files(fake_mm, tmp_path):
    shipped = _write_config(fake_mm.configs)
    assert mmdet_config_path("mmdet::faster_rcnn/model.py") == shipped
    own = _write_config(tmp_path, "mine.py")
    assert mmdet_config_path(own) == own
    with pytest.raises(FileNotFoundError, match=r"MMDetection config not found: .*\.mim/configs/faster_rcnn/nope\.py"):
        mmdet_config_path("mmdet::faster_rcnn/nope.py")
    with pytest.raises(FileNotFoundError, match="MMDetection config not found: missing.py"):
        mmdet_config_path("missing.py")


def test_without_mmdet_the_errors_say_how_to_install_it(monkeypatch, tmp_path):
    for name in ("mmdet", "mmdet.apis", "mmengine", "mmengine.config"):
        monkeypatch.setitem(sys.modules, name, None)  # "import mmdet" raises ImportError
    with pytest.raises(ImportError, match=r"run scripts/install_mmdet\.sh"):
        mmdet_config_path("mmdet::faster_rcnn/model.py")
    backend = MMDetectionBackend(_write_config(tmp_path, "mine.py"))
    with pytest.raises(ImportError, match=r"needs mmdet 3\.x and mmcv with its compiled ops"):
        backend.settings()
    with pytest.raises(ImportError, match=r"run scripts/install_mmdet\.sh"):
        backend.load()


def test_build_config_writes_the_backend_settings_into_the_config(fake_mm):
    _write_config(fake_mm.configs)
    backend = MMDetectionBackend(
        "mmdet::faster_rcnn/model.py", score_threshold=0.3, max_boxes=7, image_scale=(320, 240),
        cfg_options={"model.test_cfg.rcnn.nms.iou_threshold": 0.4},
    )  # fmt: skip
    cfg = backend.build_config()
    assert cfg.model.test_cfg.rcnn == {"score_thr": 0.3, "max_per_img": 7, "nms": {"iou_threshold": 0.4}}
    assert cfg.model.test_cfg.rpn == {"nms_pre": 1000}  # the RPN's settings are not the detector's output
    assert cfg.model.backbone.init_cfg is None  # no ImageNet download: weights come from the checkpoint
    for pipeline in (cfg.test_pipeline, cfg.test_dataloader.dataset.pipeline):
        assert [step.get("scale") for step in pipeline] == [None, (320, 240), None]


def test_a_single_stage_config_takes_the_thresholds_at_the_top_of_test_cfg(fake_mm, tmp_path):
    cfg = _config()
    cfg["model"]["test_cfg"] = {"score_thr": 0.05, "max_per_img": 100, "nms": {"iou_threshold": 0.6}}
    path = tmp_path / "retina.py"
    path.write_text(json.dumps(cfg))
    built = MMDetectionBackend(path, score_threshold=0.2, max_boxes=5).build_config()
    assert built.model.test_cfg == {"score_thr": 0.2, "max_per_img": 5, "nms": {"iou_threshold": 0.6}}


def test_image_scale_needs_a_resize_step(fake_mm, tmp_path):
    path = _write_config(tmp_path, "noresize.py", test_pipeline=[{"type": "LoadImageFromFile"}], test_dataloader={})
    with pytest.raises(ValueError, match=r"noresize\.py: no Resize step with a scale in the test pipeline"):
        MMDetectionBackend(path, image_scale=(100, 100)).build_config()
    assert MMDetectionBackend(path).build_config().test_pipeline == [{"type": "LoadImageFromFile"}]  # no scale asked


def test_max_boxes_below_one_is_refused():
    with pytest.raises(ValueError, match="max_boxes must be >= 1, got 0"):
        MMDetectionBackend(max_boxes=0)


# ---------------------------------------------------------------------- the settings
def test_settings_name_everything_that_changes_the_output(fake_mm, tmp_path):
    config = _write_config(tmp_path, "mine.py")
    checkpoint = tmp_path / "weights.pth"
    checkpoint.write_bytes(b"weights")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("person\ndog\ncar\n")
    digests = []

    def digest(path: Path) -> str:
        digests.append(Path(path).name)
        return f"sha-of-{Path(path).name}"

    settings = MMDetectionBackend(config, checkpoint=checkpoint, class_names=vocab).settings(digest)
    assert settings["backend"] == "mmdet" and settings["config"]["model"]["test_cfg"]["rcnn"]["score_thr"] == 0.05
    assert settings["checkpoint"] == {"sha256": "sha-of-weights.pth"} and settings["random_init_seed"] is None
    assert settings["class_names"] == {"vocabulary_sha256": "sha-of-vocab.txt"} and sorted(digests) == [
        "vocab.txt",
        "weights.pth",
    ]
    url = MMDetectionBackend(config, checkpoint="https://example.org/w.pth", class_names=NAMES).settings(digest)
    assert url["checkpoint"] == {"url": "https://example.org/w.pth"} and url["class_names"] == NAMES
    random = MMDetectionBackend(config, seed=3).settings(digest)
    assert random["checkpoint"] is None and random["random_init_seed"] == 3
    # each setting that changes the detections changes the cache folder
    base = MMDetectionBackend(config).settings(digest)
    folders = {
        ShardedCache("c", MMDetectionBackend(config, **kw).settings(digest)).path
        for kw in ({}, {"score_threshold": 0.5}, {"max_boxes": 10}, {"nms_iou": None}, {"image_scale": (64, 64)},
                   {"class_probs": True}, {"seed": 1}, {"cfg_options": {"model.test_cfg.rcnn.nms.iou_threshold": 0.3}})
    }  # fmt: skip
    assert len(folders) == 8 and ShardedCache("c", base).path in folders


def test_a_missing_checkpoint_is_named_with_what_to_do(fake_mm, tmp_path):
    backend = MMDetectionBackend(_write_config(tmp_path, "mine.py"), checkpoint=tmp_path / "absent.pth")
    with pytest.raises(FileNotFoundError, match=r"MMDetection checkpoint not found: .*absent\.pth \(download it"):
        backend.settings()


# ------------------------------------------------------------------- loading the model
def test_class_names_come_from_the_checkpoint_meta_or_are_given(fake_mm, tmp_path):
    config = _write_config(tmp_path, "mine.py")
    backend = MMDetectionBackend(config)
    assert backend.class_names is None  # unknown before loading
    state = torch.random.get_rng_state()
    backend.load("cpu")
    assert torch.equal(torch.random.get_rng_state(), state)  # the seeded random init leaves the caller's RNG alone
    assert backend.loaded and backend.class_names == NAMES
    (call,) = fake_mm.init_calls
    assert call["checkpoint"] is None and call["palette"] == "random" and call["device"] == "cpu"
    assert call["cfg"].model.backbone.init_cfg is None
    again = MMDetectionBackend(config)
    again.load()
    assert fake_mm.init_calls[1]["random"] == call["random"]  # seed 0 both times: the same random weights
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("man,men\nhound\nauto\n")
    fake_mm.model = fake_model(meta=None)  # a converted checkpoint without dataset_meta classes
    named = MMDetectionBackend(config, class_names=vocab)
    assert named.class_names == ["man", "hound", "auto"]
    named.load()
    assert named.class_names == ["man", "hound", "auto"]
    listed = MMDetectionBackend(config, class_names=["a", "b", "c"])
    listed.load()
    assert listed.class_names == ["a", "b", "c"]


def test_class_names_that_disagree_with_the_detector_are_refused(fake_mm, tmp_path):
    config = _write_config(tmp_path, "mine.py")
    with pytest.raises(ValueError, match="the detector has 3 classes but 2 class names"):
        MMDetectionBackend(config, class_names=["a", "b"]).load()
    fake_mm.model = fake_model(num_classes=4, two_stage=False)  # a single-stage head counts too
    with pytest.raises(ValueError, match="the detector has 4 classes but 3 class names"):
        MMDetectionBackend(config).load()


def test_class_probs_need_a_two_stage_detector(fake_mm, tmp_path):
    fake_mm.model = fake_model(two_stage=False)
    with pytest.raises(
        ValueError, match=r"class_probs=True needs a two-stage detector with a BBoxHead .*SimpleNamespace"
    ):
        MMDetectionBackend(_write_config(tmp_path, "mine.py"), class_probs=True).load()


def test_class_probs_wrap_the_last_stage_of_a_cascade(fake_mm, tmp_path):
    heads = torch.nn.ModuleList([torch.nn.Identity(), torch.nn.Identity()])
    last = FakeHead(3, torch.zeros(0, 4), torch.zeros(0, 4))
    heads[1]._predict_by_feat_single = last._predict_by_feat_single
    heads[1].num_classes = 3
    fake_mm.model = types.SimpleNamespace(
        dataset_meta={"classes": NAMES}, roi_head=types.SimpleNamespace(bbox_head=heads)
    )
    MMDetectionBackend(_write_config(tmp_path, "mine.py"), class_probs=True).load()
    assert heads[1]._predict_by_feat_single.__func__ is _predict_single_with_probs
    assert heads[1]._wsg_original_predict_single == last._predict_by_feat_single
    assert not hasattr(heads[0], "_wsg_original_predict_single")


# ---------------------------------------------------------------- post-processing
def _sample(boxes, scores, labels, probs=None):
    pred = InstanceData()
    pred.bboxes, pred.scores, pred.labels = torch.tensor(boxes), torch.tensor(scores), torch.tensor(labels)
    if probs is not None:
        pred.class_probs = torch.tensor(probs)
    return types.SimpleNamespace(pred_instances=pred)


def test_detect_names_labels_drops_cross_class_duplicates_and_keeps_the_best(fake_mm, tmp_path):
    boxes = [[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [40.0, 40.0, 50.0, 50.0]]
    probs = [[0.6, 0.2, 0.1], [0.1, 0.8, 0.05], [0.2, 0.2, 0.5], [0.7, 0.1, 0.1]]
    fake_mm.samples = [_sample(boxes, [0.6, 0.8, 0.5, 0.7], [0, 1, 2, 0], probs)]
    backend = MMDetectionBackend(_write_config(tmp_path, "mine.py"), max_boxes=2, nms_iou=0.5, class_probs=True)
    backend.load()
    (det,) = backend.detect([("img", tmp_path / "img.jpg")])
    # box 0 ("person") lies over box 1 ("dog", higher score): one object, one name; then the top 2
    assert det.image_id == "img" and det.labels == ["dog", "person"]
    assert det.boxes.tolist() == [boxes[1], boxes[3]]
    torch.testing.assert_close(det.scores, torch.tensor([0.8, 0.7]))
    torch.testing.assert_close(det.class_probs, torch.tensor([probs[1], probs[3]]))
    fake_mm.samples = [_sample(boxes, [0.6, 0.8, 0.5, 0.7], [0, 1, 2, 0])]
    plain = MMDetectionBackend(_write_config(tmp_path, "mine.py"), max_boxes=3, nms_iou=None)
    plain.load()
    (det,) = plain.detect([("img", tmp_path / "img.jpg")])
    assert det.labels == ["dog", "person", "person"] and det.class_probs is None  # no NMS: score order


# ------------------------------------------------------------ the class-probability hook
def _hooked_head(raw_scores: torch.Tensor, raw_boxes: torch.Tensor) -> FakeHead:
    head = FakeHead(raw_scores.shape[1] - 1, raw_scores, raw_boxes)
    head._wsg_original_predict_single = head._predict_by_feat_single
    return head


def test_the_hook_keeps_each_box_s_proposal_softmax_row(fake_mm):
    # 3 proposals, 2 classes (+ background last): class-specific boxes [N, 2 * 4]
    raw_scores = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.05, 0.05, 0.9]])
    raw_boxes = torch.arange(24, dtype=torch.float32).reshape(3, 8)
    head = _hooked_head(raw_scores, raw_boxes)
    cfg = types.SimpleNamespace(score_thr=0.15, nms={"type": "nms", "iou_threshold": 0.5}, max_per_img=10)
    out = _predict_single_with_probs(head, torch.zeros(3, 5), None, None, {}, rescale=True, rcnn_test_cfg=cfg)
    assert head.calls == [None]  # the original was asked for the raw output
    # kept (proposal, class): (0, 0) 0.7, (1, 1) 0.6, (0, 1) 0.2: each box's probabilities are its proposal's row
    assert out.labels.tolist() == [0, 1, 1] and out.scores.tolist() == pytest.approx([0.7, 0.6, 0.2])
    torch.testing.assert_close(out.class_probs, raw_scores[[0, 1, 0], :2])
    assert out.bboxes.tolist() == [raw_boxes[0, :4].tolist(), raw_boxes[1, 4:].tolist(), raw_boxes[0, 4:].tolist()]
    # a box's score is its class's probability; rows sum to 1 - P(background)
    torch.testing.assert_close(out.scores, out.class_probs[torch.arange(3), out.labels])
    torch.testing.assert_close(out.class_probs.sum(1), 1 - raw_scores[[0, 1, 0], 2])


def test_the_hook_passes_raw_and_empty_calls_through(fake_mm):
    head = _hooked_head(torch.zeros(0, 4), torch.zeros(0, 12))
    cfg = types.SimpleNamespace(score_thr=0.1, nms={}, max_per_img=5)
    empty = _predict_single_with_probs(head, torch.zeros(0, 5), None, None, {}, rcnn_test_cfg=cfg)
    assert head.calls == [cfg] and empty.class_probs.shape == (0, 3)  # no proposal: no box, right width
    raw = _predict_single_with_probs(head, torch.zeros(0, 5), None, None, {}, rcnn_test_cfg=None)
    assert head.calls == [cfg, None] and not hasattr(raw, "class_probs")  # the raw call is the original's


def test_versions_list_only_installed_packages(monkeypatch):
    from importlib import metadata

    def version(name: str) -> str:
        if name == "mmcv":
            raise metadata.PackageNotFoundError(name)
        return {"mmdet": "3.3.0", "mmengine": "0.10.7"}[name]

    monkeypatch.setattr(backend_module.importlib.metadata, "version", version)
    assert MMDetectionBackend().versions() == {"mmdet": "3.3.0", "mmengine": "0.10.7"}
