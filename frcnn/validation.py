"""The checks `load_config` runs on every Config: one small function per params.yaml section.

Each names the key and the problem (`rpn.neg_iou_thresh: must be >= 0 and < rpn.pos_iou_thresh
(0.7)`); types and unknown keys are checked earlier, while parsing (frcnn/config.py).
"""

from __future__ import annotations

from typing import Any

from frcnn.errors import ConfigError

# A frcnn.config.Config; not imported, since config.py imports this module to validate what it parses.
Config = Any



def _check(cond: bool, key: str, problem: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {problem}")


def _is_md5(value: str | None) -> bool:
    return value is None or (len(value) == 32 and all(c in "0123456789abcdefABCDEF" for c in value))


def _check_data(cfg: Config) -> None:
    d = cfg.data
    _check(d.dataset != "url" or bool(d.url), "data.url", "required when data.dataset is url")
    _check(_is_md5(d.md5), "data.md5", "must be 32 hex digits")
    for name in ("voc2007_trainval", "voc2007_test", "voc2012_trainval"):
        _check(_is_md5(getattr(d.archive_md5, name)), f"data.archive_md5.{name}",
               "must be 32 hex digits or null")
    _check(d.classes is None or len(d.classes) == len(set(d.classes)) > 0, "data.classes",
           "must be a non-empty list of distinct names")
    _check(d.synth.num_trainval > 0 and d.synth.num_test > 0, "data.synth", "image counts must be > 0")
    _check(d.synth.image_size >= 64, "data.synth.image_size", "must be >= 64")
    _check(4 <= d.synth.min_object_size <= 0.9 * d.synth.image_size, "data.synth.min_object_size",
           "must be between 4 px and 90% of data.synth.image_size")
    _check(d.synth.min_object_size <= d.synth.max_object_size, "data.synth.max_object_size",
           "must be >= data.synth.min_object_size")
    _check(d.synth.max_objects >= 1, "data.synth.max_objects", "must be >= 1")
    _check(d.synth.distractors >= 0, "data.synth.distractors", "must be >= 0")
    _check(0 <= d.synth.patterned_fill <= 1, "data.synth.patterned_fill", "must be in [0, 1]")
    _check(0 <= d.synth.textured_background <= 1, "data.synth.textured_background",
           "must be in [0, 1]")
    _check(0 <= d.synth.class_colour <= 1, "data.synth.class_colour", "must be in [0, 1]")


def _check_augment(cfg: Config) -> None:
    a = cfg.augment
    _check(a.copies >= 0, "augment.copies", "must be >= 0")
    for name in ("hflip_p", "random_crop_p", "min_visibility"):
        _check(0.0 <= getattr(a, name) <= 1.0, f"augment.{name}", "must be in [0, 1]")
    _check(0.0 <= a.scale_jitter < 1.0, "augment.scale_jitter", "must be in [0, 1)")
    _check(a.color_jitter >= 0.0, "augment.color_jitter", "must be >= 0")


def _check_model(cfg: Config) -> None:
    m = cfg.model
    _check(m.num_classes >= 0, "model.num_classes", "must be >= 0 (0 = from the dataset)")
    _check(m.min_size >= 32, "model.min_size", "must be >= 32")
    _check(m.max_size >= m.min_size, "model.max_size", "must be >= model.min_size")
    _check(all(s >= 32 for s in m.min_size_train), "model.min_size_train", "sizes must all be >= 32")


def _check_pretrain(cfg: Config) -> None:
    pt = cfg.pretrain
    m = cfg.model
    _check(pt.steps >= 0, "pretrain.steps", "must be >= 0 (0 = no pretraining)")
    _check(pt.batch_size >= 2, "pretrain.batch_size", "must be >= 2")
    _check(pt.crop_size >= 32, "pretrain.crop_size", "must be >= 32")
    _check(0.0 <= pt.context <= 1.0, "pretrain.context", "must be in [0, 1]")
    _check(pt.lr > 0, "pretrain.lr", "must be > 0")
    _check(pt.weight_decay >= 0, "pretrain.weight_decay", "must be >= 0")
    _check(not (pt.steps and m.pretrained), "pretrain.steps",
           "must be 0 with model.pretrained: true (ImageNet weights or crop pretraining, not both)")
    _check(not (pt.steps and m.frozen_bn), "pretrain.steps",
           "must be 0 with model.frozen_bn: true (frozen BatchNorm only suits ImageNet weights)")


def _check_anchors(cfg: Config) -> None:
    an = cfg.anchors
    _check(len(an.scales) > 0, "anchors.scales", "must not be empty")
    _check(len(an.ratios) > 0, "anchors.ratios", "must not be empty")
    _check(all(s > 0 for s in an.scales), "anchors.scales", "must all be > 0")
    _check(all(x > 0 for x in an.ratios), "anchors.ratios", "must all be > 0")


def _check_rpn(cfg: Config) -> None:
    r = cfg.rpn
    _check(0.0 < r.pos_iou_thresh <= 1.0, "rpn.pos_iou_thresh", "must be in (0, 1]")
    _check(0.0 <= r.neg_iou_thresh < r.pos_iou_thresh, "rpn.neg_iou_thresh",
           f"must be >= 0 and < rpn.pos_iou_thresh ({r.pos_iou_thresh})")
    _check(r.batch_size_per_image > 0, "rpn.batch_size_per_image", "must be > 0")
    _check(0.0 < r.positive_fraction <= 1.0, "rpn.positive_fraction", "must be in (0, 1]")
    _check(0.0 < r.nms_thresh <= 1.0, "rpn.nms_thresh", "must be in (0, 1]")
    _check(r.hidden_channels > 0, "rpn.hidden_channels", "must be > 0")
    for phase in ("train", "test"):
        pre, post = getattr(r, f"pre_nms_top_n_{phase}"), getattr(r, f"post_nms_top_n_{phase}")
        _check(pre > 0 and post > 0, f"rpn.pre_nms_top_n_{phase}", "must be > 0")
        _check(post <= pre, f"rpn.post_nms_top_n_{phase}", f"must be <= rpn.pre_nms_top_n_{phase}")
    _check(r.min_box_size >= 0, "rpn.min_box_size", "must be >= 0")


def _check_roi(cfg: Config) -> None:
    roi = cfg.roi
    _check(roi.output_size >= 1, "roi.output_size", "must be >= 1")
    _check(roi.sampling_ratio >= 0, "roi.sampling_ratio", "must be >= 0 (0 = adaptive)")
    _check(roi.hidden_dim > 0, "roi.hidden_dim", "must be > 0")
    _check(roi.batch_size_per_image > 0, "roi.batch_size_per_image", "must be > 0")
    _check(0.0 < roi.positive_fraction <= 1.0, "roi.positive_fraction", "must be in (0, 1]")
    _check(0.0 < roi.fg_iou_thresh <= 1.0, "roi.fg_iou_thresh", "must be in (0, 1]")
    _check(0.0 <= roi.bg_iou_thresh_lo < roi.fg_iou_thresh, "roi.bg_iou_thresh_lo",
           f"must be >= 0 and < roi.fg_iou_thresh ({roi.fg_iou_thresh})")
    _check(0.0 <= roi.score_thresh < 1.0, "roi.score_thresh", "must be in [0, 1)")
    _check(0.0 < roi.nms_thresh <= 1.0, "roi.nms_thresh", "must be in (0, 1]")
    _check(roi.detections_per_img > 0, "roi.detections_per_img", "must be > 0")


def _check_loss(cfg: Config) -> None:
    lo = cfg.loss
    _check(lo.lambda_ >= 0, "loss.lambda", "must be >= 0")
    _check(lo.roi_lambda >= 0, "loss.roi_lambda", "must be >= 0")
    _check(lo.smooth_l1_beta >= 0, "loss.smooth_l1_beta", "must be >= 0")


def _check_train(cfg: Config) -> None:
    t = cfg.train
    _check(t.batch_size > 0, "train.batch_size", "must be > 0")
    _check(t.epochs > 0 or t.max_steps > 0, "train.epochs", "must be > 0 unless train.max_steps is")
    _check(t.max_steps >= 0, "train.max_steps", "must be >= 0")
    _check(t.lr > 0, "train.lr", "must be > 0")
    _check(0.0 <= t.momentum < 1.0, "train.momentum", "must be in [0, 1)")
    _check(t.weight_decay >= 0, "train.weight_decay", "must be >= 0")
    _check(t.warmup_steps >= 0, "train.warmup_steps", "must be >= 0")
    _check(all(0.0 < x < 1.0 for x in t.step_milestones), "train.step_milestones",
           "must be fractions of the run in (0, 1)")
    _check(0.0 < t.step_gamma <= 1.0, "train.step_gamma", "must be in (0, 1]")
    _check(t.grad_clip >= 0, "train.grad_clip", "must be >= 0 (0 = off)")
    _check(t.nonfinite_patience >= 1, "train.nonfinite_patience", "must be >= 1")
    _check(t.num_workers >= 0, "train.num_workers", "must be >= 0")
    _check(t.checkpoint_every > 0, "train.checkpoint_every", "must be > 0")
    _check(t.log_every > 0, "train.log_every", "must be > 0")


def _check_eval(cfg: Config) -> None:
    e = cfg.eval
    _check(e.batch_size > 0, "eval.batch_size", "must be > 0")
    _check(e.num_preview >= 0, "eval.num_preview", "must be >= 0")


def validate(cfg: Config) -> Config:
    """Reject values that would train something meaningless; returns `cfg` unchanged."""
    for check in (_check_data, _check_augment, _check_model, _check_pretrain, _check_anchors,
                  _check_rpn, _check_roi, _check_loss, _check_train, _check_eval):
        check(cfg)
    return cfg
