"""Clocks and power under sustained load: each GEMM of moepack's gpt-oss layer and of the peer's, on the
same weights and inputs, CUDA-graph timed with few and with many replays while a thread samples the SM
clock, the board power and the clock-event reasons through NVML (not a test; GPU).

    python benchmarks/power_probe.py [--ms 16384,4096] [--reps 10,50,200] [--out FILE]

Why: the sweep times one GEMM for 10 replays, the benchmark the whole layer for 50, and at M = 16384 the
same kernels measured 12% apart (gemm1 4.1 vs 4.7 ms). A board at its power limit lowers the SM clock
within tens of milliseconds, so a kernel that spends more energy per multiply-add loses clock first.
Each row: kernel, replays, median us, mean SM MHz and W over the samples of its timed replays, and the
clock-event reasons seen (NVML bit names: sw_power_cap, hw_slowdown, sw_thermal, hw_thermal, ...).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kernels import SHAPES, _stage_launcher, gptoss_inputs, gptoss_stored, peer_layer  # noqa: E402
from peer_bench import graph_time  # noqa: E402

from moepack.kernels.configs import pick  # noqa: E402
from moepack.kernels.triton_moe import fused_moe  # noqa: E402

REASONS = {0x4: "sw_power_cap", 0x8: "hw_slowdown", 0x20: "sw_thermal", 0x40: "hw_thermal",
           0x80: "hw_power_brake", 0x100: "display_clock"}


class Sampler(threading.Thread):
    """Samples (time, SM MHz, W, reasons bitmask) every `period` s until stopped."""

    def __init__(self, period=0.002):
        super().__init__(daemon=True)
        import pynvml
        pynvml.nvmlInit()
        self.nv, self.h = pynvml, pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        self.period, self.samples, self.stop = period, [], threading.Event()

    def run(self):
        nv, h = self.nv, self.h
        while not self.stop.is_set():
            self.samples.append((time.perf_counter(), nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM),
                                 nv.nvmlDeviceGetPowerUsage(h) / 1e3,
                                 nv.nvmlDeviceGetCurrentClocksEventReasons(h),
                                 nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)))
            time.sleep(self.period)

    def window(self, t0, t1) -> dict:
        s = [r for r in self.samples if t0 <= r[0] <= t1]
        if not s:
            return {"mhz": None, "watts": None, "reasons": [], "temp_c": None, "n": 0}
        bits = 0
        for r in s:
            bits |= r[3]
        return {"mhz": sum(r[1] for r in s) / len(s), "watts": sum(r[2] for r in s) / len(s),
                "reasons": [n for b, n in REASONS.items() if bits & b], "temp_c": s[-1][4], "n": len(s)}


def launchers(M: int, L, stored, meta):
    """{name: callable}: moepack's gemm1, gemm2 (on gemm1's real output), layer; the peer's likewise."""
    _, E, k, H, I = SHAPES["gptoss"]
    x, tw, ids = gptoss_inputs(M, L, torch.Generator(device="cuda").manual_seed(1))
    cfg = pick("mxfp4", M, E, k, H, I)
    g1, g2, _, _ = _stage_launcher(stored, meta, x, tw, ids, (cfg.per_pair, cfg.block_m, cfg.prequant), cfg.gemm1,
                                   cfg.gemm2)
    rd, gi, si = L.routes
    p1 = lambda: L.matmul_ogs(L.x, L.w13, L.b13, rd, gather_indx=gi, precision_config=L.pc13,  # noqa: E731
                              fused_activation=L.act)
    pinter = p1()
    p2 = lambda: L.matmul_ogs(pinter, L.w2, L.b2, rd, scatter_indx=si, precision_config=L.pc2,  # noqa: E731
                              gammas=rd.gate_scal)
    return {"moepack gemm1": g1, "peer gemm1": p1, "moepack gemm2": g2, "peer gemm2": p2,
            "moepack layer": lambda: fused_moe(x, tw, ids, stored, meta), "peer gemms": L.gemms}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ms", default="16384,4096")
    ap.add_argument("--reps", default="10,50,200")
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "power_probe.json"))
    a = ap.parse_args()
    L = peer_layer("gptoss")
    stored, meta = gptoss_stored(L)
    smp = Sampler()
    smp.start()
    rows = []
    for M in map(int, a.ms.split(",")):
        fns = launchers(M, L, stored, meta)
        for reps in map(int, a.reps.split(",")):
            for name, fn in fns.items():
                time.sleep(1.0)                 # let the clock recover between kernels
                t0 = time.perf_counter()
                us = graph_time(fn, reps) * 1e6
                w = smp.window(t0, time.perf_counter())
                rows.append({"M": M, "kernel": name, "reps": reps, "us": us, **w})
                print(f"M={M} reps={reps:4d} {name:14s} {us:9.1f} us  {w['mhz'] or 0:6.0f} MHz "
                      f"{w['watts'] or 0:5.0f} W {w['temp_c']} C {','.join(w['reasons'])}", flush=True)
    smp.stop.set()
    json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
