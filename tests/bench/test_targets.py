"""benchmarks/targets.py reads a kernels.py result against issue 9's table, cell by cell."""
import importlib.util
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
spec = importlib.util.spec_from_file_location("targets", os.path.join(ROOT, "benchmarks", "targets.py"))
targets = importlib.util.module_from_spec(spec)
spec.loader.exec_module(targets)

GPT = "gpt-oss-120b MXFP4 w4a16 (E=128, top-4, H=I=2880)"
TP1 = "DeepSeek-V3 FP8 block TP1 (E=256, top-8, H=7168, I=2048)"


def _row(case, M, speedup, read=0.0, matmul=0.0):
    return dict(case=case, M=M, speedup=speedup, pct_read=read, pct_matmul=matmul)


def test_each_m_range_has_its_roof_and_every_cell_the_peer():
    cells = targets.check([
        _row(GPT, 1, 1.3, read=59.9),          # decode: >= 60% of the read roof
        _row(GPT, 64, 1.1, read=88.0),         # mid M: >= 88%
        _row(GPT, 1024, 1.01),                 # M = 1024: faster than the peer
        _row(GPT, 16384, 0.99, matmul=70.0),   # prefill: >= 65% of the matmul roof, but slower than the peer
        _row(TP1, 64, 1.0),                    # TP1 mid M: never slower than the peer
        _row(TP1, 4096, 1.1, matmul=54.9),     # TP1 prefill: >= 55%
    ])
    assert [c["met"] for c in cells] == [False, True, True, True, True, False]
    assert [c["faster"] for c in cells] == [True, True, True, False, False, True]
    assert "0 of 6 cells" not in targets.markdown(cells) and "2 of 6 cells" in targets.markdown(cells)


def test_the_recorded_h100_run_reads(capsys):
    path = os.path.join(ROOT, "benchmarks", "kernels-h100-2026-11-24-s10.json")
    targets.main([path])
    out = capsys.readouterr().out
    assert out.count("\n| ") == len(json.load(open(path))["rows"]) == 21     # 3 cases x 7 M, one line each
