"""Rich tables for the CLI. Presentation only: every function takes the JSON-able result of an API call."""
from __future__ import annotations


def _table(title: str, columns: list[str]):
    from rich.table import Table

    t = Table(title=title, title_justify="left", show_lines=False)
    for c in columns:
        t.add_column(c)
    return t


def _fmt_bytes(n) -> str:
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"  # pragma: no cover


def render_inspect(info: dict, console) -> None:
    m = info["model"]
    t = _table(f"{info.get('source', '')}: {m['family']} ({m['quant']})", ["layers", "MoE layers", "E", "H", "I",
                                                                            "top-k", "arrangement", "activation",
                                                                            "expert bytes", "other bytes"])
    act = m.get("activation") or {}
    t.add_row(str(m["num_layers"]), str(len(m["moe_layers"])), str(m["num_experts"]), str(m["hidden"]),
              str(m["intermediate"]), str(m["routing"]["top_k"]), str(m["arrangement"]), str(act.get("kind")),
              _fmt_bytes(m.get("expert_bytes")), _fmt_bytes(m.get("passthrough_bytes")))
    console.print(t)
    plan = info.get("plan")
    if plan:
        p = _table(f"plan: {plan['target']['backend']} / {plan['target']['hardware']} ({plan['target']['arch']}), "
                   f"tp={plan['tp']} ep={plan['ep']}",
                   ["rank", "ep rank", "tp rank", "experts", "I per rank", "I padded", "padding", "bytes"])
        for r in plan["ranks"]:
            ex = r["experts"]
            p.add_row(str(r["rank"]), str(r["ep_rank"]), str(r["tp_rank"]), f"{ex[0]}..{ex[-1]} ({len(ex)})",
                      str(r["intermediate"]), str(r["intermediate_padded"]),
                      f"{_fmt_bytes(r.get('padding_bytes'))} ({100 * r.get('padding_fraction', 0):.1f}%)",
                      _fmt_bytes(r.get("bytes")))
        console.print(p)
        for w in plan.get("warnings", []):
            console.print(f"[yellow]warning:[/] {w}")
        console.print(f"chain (w13_weight): {plan.get('chain_w13', '')}")


def render_targets(rows: list[dict], console) -> None:
    t = _table("supported targets (w13_weight steps for a gated, separate gate/up source at tp=2; "
               "--json gives every parameter)",
               ["backend", "hardware", "arch", "quant", "variant", "align", "w13_weight chain"])
    for r in rows:
        variant = r["variant"] + (" (default)" if r.get("default") and r["variant"] != "default" else "")
        t.add_row(r["backend"], r["hardware"], r["arch"], r["quant"], variant, str(r.get("alignment", "")),
                  " -> ".join(r.get("steps", [])))
    console.print(t)


def render_summary(result: dict, console) -> None:
    if result.get("dry_run"):
        console.print("[bold]dry run[/]: nothing written")
        if "plan" in result:
            render_inspect({"model": result["model_summary"], "plan": result["plan"], "source": result.get("source")},
                           console)
        return
    s = result.get("summary", result)
    t = _table(f"converted to {s.get('out', '')}", ["files", "bytes", "padding", "time"])
    t.add_row(str(s.get("files")), _fmt_bytes(s.get("bytes")),
              f"{_fmt_bytes(s.get('padding_bytes'))} ({100 * s.get('padding_fraction', 0):.2f}%)",
              f"{s.get('seconds', 0):.1f} s")
    console.print(t)


def render_smoke(rows: list[dict], console) -> None:
    t = _table("moepack run", ["layer", "ranks", "tokens", "device", "kernel", "ms", "max abs err", "rel err", "result"])
    for r in rows:
        t.add_row(str(r["layer"]), str(r.get("ranks")), str(r.get("tokens")), str(r.get("device")),
                  str(r.get("kernel")), f"{r.get('ms', 0):.2f}", f"{r.get('max_abs_err', 0):.2e}",
                  f"{r.get('rel_err', 0):.2e}", "ok" if r.get("ok", True) else "[red]FAIL[/]")
    console.print(t)
