"""`benchmarks/run.py --quick` runs every suite end to end at tiny sizes (issue 5).

Not a timing test: it checks that each suite produces its rows, that the numbers are sane, and
that the evaluator benchmark's two evaluators agree."""
import json
import math
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_run_quick_prints_a_row_per_case_of_every_suite(tmp_path):
    out = tmp_path / "rows.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", "run.py"), "--quick", "--json",
         str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    cases = [r["case"] for r in rows]
    assert sum(c.startswith("sigmoid focal fwd+bwd") for c in cases) == 3
    # the dense-target drop-in: 0/1 and soft targets, each at trained and initial logits
    assert sum(c.startswith("sigmoid focal dense 0/1") for c in cases) == 2
    assert sum(c.startswith("sigmoid focal soft-target") for c in cases) == 2
    assert sum(c.startswith("softmax focal") for c in cases) == 1
    for case in ("retinanet_train", "retinanet_infer", "retinanet_fp32_train",
                 "retinanet_fp32_infer", "demo train_net step", "fl_rpn_sigmoid_train",
                 "fl_rpn_softmax_train", "faster_rcnn_recipe_train", "faster_rcnn_recipe_infer"):
        assert case in cases
    infer = next(r for r in rows if r["case"] == "faster_rcnn_recipe_infer")
    assert math.isclose(infer["ours_images_per_s"], 1e3 / infer["ours_ms"])
    auto = [r for r in rows if r["case"].startswith("conv3x3 auto")]
    assert len(auto) == 1 and auto[0]["max_rel_diff"] < 1e-5, auto
    assert auto[0]["chosen"] in ("Winograd", "F.conv2d") and auto[0]["chosen"] in auto[0]["case"]
    machine = json.loads(out.read_text())["machine"]
    assert "vector ISA" in machine and "oneDNN" in machine, machine
    assert "bfloat16 autocast" in machine, machine
    assert any(c.startswith("COCO bbox eval") for c in cases)
    roi_align = [r for r in rows if r["case"].startswith("roi_align")]
    assert len(roi_align) == 1 and roi_align[0]["max_abs_diff"] < 1e-4, roi_align
    winograd = [r for r in rows if r["case"].startswith("winograd conv")]
    assert len(winograd) == 1 and winograd[0]["max_rel_diff"] < 1e-5, winograd
    for r in rows:
        assert r["ours_ms"] > 0 and r["baseline_ms"] > 0, r
        assert math.isclose(r["ratio"], r["ours_ms"] / r["baseline_ms"], rel_tol=1e-9), r
        assert r["target"] is not None, f"every case has a target: {r['case']} / {r['baseline']}"
        assert r["met"] == (r["ratio"] <= r["target"])
    evaluator = next(r for r in rows if r["case"].startswith("COCO bbox eval"))
    assert evaluator["max_abs_ap_diff"] < 1e-9
    assert 0.0 < evaluator["ap"] <= 1.0
    # the printed table has the header and one line per row
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(rows)


def test_machine_line_names_vector_extensions(tmp_path):
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    try:
        import run
    finally:
        sys.path.pop(0)
    cases = {
        "fpu sse2 avx avx2 fma": "AVX2",
        "avx2 avx512f avx512bw avx512_vnni avx512_bf16": "AVX2 + AVX-512 (bf16, bw, f, vnni)",
        "avx2 avx512f amx_tile amx_bf16 amx_int8": "AVX2 + AVX-512 (f) + AMX (bf16, int8, tile)",
        "fpu sse2": "no AVX2",
    }
    for flags, expected in cases.items():
        path = tmp_path / "cpuinfo"
        path.write_text(f"processor\t: 0\nmodel name\t: X\nflags\t\t: {flags}\n\n")
        assert run.cpu_vector_extensions(str(path)) == expected
    assert run.cpu_vector_extensions(str(tmp_path / "missing")) == "unknown"


def test_max_isa_avx2_holds_the_kernels_and_says_so(tmp_path):
    out = tmp_path / "rows.json"
    env = {k: v for k, v in os.environ.items()
           if k not in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")}
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", "run.py"), "--quick", "--only",
         "losses", "--max-isa", "avx2", "--json", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    machine = json.loads(out.read_text())["machine"]
    assert ("kernels held by ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 "
            "MKL_ENABLE_INSTRUCTIONS=AVX2") in machine, machine
    assert "ATen CPU capability AVX2" in machine, machine
    onednn = machine.split("oneDNN ", 1)[1].split(", ATen", 1)[0]
    assert onednn == "unavailable" or ("AVX2" in onednn and "AVX-512" not in onednn), onednn


def _child_peak_mb():
    proc = subprocess.run(
        [sys.executable, "-c",
         "from focal_rpn.engine.hooks import peak_memory_mb, reset_peak_memory;"
         "print(peak_memory_mb()); reset_peak_memory(); print(peak_memory_mb())"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [float(v) for v in proc.stdout.split()[-2:]]


def test_peak_memory_of_a_subprocess_does_not_include_its_parents():
    """ru_maxrss is carried over fork + exec on Linux; the benchmark's memory workers and
    compare_rpn's runs are subprocesses of big processes, so peak_memory_mb must not use it."""
    import torch

    small_parent, _ = _child_peak_mb()
    ballast = torch.ones(2**30 // 4)  # 1 GiB resident in this (parent) process
    big_parent, after_reset = _child_peak_mb()
    assert float(ballast[-1]) == 1.0
    assert abs(big_parent - small_parent) < 300, (
        f"a subprocess reports {big_parent:.0f} MiB beside a 1 GiB bigger parent, "
        f"{small_parent:.0f} MiB before: the parent's memory leaked into its peak"
    )
    assert 0 < after_reset <= big_parent + 1


def test_demo_step_time_is_the_median_past_the_warm_up(tmp_path):
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    try:
        import bench_demo
    finally:
        sys.path.pop(0)
    metrics = tmp_path / "metrics.json"
    rows = [{"iteration": 19, "time": 9.0, "data_time": 0.1},  # warm-up: left out
            {"iteration": 39, "time": 0.30}, {"iteration": 59, "time": 0.20},
            {"iteration": 79, "lr": 0.1}, {"iteration": 99, "time": 0.25}]
    metrics.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert bench_demo.step_seconds(str(metrics), skip=20) == 0.25
    try:
        bench_demo.step_seconds(str(metrics), skip=1000)
    except RuntimeError as e:
        assert "no 'time' entries" in str(e)
    else:
        raise AssertionError("no step time past the warm-up must raise")


def test_bf16_targets_apply_only_where_bfloat16_is_native():
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    try:
        import run
    finally:
        sys.path.pop(0)
    train = {"case": "retinanet_train", "baseline": "d2 RetinaNet"}
    fp32 = {"case": "retinanet_fp32_train", "baseline": "d2 RetinaNet"}
    demo = {"case": "demo train_net step", "baseline": "x"}
    assert run.target_of(train, native_bf16=True) == 0.6
    assert run.target_of(train, native_bf16=False) == 0.9  # "auto" is float32 there
    assert run.target_of(fp32, native_bf16=True) == run.target_of(fp32, native_bf16=False) == 0.9
    assert run.target_of(demo, native_bf16=True) == 0.5
    assert run.target_of(demo, native_bf16=False) == 1.0
