"""Fidelity for any output, streamed batch by batch: figures, Polygraphy pass/fail, labels, flat memory."""

import tracemalloc

import numpy as np
import pytest
from foreign_models import TEXT_CLASSES, TEXT_STEPS, foreign_model, fp16_with_autocast, random_images

from pipeline.errors import EdgepipeError
from pipeline.fidelity import Fidelity
from pipeline.onnxinfo import describe, run_onnxruntime


def _outputs(seed=0, n=50):
    """Reference and candidate: logits N x 10, embedding N x 32, sequence N x 32 x 37, with labels."""
    rng = np.random.default_rng(seed)
    reference = [rng.standard_normal((n, 10)), rng.standard_normal((n, 32)) * 3, rng.standard_normal((n, 32, 37))]
    noise = [0.3, 0.01, 0.5]
    candidate = [(r + rng.standard_normal(r.shape) * s).astype(np.float32) for r, s in zip(reference, noise)]
    reference = [r.astype(np.float32) for r in reference]
    labels = rng.integers(0, 10, n)
    return reference, candidate, labels


def _whole_array(reference, candidate):
    """The figures computed directly on whole arrays, as edgepipe computed them for logits."""
    ref, out = reference.astype(np.float64), candidate.astype(np.float64)
    diff = np.abs(ref - out)
    flat_ref, flat_out = ref.reshape(len(ref), -1), out.reshape(len(out), -1)
    cosine = (flat_ref * flat_out).sum(1) / (np.linalg.norm(flat_ref, axis=1) * np.linalg.norm(flat_out, axis=1))
    return {
        "max_abs_diff": diff.max(),
        "mean_abs_diff": diff.mean(),
        "cosine": cosine.mean(),
        "cosine_min": cosine.min(),
        "argmax_agreement": 100.0 * (ref.argmax(-1) == out.argmax(-1)).mean(),
    }


def test_streamed_result_equals_whole_array_computation():
    reference, candidate, labels = _outputs()
    names = ["logits", "embedding", "char_logits"]
    streamed = Fidelity(names)
    start = 0
    for size in (7, 13, 1, 29):  # uneven batches, 50 samples in all
        part = slice(start, start + size)
        streamed.update([r[part] for r in reference], [c[part] for c in candidate], labels[part])
        start += size
    whole = Fidelity(names)
    whole.update(reference, candidate, labels)
    result, at_once = streamed.result(), whole.result()

    for name, ref, out in zip(names, reference, candidate):
        expected = _whole_array(ref, out)
        for key, value in expected.items():
            assert result["outputs"][name][key] == pytest.approx(value, rel=1e-12, abs=1e-12), (name, key)
            assert at_once["outputs"][name][key] == pytest.approx(value, rel=1e-12, abs=1e-12), (name, key)
    sequence = result["outputs"]["char_logits"]
    assert sequence["argmax_positions"] == 50 * 32 and sequence["shape"] == [32, 37]
    # the first output's figures keep today's names at the top level
    first = _whole_array(reference[0], candidate[0])
    assert result["samples"] == 50
    for key in ("max_abs_diff", "mean_abs_diff", "cosine", "cosine_min"):
        assert result[key] == pytest.approx(first[key], rel=1e-12)
    assert result["top1_agreement"] == pytest.approx(first["argmax_agreement"])
    top1 = 100.0 * (candidate[0].argmax(1) == labels).mean()
    reference_top1 = 100.0 * (reference[0].argmax(1) == labels).mean()
    assert result["top1"] == pytest.approx(top1) and result["reference_top1"] == pytest.approx(reference_top1)
    assert result["delta"] == pytest.approx(top1 - reference_top1) and result["labelled"] == 50


def test_pass_fail_is_polygraphys_check_for_any_tolerance_chosen_afterwards():
    reference, candidate, _ = _outputs(seed=1, n=64)
    fidelity = Fidelity(["logits", "embedding", "char_logits"])
    for start in range(0, 64, 16):
        fidelity.update([r[start : start + 16] for r in reference], [c[start : start + 16] for c in candidate])
    for name, ref, out in zip(["logits", "embedding", "char_logits"], reference, candidate):
        r, d = np.abs(ref.astype(np.float64)), np.abs(out.astype(np.float64) - ref)
        for rtol in (0.0, 1e-3, 0.05, 0.5, 10.0):
            required = fidelity.result(0.0, rtol)["outputs"][name]["required_atol"]
            assert required == pytest.approx(max((d - rtol * r).max(), 0.0), rel=1e-12)
            for atol in (1e-5, 1e-2, 0.1, 1.0, required * 0.999, required * 1.001):
                expected = bool(np.all(d <= atol + rtol * r))
                assert fidelity.result(atol, rtol)["outputs"][name]["passed"] is expected, (name, atol, rtol)
    assert fidelity.result(10.0, 0.0)["passed"] is True and fidelity.result(1e-5, 1e-5)["passed"] is False


def test_memory_stays_flat_in_the_number_of_batches():
    rng = np.random.default_rng(2)
    fidelity = Fidelity(["logits", "char_logits"])

    def batch():
        ref = [rng.standard_normal((32, 1000)).astype(np.float32), rng.standard_normal((32, 32, 37)).astype(np.float32)]
        return ref, [(r * (1 + rng.uniform(-1e-3, 1e-3, r.shape))).astype(np.float32) for r in ref]

    tracemalloc.start()
    try:
        for _ in range(10):
            fidelity.update(*batch())
        after_ten = tracemalloc.get_traced_memory()[0]
        for _ in range(70):
            fidelity.update(*batch())
        after_eighty = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # 80 batches of these outputs are 25 MB as float32; what is kept does not grow with them
    assert after_eighty - after_ten < 64 * 1024
    assert fidelity.result()["samples"] == 80 * 32


def test_foreign_models_compared_on_every_output(tmp_path):
    """FP16 (ModelOpt AutoCast) against FP32 on ONNX Runtime: both outputs of the two-output model."""
    source = foreign_model("two_output")
    fp16 = fp16_with_autocast(source, tmp_path / "two_output.fp16.onnx")
    names = describe(source).output_names
    fidelity = Fidelity(names)
    kept = {name: ([], []) for name in names}
    for seed in range(3):
        images = random_images((3, 224, 224), 8, seed=seed)
        reference, candidate = run_onnxruntime(source, images), run_onnxruntime(fp16, images)
        fidelity.update([reference[n] for n in names], [candidate[n] for n in names])
        for n in names:
            kept[n][0].append(reference[n])
            kept[n][1].append(candidate[n])
    result = fidelity.result(atol=1e-2, rtol=1e-2)
    assert list(result["outputs"]) == ["logits", "embedding"]
    for name in names:
        figures = result["outputs"][name]
        expected = _whole_array(np.concatenate(kept[name][0]), np.concatenate(kept[name][1]))
        assert figures["max_abs_diff"] == pytest.approx(expected["max_abs_diff"]) and 0 < figures["max_abs_diff"] < 1e-2
        assert figures["cosine_min"] > 0.9999 and figures["samples"] == 24 and figures["passed"] is True
    assert (
        result["passed"] is True and fidelity.result()["passed"] is False
    )  # FP16 is not within Polygraphy's default 1e-5


def test_sequence_output_agreement_is_per_position(tmp_path):
    source = foreign_model("text_recognizer")
    fp16 = fp16_with_autocast(source, tmp_path / "text.fp16.onnx")
    fidelity = Fidelity(["char_logits"])
    same = positions = 0
    for seed in range(2):
        images = random_images((1, 32, 128), 16, seed=seed)
        reference, candidate = (
            run_onnxruntime(source, images)["char_logits"],
            run_onnxruntime(fp16, images)["char_logits"],
        )
        assert reference.shape == (16, TEXT_STEPS, TEXT_CLASSES)
        fidelity.update([reference], [candidate])
        same += int((reference.argmax(-1) == candidate.argmax(-1)).sum())
        positions += reference.shape[0] * reference.shape[1]
    figures = fidelity.result()["outputs"]["char_logits"]
    assert figures["argmax_positions"] == positions == 32 * TEXT_STEPS
    assert figures["argmax_agreement"] == pytest.approx(100.0 * same / positions)
    assert figures["argmax_agreement"] > 95.0 and figures["cosine"] > 0.9999


def test_non_finite_outputs_fail_and_identical_zeros_agree():
    zeros = np.zeros((2, 4), np.float32)
    fidelity = Fidelity(["a"])
    fidelity.update([zeros], [zeros.copy()])
    assert fidelity.result(0.0, 0.0)["passed"] is True and fidelity.result()["cosine_min"] == 1.0

    reference = np.ones((2, 4), np.float32)
    broken = reference.copy()
    broken[1, 2] = np.nan
    fidelity.update([reference], [broken])
    figures = fidelity.result(1.0, 1.0)["outputs"]["a"]
    assert figures["passed"] is False and figures["nonfinite"] == 1
    assert np.isnan(figures["max_abs_diff"]) and np.isnan(figures["cosine_min"])
    fidelity.update([reference], [reference.copy()])
    assert np.isnan(fidelity.result()["max_abs_diff"])  # a NaN seen once stays in the figures


def test_mismatched_outputs_and_labels_are_clear_errors():
    fidelity = Fidelity(["logits", "embedding"])
    logits, embedding = np.zeros((4, 10), np.float32), np.zeros((4, 32), np.float32)
    with pytest.raises(
        EdgepipeError,
        match=r"expected 2 output\(s\) \(logits, embedding\); got 2 from the reference and 1 from the candidate",
    ):
        fidelity.update([logits, embedding], [logits])
    with pytest.raises(EdgepipeError, match=r"output 'embedding' has shape \(4, 16\); the reference's is \(4, 32\)"):
        fidelity.update([logits, embedding], [logits, embedding[:, :16]])
    with pytest.raises(
        EdgepipeError, match=r"labels of shape \(3,\) do not match output 'logits' \(argmax shape \(4,\)\)"
    ):
        Fidelity(["logits"]).update([logits], [logits], labels=np.zeros(3, int))
    with pytest.raises(EdgepipeError, match="no outputs were compared"):
        Fidelity(["logits"]).result()
    fidelity.update([logits, embedding], [logits + 1, embedding])
    before = fidelity.result()
    with pytest.raises(EdgepipeError, match="output 'embedding' has shape"):
        fidelity.update([logits, embedding], [logits + 5, embedding[:, :16]])
    assert fidelity.result() == before  # a refused batch counts for nothing, not even its first output
    with pytest.raises(EdgepipeError, match="--atol and --rtol must be 0 or more"):
        fidelity.result(atol=-1.0)
