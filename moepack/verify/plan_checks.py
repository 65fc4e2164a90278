"""The plan check: the manifest's chains and source pieces are what moepack plans for this source and target.

Reconstruction proves the stored bytes agree with the manifest's chain; this proves the chain is the
right one: the source is described afresh (`formats.detect.describe`) and each MoE layer planned
(`layouts.plan.plan_layer`) for the manifest's target, tp and ep. A chain that inverts cleanly but is
not the target's (a SEPARATED shuffle recorded for an INTERLEAVE target, a missing de-interleave, other
padding) fails here. Targets with several variants pass when the chain is one variant's.
"""
from __future__ import annotations

from ..convert.manifest import Manifest
from ..errors import MoepackError
from .report import FAIL, OK, Row


def _pieces_json(ct) -> list[dict]:
    return [{"name": p.name, "expert": p.expert, "rows": list(p.rows), "shape": list(p.shape), "dtype": p.dtype}
            for p in ct.pieces]


def check_plan(manifest: Manifest, ckpt) -> list[Row]:
    """One `plan` row per manifest expert entry (and one for the model when the source is not describable)."""
    from ..formats.detect import describe
    from ..layouts.plan import plan_layer
    from ..layouts.targets import list_targets

    t = manifest["target"]
    par = manifest["parallel"]
    try:
        desc = describe(ckpt)
    except MoepackError as e:
        return [Row("model", "plan", FAIL, f"the source cannot be described: {e}")]
    targets = [x for x in list_targets()
               if (x.backend, x.hardware, x.quant) == (t["backend"], t["hardware"], t["quant"])]
    if t.get("variant"):
        targets = [x for x in targets if x.variant == t["variant"]]
    if not targets:
        return [Row("model", "plan", FAIL, f"no registered target {t['backend']}/{t['hardware']}/{t['quant']}")]
    plans: dict[int, list] = {}
    rows: list[Row] = []
    for e in manifest["experts"]:
        layer = e["layer"]
        if layer not in plans:
            try:
                spec = desc.layer(layer)
            except KeyError:
                rows.append(Row(e["name"], "plan", FAIL, f"the source has no MoE layer {layer}"))
                continue
            plans[layer] = []
            for target in targets:
                try:
                    plans[layer].append((target, spec, plan_layer(spec, target, par["tp"], par["ep"])))
                except MoepackError:
                    continue
        rows.append(_check_entry(e, plans.get(layer, [])))
    return rows


def _check_entry(e: dict, plans: list) -> Row:
    if not plans:
        return Row(e["name"], "plan", FAIL, "no target variant can plan this layer")
    spec = plans[0][1]
    ct = spec.tensors.get(e["role"])
    if ct is None:
        return Row(e["name"], "plan", FAIL, f"the source has no {e['role']} for layer {e['layer']}")
    if list(e["logical_shape"]) != list(ct.shape) or e["logical_dtype"] != ct.dtype:
        return Row(e["name"], "plan", FAIL, f"manifest canonical {e['logical_dtype']} {e['logical_shape']}, "
                                            f"the source describes {ct.dtype} {list(ct.shape)}")
    if e["sources"] != _pieces_json(ct):
        return Row(e["name"], "plan", FAIL, "the manifest's source pieces differ from the source's description")
    for target, _, plan in plans:
        if plan.chains[e["role"]].to_json() == e["chain"]:
            variant = "" if target.variant == "default" else f" ({target.variant})"
            return Row(e["name"], "plan", OK, f"chain is {target.backend}/{target.hardware}{variant}'s plan")
    names = " -> ".join(s["name"] for s in e["chain"])
    want = " | ".join(" -> ".join(s["name"] for s in p.chains[e["role"]].to_json()) for _, _, p in plans)
    return Row(e["name"], "plan", FAIL, f"manifest chain [{names}] is not the target's plan [{want}]")

