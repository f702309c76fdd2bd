"""The evaluation stage: view aggregation, Top-k and dedup as pure functions, then the real
stage end to end (tiny models, tiny real mp4 files, torchrun with 2 gloo processes)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from reference import top_k_hits, video_probabilities

from k400ft import metrics
from k400ft.evaluate import iter_view_batches, merge_shards, write_outputs

ROOT = Path(__file__).resolve().parents[1]


def views_of(video, segments, crops):
    """Arrays (video, segment, crop) of every segment x crop view of the listed videos."""
    grid = [(v, s, c) for v in video for s in range(segments) for c in range(crops)]
    return tuple(np.array(col) for col in zip(*grid, strict=True))


# ---------------------------------------------------------------- aggregation


def test_aggregate_is_mean_of_per_view_softmax():
    rng = np.random.default_rng(0)
    video, segment, crop = views_of([3, 1], 2, 3)
    logits = rng.normal(size=(len(video), 5)) * 3
    label = np.where(video == 3, 4, 0)
    scores = metrics.aggregate(logits, video, segment, crop, label)
    assert scores.video.tolist() == [1, 3]
    assert scores.label.tolist() == [0, 4]
    assert scores.views.tolist() == [6, 6]
    for row, v in enumerate(scores.video):
        p = np.exp(logits[video == v])
        expected = (p / p.sum(axis=1, keepdims=True)).mean(axis=0)
        np.testing.assert_allclose(scores.probs[row], expected, rtol=1e-12)
    np.testing.assert_allclose(scores.probs.sum(axis=1), 1.0)


def test_softmax_before_mean_differs_from_mean_of_logits():
    # view 1 is very sure of class 0; view 2 mildly prefers class 1 with huge logits.
    logits = np.array([[10.0, 0.0, 0.0], [0.0, 13.0, 12.0]])
    zeros = np.zeros(2, dtype=int)
    scores = metrics.aggregate(logits, zeros, np.array([0, 1]), zeros, zeros)
    assert scores.probs.argmax() == 0  # upstream: mean of probabilities
    assert logits.mean(axis=0).argmax() == 1  # mean of raw logits would say class 1
    assert metrics.accuracy(scores)["top1"] == 100.0


def test_softmax_is_stable_for_large_logits():
    p = metrics.softmax(np.array([[1000.0, 0.0], [-1000.0, -1000.0]], dtype=np.float16))
    np.testing.assert_allclose(p, [[1.0, 0.0], [0.5, 0.5]])


def test_padding_duplicates_are_dropped_first_seen_kept():
    video, segment, crop = views_of([0, 1, 2], 2, 1)
    logits = np.eye(3)[[0, 0, 1, 1, 2, 2]] * 5.0
    label = video.copy()
    # a sampler's padding repeats video 0's views with different (wrong) logits
    pad_logits = np.eye(3)[[2, 2]] * 50.0
    all_logits = np.concatenate([logits, pad_logits])
    all_video = np.concatenate([video, [0, 0]])
    all_segment = np.concatenate([segment, [0, 1]])
    all_crop = np.concatenate([crop, [0, 0]])
    all_label = np.concatenate([label, [0, 0]])
    scores = metrics.aggregate(all_logits, all_video, all_segment, all_crop, all_label)
    assert scores.views.tolist() == [2, 2, 2]  # not 4 views for video 0
    assert metrics.accuracy(scores)["top1"] == 100.0
    # without the dedup video 0 would count its padded copies and be wrong
    kept = metrics.unique_views(all_video, all_segment, all_crop)
    assert sorted(kept.tolist()) == list(range(6))


def test_unique_views_key_is_integer_triple_not_concatenated_string():
    # upstream keys views by str(segment) + str(crop): (1, 11) and (11, 1) collide as "111"
    video = np.array([0, 0])
    segment, crop = np.array([1, 11]), np.array([11, 1])
    assert len(metrics.unique_views(video, segment, crop)) == 2


def test_aggregate_rejects_inconsistent_labels_and_shapes():
    with pytest.raises(ValueError, match="different labels"):
        metrics.aggregate(
            np.zeros((2, 3)), np.array([5, 5]), np.array([0, 1]), np.zeros(2, int), np.array([0, 1])
        )
    with pytest.raises(ValueError, match=r"\[V, K\]"):
        metrics.aggregate(
            np.zeros((3, 3)), np.array([5, 5]), np.array([0, 1]), np.zeros(2, int), np.array([0, 0])
        )


# ---------------------------------------------------------------- top-k and ties


def test_topk_correct_basic():
    scores = np.array([[0.1, 0.5, 0.2, 0.15, 0.05], [0.3, 0.1, 0.2, 0.25, 0.15]])
    label = np.array([3, 4])
    assert metrics.topk_correct(scores, label, 1).tolist() == [False, False]
    assert metrics.topk_correct(scores, label, 3).tolist() == [True, False]
    assert metrics.topk_correct(scores, label, 5).tolist() == [True, True]
    assert metrics.topk_correct(scores, label, 50).tolist() == [True, True]


def test_topk_ties_break_by_lower_class_index():
    tied = np.array([[0.25, 0.25, 0.25, 0.25]] * 4)
    label = np.arange(4)
    assert metrics.topk_correct(tied, label, 1).tolist() == [True, False, False, False]
    assert metrics.topk_correct(tied, label, 2).tolist() == [True, True, False, False]
    # same rule as np.argmax (first maximum) for Top-1
    assert (metrics.topk_correct(tied, label, 1) == (tied.argmax(axis=1) == label)).all()
    # a tie below a strictly higher class: label 3 ties with 1 at rank 1..2
    scores = np.array([[0.1, 0.3, 0.4, 0.3]])
    assert metrics.topk_correct(scores, np.array([3]), 2).tolist() == [False]
    assert metrics.topk_correct(scores, np.array([1]), 2).tolist() == [True]
    assert metrics.topk_correct(scores, np.array([3]), 3).tolist() == [True]


def test_topk_matches_a_stable_descending_sort():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 4, size=(200, 7)).astype(float)  # many ties
    label = rng.integers(0, 7, size=200)
    order = np.argsort(-scores, axis=1, kind="stable")
    for k in (1, 2, 5):
        expected = (order[:, :k] == label[:, None]).any(axis=1)
        assert (metrics.topk_correct(scores, label, k) == expected).all()


def test_topk_rejects_bad_input():
    with pytest.raises(ValueError, match="labels must lie"):
        metrics.topk_correct(np.zeros((1, 3)), np.array([3]), 1)
    with pytest.raises(ValueError, match="k must be"):
        metrics.topk_correct(np.zeros((1, 3)), np.array([0]), 0)


# ---------------------------------------------------------------- views ablation


def test_view_subsets_names_and_members():
    subsets = metrics.view_subsets(5, 3)
    assert subsets == {
        "1x1": ([2], [1]),
        "1x3": ([2], [0, 1, 2]),
        "5x1": ([0, 1, 2, 3, 4], [1]),
        "5x3": ([0, 1, 2, 3, 4], [0, 1, 2]),
    }
    assert list(metrics.view_subsets(1, 1)) == ["1x1"]
    assert list(metrics.view_subsets(2, 2)) == ["1x1", "1x2", "2x1", "2x2"]


def test_subset_scores_use_only_the_selected_views():
    # 2 videos x 5 segments x 3 crops; only the centre crop of the middle segment is right.
    video, segment, crop = views_of([0, 1], 5, 3)
    label = video.copy()
    right = (segment == 2) & (crop == 1)
    logits = np.where(right[:, None], np.eye(2)[label] * 4, np.eye(2)[1 - label] * 1.0)
    one = metrics.subset_scores(logits, video, segment, crop, label, [2], [1])
    full = metrics.subset_scores(logits, video, segment, crop, label, list(range(5)), [0, 1, 2])
    assert one.views.tolist() == [1, 1] and full.views.tolist() == [15, 15]
    assert metrics.accuracy(one)["top1"] == 100.0
    assert metrics.accuracy(full)["top1"] == 0.0
    everything = metrics.aggregate(logits, video, segment, crop, label)
    assert np.array_equal(full.probs, everything.probs)
    with pytest.raises(ValueError, match="no views"):
        metrics.subset_scores(logits, video, segment, crop, label, [7], [0])


# ---------------------------------------------------------------- batching and merging


def item(video, label, views, ok=True):
    n = views
    return {
        "views": torch.full((n, 3, 2, 4, 4), float(video)) if ok else torch.empty(0),
        "label": label,
        "video": video,
        "segment": torch.arange(n) // 2,
        "crop": torch.arange(n) % 2,
        "ok": ok,
        **({} if ok else {"error": "moov atom not found"}),
    }


def test_iter_view_batches_regroups_across_videos_and_records_broken():
    broken = {}
    items = [item(0, 5, 4), item(1, 6, 4, ok=False), item(2, 7, 4), item(3, 8, 4)]
    batches = list(iter_view_batches(items, 5, broken))
    assert [len(b["views"]) for b in batches] == [5, 5, 2]
    video = torch.cat([b["video"] for b in batches])
    assert video.tolist() == [0] * 4 + [2] * 4 + [3] * 4
    assert torch.cat([b["label"] for b in batches]).tolist() == [5] * 4 + [7] * 4 + [8] * 4
    views = torch.cat([b["views"] for b in batches])
    assert (views[:, 0, 0, 0, 0] == video.float()).all()  # views stay with their keys
    assert torch.cat([b["segment"] for b in batches]).tolist() == [0, 0, 1, 1] * 3
    assert broken == {1: "moov atom not found"}


def shard(videos, segments=2, crops=1, k=3, broken=None):
    video, segment, crop = views_of(videos, segments, crops)
    return {
        "arrays": {
            "logits": np.ones((len(video), k), np.float16),
            "video": video,
            "segment": segment,
            "crop": crop,
            "label": video % k,
        },
        "broken": broken or {},
    }


def test_merge_shards_drops_padding_and_checks_completeness():
    # 5 videos on 2 ranks: DistributedSampler gives rank 0 [0, 2, 4] and rank 1 [1, 3, 0]
    merged, broken = merge_shards([shard([0, 2, 4]), shard([1, 3, 0])], 5, 2, 1)
    assert merged["video"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert merged["segment"].tolist() == [0, 1] * 5
    assert broken == {}
    merged, broken = merge_shards([shard([0, 2]), shard([1, 3], broken={4: "empty file"})], 5, 2, 1)
    assert broken == {4: "empty file"}
    with pytest.raises(RuntimeError, match="never evaluated"):
        merge_shards([shard([0, 2, 4]), shard([1])], 5, 2, 1)
    with pytest.raises(RuntimeError, match="without all 2 views"):
        merge_shards([shard([0, 1, 2, 3, 4], segments=1)], 5, 2, 1)
    with pytest.raises(RuntimeError, match="both evaluated and broken"):
        merge_shards([shard([0, 1, 2, 3, 4], broken={2: "x"})], 5, 2, 1)


def recomputed(arrays: dict) -> tuple[float, float]:
    """(Top-1, Top-5) in percent from logits.npz's arrays, by the reference (REFERENCE.md §4):
    each view's softmax, the mean per video, the label among the k highest."""
    videos, probs = video_probabilities(arrays["logits"], arrays["video"])
    labels = np.array([arrays["label"][arrays["video"] == v][0] for v in videos])
    return tuple(100 * float(top_k_hits(probs, labels, k).mean()) for k in (1, 5))


def test_metrics_json_is_logits_npz_scored_by_the_reference(tmp_path):
    """12 classes, 10 videos x 2 x 3 views whose labels sit at chosen ranks of their mean
    probability (0, 1, 3, 4, 5, 7, 11, ...): metrics.json's Top-1 and Top-5 are those ranks'
    shares, recomputed from the float16 logits written beside them."""
    rng = np.random.default_rng(3)
    video, segment, crop = views_of(range(10), S, C)
    logits = (rng.normal(size=(len(video), K)) * 3).astype(np.float16)
    _, probs = video_probabilities(logits, video)
    ranks = np.array([0, 1, 3, 4, 5, 7, 11, 0, 6, 2])
    order = np.argsort(-probs, axis=1, kind="stable")
    label = order[np.arange(10), ranks][video]
    merged = {"logits": logits, "video": video, "segment": segment, "crop": crop, "label": label}
    paths = [f"/k400/v{i}.mp4" for i in range(10)]
    result = write_outputs(tmp_path, merged, {}, paths, {"views": S * C})
    assert (result["top1"], result["top5"]) == pytest.approx((20.0, 60.0))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    with np.load(tmp_path / "logits.npz") as data:
        arrays = {key: data[key] for key in data.files}
    assert (saved["top1"], saved["top5"]) == pytest.approx(recomputed(arrays)) == (20.0, 60.0)
    assert saved["videos"] == 10 and saved["views"] == S * C


# ---------------------------------------------------------------- the stage end to end

S, C, K = 2, 3, 12  # 12 classes: Top-5 is not 100% by construction
DEMO = yaml.safe_load((ROOT / "demo/config.yaml").read_text())
# the demo config's sections (every key the rule passes), at a tiny size
TINY = {"img_size": 32, "num_frames": 4, "embed_dim": 16, "depth": 1, "drop_path": 0.0}
ARCH_2D = {**DEMO["models"]["catmae_vits16"]["arch"], **TINY}
ARCH_3D = {**DEMO["models"]["videomae_vits16"]["arch"], **TINY}
DATA = {
    **DEMO["data"],
    **{"num_frames": 4, "sampling_rate": 2, "input_size": 32, "short_side_size": 32},
    "num_workers": 0,
}
BROKEN = 2  # row of the test CSV holding a file that is no video (not row 0: see padding)


def eval_spec(arch, weights_format):
    return {
        "arch": arch,
        "data": DATA,
        "evaluate": {"num_segments": S, "num_crops": C, "batch_views": 4},
        "num_classes": K,
        "weights_format": weights_format,
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """5 test videos (4 real tiny mp4 files + 1 broken) and weights in both formats."""
    from videos import write_pattern_mp4

    from k400ft.layouts import upstream_state_dict
    from k400ft.models import build_model
    from k400ft.video import write_split_csv

    root = tmp_path_factory.mktemp("eval")
    rows = []
    for i, frames in enumerate((40, 23, None, 61, 9)):  # 9 frames: a short, padded video
        path = root / "videos" / f"clip {i}.mp4"  # a space in the path, as in some K400 copies
        if frames is None:
            path.write_bytes(b"this is not a video\n")
        else:
            write_pattern_mp4(path, frames, height=48, width=64, seed=i)
        rows.append((str(path), i % K))
    write_split_csv(root / "test.csv", rows)
    torch.manual_seed(0)
    model = build_model(ARCH_2D, K)
    torch.save({"model": model.state_dict(), "arch": ARCH_2D, "epoch": 0}, root / "final.pt")
    torch.save(
        upstream_state_dict(ARCH_3D, "videomae_finetuned", num_classes=K, seed=1),
        root / "released.pth",
    )
    return root


def torchrun_evaluate(root, spec, weights, out, nproc):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={nproc}",
            str(ROOT / "scripts/evaluate.py"),
            "--spec",
            json.dumps(spec),
            "--device",
            "cpu",
            "--test",
            str(root / "test.csv"),
            "--weights",
            str(weights),
            "--out-dir",
            str(out),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    return proc.stderr


def load_outputs(out):
    with np.load(out / "logits.npz", allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    return json.loads((out / "metrics.json").read_text()), arrays


def test_two_processes_match_one_and_report_the_broken_video(tiny):
    from k400ft.evaluate import evaluate
    from k400ft.provenance import file_sha256

    spec = eval_spec(ARCH_2D, "ours")
    torchrun_evaluate(tiny, spec, tiny / "final.pt", tiny / "out2", nproc=2)
    m2, a2 = load_outputs(tiny / "out2")
    m1 = evaluate(spec, "cpu", str(tiny / "test.csv"), str(tiny / "final.pt"), str(tiny / "out1"))
    assert m1 == load_outputs(tiny / "out1")[0]
    _, a1 = load_outputs(tiny / "out1")

    # 5 videos on 2 ranks: the sampler pads rank 1 with video 0 again; its views are dropped
    assert m2["environment"]["world_size"] == 2 and m2["duplicates_dropped"] == S * C
    assert m1["duplicates_dropped"] == 0
    for key in ("top1", "top5", "videos", "videos_listed", "excluded", "views", "weights_sha256"):
        assert m2[key] == m1[key], key
    for key in ("video", "segment", "crop", "label", "paths"):
        assert (a2[key] == a1[key]).all(), key
    np.testing.assert_allclose(
        a2["logits"].astype(np.float32), a1["logits"].astype(np.float32), atol=2e-3
    )

    assert m1["videos"] == 4 and m1["videos_listed"] == 5 and m1["views"] == S * C
    (excluded,) = m1["excluded"]
    assert excluded["path"] == str(tiny / "videos/clip 2.mp4") and excluded["reason"]
    assert BROKEN not in a1["video"] and sorted(set(a1["video"].tolist())) == [0, 1, 3, 4]
    assert a1["logits"].dtype == np.float16 and a1["logits"].shape == (4 * S * C, K)
    assert m1["weights_sha256"] == file_sha256(tiny / "final.pt")
    # metrics.json is what the saved float16 logits give, recomputed by the reference
    assert (m1["top1"], m1["top5"]) == recomputed(a1)
    assert not list((tiny / "out2").glob(".*.tmp"))


@pytest.mark.parametrize("problem", ["label", "empty"])
def test_cli_refuses_a_bad_test_csv_with_exit_2_and_one_line(
    tiny, tmp_path, monkeypatch, capsys, problem
):
    """scripts/evaluate.py on a test CSV with a label outside the classes, or without videos:
    exit 2, one line naming the file (and the line), no traceback, nothing written."""
    import runpy

    rows = (tiny / "test.csv").read_text().splitlines(keepends=True)
    bad = tmp_path / "test.csv"
    if problem == "label":
        path = rows[3].rsplit(" ", 1)[0]
        bad.write_text("".join(rows[:3]) + f"{path} {K}\n")
        expected = f"error: {bad}:4: label {K} is outside 0..{K - 1} (num_classes {K})"
    else:
        bad.write_text("\n")
        expected = f"error: {bad}: no videos (not one '<video path> <label>' line)"
    out = tmp_path / "out"
    argv = ["evaluate.py", "--spec", json.dumps(eval_spec(ARCH_2D, "ours")), "--device", "cpu"]
    argv += ["--test", str(bad), "--weights", str(tiny / "final.pt"), "--out-dir", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / "scripts/evaluate.py"), run_name="__main__")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(expected), err
    assert not out.exists()


def test_released_checkpoint_eval_only_path(tiny):
    """VideoMAE's released layout ({'module': ...}, 3d, with head) through weights_format
    'videomae_finetuned': the saved logits are the model's on the TestDataset views."""
    from k400ft.evaluate import evaluate
    from k400ft.models import build_model, load_weights
    from k400ft.video import TestDataset

    spec = eval_spec(ARCH_3D, "videomae_finetuned")
    result = evaluate(
        spec, "cpu", str(tiny / "test.csv"), str(tiny / "released.pth"), str(tiny / "released")
    )
    _, arrays = load_outputs(tiny / "released")
    assert result["weights_format"] == "videomae_finetuned" and result["videos"] == 4

    model = build_model(ARCH_3D, K)
    load_weights(model, tiny / "released.pth", "videomae_finetuned")
    item = TestDataset(tiny / "test.csv", DATA, S, C)[3]
    with torch.inference_mode():
        expected = model.eval()(item["views"]).numpy()
    rows = arrays["video"] == 3
    assert arrays["segment"][rows].tolist() == item["segment"].tolist()
    assert arrays["crop"][rows].tolist() == item["crop"].tolist()
    np.testing.assert_allclose(
        arrays["logits"][rows].astype(np.float32), expected, rtol=2e-3, atol=2e-3
    )


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_an_image_named_mp4_is_excluded_and_listed_with_either_decoder(tiny, tmp_path, decoder):
    """A PNG frame plus random bytes named .mp4 in a hand-made test CSV: with PyAV it was
    evaluated as a video (its views scored, no log line); both decoders now exclude it and
    metrics.json lists it, "not a video"."""
    from videos import write_image_as_mp4

    from k400ft.evaluate import evaluate
    from k400ft.video import write_split_csv

    image = write_image_as_mp4(tmp_path / "frame.mp4")
    good = [str(tiny / f"videos/clip {i}.mp4") for i in (0, 3)]
    write_split_csv(tmp_path / "test.csv", [(good[0], 0), (str(image), 1), (good[1], 2)])
    spec = {**eval_spec(ARCH_2D, "ours"), "cpu_threads": 1}
    spec["data"] = {**spec["data"], "decoder": decoder}
    result = evaluate(
        spec, "cpu", str(tmp_path / "test.csv"), str(tiny / "final.pt"), str(tmp_path)
    )
    assert result["videos"] == 2 and result["videos_listed"] == 3
    (excluded,) = result["excluded"]
    assert excluded["path"] == str(image)
    assert excluded["reason"].startswith(f"{image}: not a video ("), excluded["reason"]
    assert result["environment"]["cpu_threads"] == 1  # the spec's (launch.evaluate.cpu_threads)


def test_the_cli_refuses_an_unknown_decoder_in_one_line(tiny, tmp_path, monkeypatch, capsys):
    """Exit 2 and one line naming data.decoder and its values, before any video is read (a
    ValueError traceback and exit 1 before)."""
    import runpy

    spec = eval_spec(ARCH_2D, "ours")
    spec["data"] = {**spec["data"], "decoder": "ffmpeg"}
    argv = ["evaluate.py", "--spec", json.dumps(spec), "--device", "cpu"]
    argv += ["--test", str(tiny / "test.csv"), "--weights", str(tiny / "final.pt")]
    monkeypatch.setattr(sys, "argv", [*argv, "--out-dir", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / "scripts/evaluate.py"), run_name="__main__")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == (
        "error: data.decoder: 'ffmpeg' is not one of decord, pyav"
    )
    assert not (tmp_path / "out").exists()
