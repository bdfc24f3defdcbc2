"""The CUDA path: device tests (``cuda`` marker, run by recipes/gpu_check.sh) and the CPU-testable
logic of the CUDA memory meter and of the check itself."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from hpff_zoo.measure import MemoryMeter

ROOT = Path(__file__).resolve().parents[1]


def _small(method: str = "infopro", **kwargs):
    return timm.create_model(
        "hpff_resnet32", num_classes=10, method=method, num_modules=4, **kwargs
    )


# --- on a CUDA device ---------------------------------------------------------------------------


@pytest.mark.cuda
def test_streamed_step_on_cuda_equals_the_cpu_step():
    """float64 on both sides (cuDNN has double convolutions), so only summation order differs."""
    cpu = _small(hilo=2, pff=2).double().train()
    gpu = copy.deepcopy(cpu).cuda()
    x = torch.randn(8, 3, 32, 32, dtype=torch.float64)
    y = torch.randint(0, 10, (8,))
    losses_cpu = cpu.local_step(x, y)
    losses_gpu = gpu.local_step(x.cuda(), y.cuda())
    assert losses_cpu.keys() == losses_gpu.keys()
    for name in losses_cpu:
        assert losses_gpu[name] == pytest.approx(losses_cpu[name], rel=1e-9, abs=1e-12)
    for (name, a), b in zip(cpu.named_parameters(), gpu.parameters()):
        if a.grad is None:
            assert b.grad is None, name
            continue
        torch.testing.assert_close(b.grad.cpu(), a.grad, rtol=1e-7, atol=1e-10, msg=name)


@pytest.mark.cuda
def test_cuda_meter_reads_the_allocators_peak_and_reserved():
    size = 64 * 2**20
    with MemoryMeter("cuda") as outer:
        with MemoryMeter("cuda") as inner:
            block = torch.empty(size, dtype=torch.uint8, device="cuda")
            del block
        small = torch.empty(size // 4, dtype=torch.uint8, device="cuda")
        del small
    assert inner.report.peak_bytes >= size
    assert inner.report.reserved_peak_bytes is not None
    assert outer.report.peak_bytes >= size  # the inner reset did not clobber the outer peak
    assert outer.report.reserved_peak_bytes >= inner.report.reserved_peak_bytes


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_through_accelerate_trains(precision):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # Accelerate's state is a process-wide singleton fixed by the first Accelerator: reset it,
    # or the second precision would be refused (or another test's setting inherited).
    AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(mixed_precision=precision, cpu=False)
    model = _small(hilo=2, pff=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model, optimizer = accelerator.prepare(model, optimizer)
    torch.manual_seed(0)
    x = torch.randn(16, 3, 32, 32, device=accelerator.device)
    y = torch.randint(0, 10, (16,), device=accelerator.device)
    first = None
    for _ in range(8):
        optimizer.zero_grad()
        with accelerator.autocast():
            losses = accelerator.unwrap_model(model).local_step(x, y, accelerator.backward)
        optimizer.step()
        first = first if first is not None else losses["head"]
    AcceleratorState._reset_state(reset_partial_state=True)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    # fp16's loss scaler may skip its first steps on overflow; 8 steps leave enough to learn.
    assert losses["head"] < first


# --- the CUDA meter's logic, on a mocked allocator (any machine) --------------------------------


class _FakeAllocator:
    """Allocated/reserved counters and their peaks, as torch.cuda keeps them per device."""

    def __init__(self):
        self.allocated = self.reserved = self.peak = self.reserved_peak = 0
        self.resets: list[torch.device] = []

    def alloc(self, n: int) -> None:
        self.allocated += n
        self.reserved = max(self.reserved, self.allocated)
        self.peak = max(self.peak, self.allocated)
        self.reserved_peak = max(self.reserved_peak, self.reserved)

    def reset(self, device) -> None:
        self.resets.append(torch.device(device))
        self.peak, self.reserved_peak = self.allocated, self.reserved


@pytest.fixture
def fake_cuda(monkeypatch):
    fake = _FakeAllocator()
    cuda = torch.cuda
    monkeypatch.setattr(cuda, "current_device", lambda: 0)
    monkeypatch.setattr(cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(cuda, "reset_peak_memory_stats", fake.reset)
    monkeypatch.setattr(cuda, "memory_allocated", lambda device=None: fake.allocated)
    monkeypatch.setattr(cuda, "max_memory_allocated", lambda device=None: fake.peak)
    monkeypatch.setattr(cuda, "memory_reserved", lambda device=None: fake.reserved)
    monkeypatch.setattr(cuda, "max_memory_reserved", lambda device=None: fake.reserved_peak)
    return fake


def test_cuda_meter_resets_the_right_device_and_reports_growth(fake_cuda):
    fake_cuda.alloc(100)  # held before the meter: not counted
    with MemoryMeter("cuda:0") as meter:
        fake_cuda.alloc(50)
        fake_cuda.alloc(-50)
        fake_cuda.alloc(10)
    assert fake_cuda.resets == [torch.device("cuda", 0)]
    assert (meter.report.peak_bytes, meter.report.end_bytes) == (50, 10)
    assert meter.report.reserved_peak_bytes == 50  # reserved grew 100 -> 150


def test_nested_cuda_meters_keep_each_others_peaks(fake_cuda):
    with MemoryMeter("cuda") as outer:
        fake_cuda.alloc(300)
        fake_cuda.alloc(-300)  # the outer peak so far: 300, about to be reset by the inner
        with MemoryMeter("cuda") as inner:
            fake_cuda.alloc(20)
            fake_cuda.alloc(-20)
        fake_cuda.alloc(5)
    assert inner.report.peak_bytes == 20
    assert outer.report.peak_bytes == 300
    assert outer.report.reserved_peak_bytes == 300
    assert fake_cuda.resets == [torch.device("cuda", 0)] * 2


# --- the check itself, on CPU -------------------------------------------------------------------


def _check(out: Path, *flags: str) -> subprocess.CompletedProcess:
    command = ["bash", str(ROOT / "recipes" / "gpu_check.sh"), "--cpu", "--tiny", "--out", str(out)]
    return subprocess.run(
        [*command, *flags], capture_output=True, text=True, timeout=600,
        env={"PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip


def _assert_written(out: Path, done: subprocess.CompletedProcess, settings: list[str]) -> None:
    import json

    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((out / "gpu_check.json").read_text())
    assert record["device"] == "cpu"
    for name in settings:
        results = record["settings"][name]["results"]
        e2e = next(r for r in results if r["config"] == "e2e")
        infopro = next(r for r in results if r["config"] == "infopro")
        assert infopro["peak_mib"] < e2e["peak_mib"]  # measured, so this can fail
        assert (out / f"tradeoff_{name}.png").is_file()
        assert "paper, GPU" in done.stdout
    assert "| e2e+ckpt |" in (out / "gpu_check.md").read_text()


def test_gpu_check_tiny_on_cpu_fast_case(tmp_path):
    done = _check(tmp_path, "--settings", "r32", "--repetitions", "1", "--no-tests",
                  "--configs", "e2e,e2e+ckpt,infopro,infopro+hpff")  # fmt: skip
    _assert_written(tmp_path, done, ["r32"])


@pytest.mark.slow
def test_gpu_check_tiny_on_cpu_full(tmp_path):
    done = _check(tmp_path)
    _assert_written(tmp_path, done, list(("r32", "r110", "r101")))
    assert "cuda tests:" in done.stdout and "skipped" in done.stdout


def test_gpu_check_refuses_without_cuda_or_bad_names(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from hpff_zoo.benchmark.cli import main

    with pytest.raises(SystemExit, match="no CUDA device"):
        main(["gpu", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["gpu", "--cpu", "--settings", "r999", "--out", str(tmp_path)])
