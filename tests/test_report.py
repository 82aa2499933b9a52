"""The run report's title and reference line, the latency/accuracy plot, and messages printed as they are."""

import pytest

from pipeline import benchreport, progress, report


def _report(start, file, model="se_resnet", **reference):
    return {
        "model": model,
        "data": "digits",
        "source": {"start": start, "file": file},
        "reference": {"format": "ONNX" if start == "onnx" else "PyTorch", "file": file, **reference},
    }


@pytest.mark.parametrize(
    "summary, title, line",
    [
        (
            _report("training", "runs/se_resnet/checkpoint.pt", top1=98.89, samples=359, runner="pytorch-cpu"),
            "se_resnet on digits",
            "Reference (PyTorch checkpoint): checkpoint.pt, top-1 98.89% on 359 held-out images.",
        ),
        (
            _report("checkpoint", "models/best.pt", top1=97.5, samples=359),
            "se_resnet on digits, from best.pt",
            "Reference (PyTorch checkpoint): best.pt, top-1 97.50% on 359 held-out images.",
        ),
        (
            _report("onnx", "exports/model.onnx", top1=98.0, samples=359, runner="onnxruntime-cpu"),
            "se_resnet on digits, from model.onnx",
            "Reference (FP32 ONNX on ONNX Runtime): model.onnx (onnxruntime-cpu), top-1 98.00% on 359 held-out images.",
        ),
        (
            _report("onnx", "exports/resnet.onnx", model="resnet.onnx"),
            "resnet.onnx on digits",
            "Reference (FP32 ONNX on ONNX Runtime): resnet.onnx, not measured (see Stages).",
        ),
    ],
)
def test_title_and_reference_line_say_what_the_run_started_from(summary, title, line):
    assert report.title(summary) == title
    assert report.reference_line(summary) == line


def _bench(rows):
    return {"device": "CPU test (2 cores); no NVIDIA GPU", "rows": rows}


def _row(artifact, fmt, precision, ms, batch=1, status="ok"):
    return {
        "artifact": artifact,
        "format": fmt,
        "precision": precision,
        "runtime": "r",
        "batch": batch,
        "status": status,
        "median_ms": ms,
    }


RUN_ROWS = [
    _row("runs/x/checkpoint.pt", "pytorch", "fp32", 4.0),
    _row("runs/x/checkpoint.pt", "pytorch", "fp32", 9.0, batch=8),
    _row("runs/x/model.onnx", "onnx", "fp32", 0.40),
    _row("runs/x/model.fp16.onnx", "onnx", "fp16", 0.41),
    _row("runs/x/model.int8.onnx", "onnx", "int8", 0.42),
    _row("runs/x/model.int8.engine", "engine", "int8", None, status="skipped: no NVIDIA GPU"),
]
ACCURACY = {
    "checkpoint.pt": 100.0,
    "model.onnx": 100.0,
    "model.fp16.onnx": 99.9,
    "model.int8.onnx": 99.7,
    "model.int8.engine": 99.7,
}
LABELS = {
    "checkpoint.pt": "pytorch",
    "model.onnx": "onnx-fp32",
    "model.fp16.onnx": "onnx-fp16",
    "model.int8.onnx": "onnx-int8",
    "model.int8.engine": "engine-int8",
}


def test_plot_points_are_labelled_by_artifact_id_at_the_smallest_batch():
    points = benchreport.plot_points(_bench(RUN_ROWS), ACCURACY, LABELS)
    assert [p["label"] for p in points] == [
        "pytorch",
        "onnx-fp32",
        "onnx-fp16",
        "onnx-int8",
    ]  # the engine was not measured
    assert points[0]["latency_ms"] == 4.0 and points[0]["batch"] == 1
    # bench on its own: no artifact ids, so the file names
    alone = benchreport.plot_points(_bench(RUN_ROWS), ACCURACY, {})
    assert [p["label"] for p in alone] == ["checkpoint.pt", "model.onnx", "model.fp16.onnx", "model.int8.onnx"]


@pytest.mark.parametrize("values", [[100.0, 100.0, 99.9], [12.5], [0.0, 3.0], [55.0, 98.0]])
def test_accuracy_axis_stays_within_0_and_100(values):
    bottom, top = benchreport.accuracy_limits(values)
    assert 0.0 <= bottom < min(values) or bottom == 0.0
    assert max(values) <= top <= 100.0 and bottom < top


def test_plot_has_a_legend_not_overlapping_annotations():
    import matplotlib.pyplot as plt

    fig = benchreport.figure(_bench(RUN_ROWS), ACCURACY, LABELS)
    ax = fig.axes[0]
    assert ax.get_ylim()[1] <= 100.0
    assert not ax.texts  # no annotation beside the points: the legend names them
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "pytorch (batch 1)",
        "onnx-fp32 (batch 1)",
        "onnx-fp16 (batch 1)",
        "onnx-int8 (batch 1)",
    ]
    plt.close(fig)


def test_write_report_draws_the_png_with_labels(tmp_path):
    md, png = benchreport.write_report(
        {**_bench(RUN_ROWS), "settings": {"batches": [1, 8], "warmup_ms": 100, "iterations": None, "duration_s": 1.0}},
        tmp_path,
        accuracy=ACCURACY,
        labels=LABELS,
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| model.int8.onnx | r | int8 | 1 | ok | 0.420 |" in md.read_text()


@pytest.mark.parametrize("say", [progress.info, lambda text: progress.info(text, "bold red")])
def test_messages_print_user_text_as_it_is(capsys, say):
    text = "runs/[abc]/x/[bold]model[/bold].onnx failed: [red]no[/red] such file"
    say(text)
    captured = capsys.readouterr()
    assert captured.err.strip() == text and captured.out == ""


def test_results_console_prints_user_text_as_it_is(capsys):
    progress.out.print("runs/[abc]/report.md")
    assert capsys.readouterr().out.strip() == "runs/[abc]/report.md"
