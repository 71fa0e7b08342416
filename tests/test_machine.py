"""minicnn.machine: the CPU, OpenBLAS's kernel choice, the load of other processes and the
spread of repeats. Everything here runs on synthetic /proc text and made-up numbers: no
timing is asserted, and the machine the tests run on does not change the outcome."""
from __future__ import annotations

import os

import pytest

from minicnn import machine

INTEL = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 167
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse2 avx fma avx2 avx512f avx512dq

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: a second block that must be ignored
"""
ZEN2 = """processor : 0
vendor_id : AuthenticAMD
cpu family : 23
model : 49
model name : AMD EPYC 7B12
flags : fpu sse2 avx avx2 fma
"""
TICK = os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------- the CPU
def test_cpu_info_reads_the_first_processor_block():
    info = machine.cpu_info(INTEL)
    assert info["model_name"] == "Intel(R) Xeon(R) Processor"
    assert (info["vendor"], info["family"], info["model"]) == ("GenuineIntel", 6, 167)
    assert info["simd"] == ["avx2", "fma", "avx512f"]
    assert info["cpus"] == os.cpu_count()
    assert machine.cpu_info(ZEN2)["simd"] == ["avx2", "fma"]


def test_cpu_info_without_proc_falls_back():
    info = machine.cpu_info("")
    assert info["family"] is None and info["model"] is None and info["simd"] == []
    assert info["model_name"]                     # platform.processor() or the machine


def test_describe_cpu_names_model_family_and_simd():
    assert machine.describe_cpu(dict(machine.cpu_info(INTEL), cpus=2)) == \
        "Intel(R) Xeon(R) Processor (GenuineIntel family 6 model 167; avx2 fma avx512f; 2 CPUs)"
    line = machine.describe_cpu(dict(machine.cpu_info(""), model_name="x", cpus=4))
    assert line == "x (no AVX2/AVX-512; 4 CPUs)"


@pytest.mark.parametrize("arch, isa", [("SkylakeX", "AVX-512"), ("Haswell", "AVX2"),
                                       ("Zen", "AVX2"), ("SANDYBRIDGE", "AVX"),
                                       ("Prescott", "SSE"), ("Neoverse", None), (None, None)])
def test_openblas_isa(arch, isa):
    assert machine.openblas_isa(arch) == isa


def test_describe_openblas_flags_kernels_narrower_than_the_cpu():
    avx512 = ["avx2", "fma", "avx512f"]
    pinned = machine.describe_openblas("Haswell", avx512, coretype="Haswell")
    assert pinned.startswith("Haswell kernels (AVX2), pinned by OPENBLAS_CORETYPE=Haswell, "
                             "on an AVX-512 CPU: narrower")
    own = machine.describe_openblas("SkylakeX", avx512)
    assert own == "SkylakeX kernels (AVX-512), OpenBLAS's own choice, on an AVX-512 CPU"
    # an old OpenBLAS that does not know the CPU picks narrower kernels without a pin
    assert "narrower" in machine.describe_openblas("Haswell", avx512)
    assert "narrower" not in machine.describe_openblas("Haswell", ["avx2", "fma"])
    assert "instruction set unknown" in machine.describe_openblas("Mystery", avx512)
    # the variable names other kernels than those that loaded: it did not pin them
    assert machine.describe_openblas("SkylakeX", avx512, coretype="Haswell") == (
        "SkylakeX kernels (AVX-512), not the OPENBLAS_CORETYPE=Haswell set now (set after "
        "OpenBLAS loaded, or a name this build ignores), on an AVX-512 CPU")
    assert "pinned by OPENBLAS_CORETYPE=haswell" in machine.describe_openblas(
        "Haswell", avx512, coretype="haswell")


# ----------------------------------------------------------------------------- the load
def test_machine_busy_seconds_counts_steal_but_not_idle_or_iowait():
    stat = "cpu  100 5 50 1000 20 3 2 10 7 0\ncpu0 50 2 25 500 10 1 1 5 0 0\n"
    # user + nice + system + irq + softirq + steal; guest (7) is already in user
    assert machine.machine_busy_seconds(stat) == pytest.approx((100 + 5 + 50 + 3 + 2 + 10) / TICK)
    assert machine.machine_busy_seconds("cpu  1 2 3 4\n") == pytest.approx(6 / TICK)
    assert machine.machine_busy_seconds("intr 1 2 3\n") is None
    assert machine.machine_busy_seconds("") is None


def test_others_cpus_subtracts_this_process():
    # the machine was busy 3 CPU-s over 2 s, this process used 1 CPU-s: others 1 CPU
    assert machine.others_cpus(10.0, 13.0, 5.0, 6.0, 2.0) == pytest.approx(1.0)
    # counters ticking in coarser steps than the process clock: never negative
    assert machine.others_cpus(10.0, 10.0, 5.0, 5.5, 1.0) == 0.0
    assert machine.others_cpus(None, 13.0, 5.0, 6.0, 2.0) is None
    with pytest.raises(ValueError, match=r"wall must be a positive .* received 0"):
        machine.others_cpus(10.0, 13.0, 5.0, 6.0, 0)


def test_load_meter_reads_the_counters_around_the_block(monkeypatch):
    busy = iter([100.0, 104.0])       # the machine: 4 CPU-s busy in the block
    own = iter([20.0, 21.0])          # this process: 1 CPU-s
    clock = iter([50.0, 52.0])        # 2 s of wall time
    monkeypatch.setattr(machine, "machine_busy_seconds", lambda: next(busy))
    monkeypatch.setattr(machine, "own_cpu_seconds", lambda: next(own))
    monkeypatch.setattr(machine.time, "perf_counter", lambda: next(clock))
    with machine.LoadMeter() as meter:
        pass
    assert meter.wall == pytest.approx(2.0)
    assert meter.others_cpus == pytest.approx(1.5)


def test_load_meter_refuses_a_block_too_short_for_the_ticks(monkeypatch):
    clock = iter([50.0, 50.1])
    monkeypatch.setattr(machine, "machine_busy_seconds", lambda: 100.0)
    monkeypatch.setattr(machine.time, "perf_counter", lambda: next(clock))
    with machine.LoadMeter() as meter:
        pass
    assert meter.too_short and meter.others_cpus is None
    assert meter.describe("in the block") == ("unknown in the block: 0.10 s is too short to "
                                              "tell from /proc/stat's 10 ms ticks")


def test_load_meter_describes_what_it_measured(monkeypatch):
    busy, clock = iter([100.0, 100.5]), iter([0.0, 1.0])
    monkeypatch.setattr(machine, "machine_busy_seconds", lambda: next(busy))
    monkeypatch.setattr(machine, "own_cpu_seconds", lambda: 7.0)
    monkeypatch.setattr(machine.time, "perf_counter", lambda: next(clock))
    meter = machine.LoadMeter().start().stop()
    assert meter.describe("meanwhile") == \
        "other processes kept 0.50 CPUs busy meanwhile (/proc/stat)"


def test_load_meter_off_linux(monkeypatch):
    monkeypatch.setattr(machine, "machine_busy_seconds", lambda: None)
    with machine.LoadMeter(min_wall=0.0) as meter:
        pass
    assert meter.others_cpus is None and meter.wall >= 0
    assert meter.describe("here") == "unknown here (no /proc/stat)"


def test_no_warning_on_a_quiet_machine():
    assert machine.load_warnings(0.02, cpus=2, threads=2, roof_1=120.0, roof_n=235.0) == []
    assert machine.load_warnings(None, cpus=2, threads=2) == []
    # exactly at the threshold is still quiet; just above it is not
    assert machine.load_warnings(machine.BUSY_CPUS_THRESHOLD, cpus=2, threads=1) == []
    assert len(machine.load_warnings(machine.BUSY_CPUS_THRESHOLD + 0.01, cpus=2, threads=1)) == 1


def test_warning_when_other_processes_were_busy():
    (w,) = machine.load_warnings(0.6, cpus=2, threads=1)
    assert w.startswith("other processes kept 0.60 of the 2 CPUs busy")
    assert "not reliable" in w and "descheduled" not in w
    (w,) = machine.load_warnings(0.6, cpus=2, threads=2)
    assert "2 threads on 2 CPUs: a descheduled thread holds up every parallel region" in w
    (w,) = machine.load_warnings(0.6, cpus=8, threads=2)
    assert "descheduled" not in w


def test_warning_when_the_two_thread_roof_is_below_the_one_thread_roof():
    # what issue 12 saw under load: a 2-thread roof below the 1-thread one, without a word
    (w,) = machine.load_warnings(0.0, cpus=2, threads=2, roof_1=99.0, roof_n=80.0)
    assert w.startswith("the 2-thread GEMM roof (80.0 GFLOP/s) is below the 1-thread roof "
                        "(99.0)")
    (w,) = machine.load_warnings(0.0, cpus=2, threads=2, roof_1=99.0, roof_n=97.0)
    assert w.startswith("the 2-thread GEMM roof (97.0 GFLOP/s) is below")
    (w,) = machine.load_warnings(0.0, cpus=2, threads=2, roof_1=100.0, roof_n=110.0)
    assert "scales only 1.10x from 1 to 2 threads" in w
    assert machine.load_warnings(0.0, cpus=2, threads=2, roof_1=100.0, roof_n=131.0) == []
    # one thread: the two roofs are the same measurement, nothing to compare
    assert machine.load_warnings(0.0, cpus=2, threads=1, roof_1=100.0, roof_n=90.0) == []
    both = machine.load_warnings(1.2, cpus=2, threads=2, roof_1=100.0, roof_n=60.0)
    assert len(both) == 2


# ----------------------------------------------------------------------------- repeats
def test_spread_and_its_format():
    s = machine.spread([4.0, 1.0, 100.0, 3.0, 2.0])
    assert s == {"n": 5, "median": 3.0, "min": 1.0, "max": 100.0, "q1": 2.0, "q3": 4.0}
    assert machine.format_spread([0.004, 0.001, 0.1, 0.003, 0.002], scale=1000.0) == \
        "3.00 ms (min-max 1.00-100.00, IQR 2.00-4.00, n=5)"
    assert machine.format_spread([2.5], unit="s", digits=1) == \
        "2.5 s (min-max 2.5-2.5, IQR 2.5-2.5, n=1)"
    with pytest.raises(ValueError, match="at least one value, received none"):
        machine.spread([])
