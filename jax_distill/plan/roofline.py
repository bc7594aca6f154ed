"""A step-time estimate from the compiled program: a roofline over the optimized HLO text, for GPUs and TPUs.

`cost_analysis()` returns nothing for GPU executables, and libtpu's ``optimal_seconds`` is negative for v5e/v6e
training steps (plan/step_time.py), so this walks `compiled.as_text()` (the scheduled, fused, SPMD-partitioned
per-device program) and prices every kernel the chip would run:

- a kernel (fusion, cuBLAS/cuDNN/Mosaic custom call, unfused op) takes max(FLOPs / peak, HBM bytes / bandwidth).
  FLOPs are those of its matrix products (``dot``: 2 x output elements x contracted size; ``convolution``, the TPU
  compiler's form of most matmuls: 2 x output batch x output features x input features x the (output, window)
  positions that fall inside the unpadded input; cuDNN attention: 4·B·H·T·S·D forward, 10·B·H·T·S·D backward,
  halved for a causal mask); bytes are what it reads and writes in HBM (its operands and results, except slices
  read and in-place updates written through ``dynamic-(update-)slice``, which count only the slice, and arrays in
  another memory space, e.g. TPU VMEM ``S(1)``, which do not touch HBM);
- a collective moves its bytes over the chip's fast links (NVLink in a node, ICI in a TPU slice) when its group
  stays in one node, else over the inter-node network (ring costs: all-gather (n-1) x shard, reduce-scatter and
  all-to-all (n-1)/n x input, all-reduce 2(n-1)/n x input; collective-permute its input). TPU programs wrap
  collectives in fusions (asynchronous start/done pairs, all-reduce + dynamic-slice as a reduce-scatter, an
  all-gather fused into the matmul that consumes it): each collective is priced once per ``channel_id``, and the
  fusion as a kernel only if it computes a product;
- a while loop costs its body x the trip count the compiler recorded (``known_trip_count``), a conditional its most
  expensive branch.

Everything runs at the datasheet's peak rates, so the result is a lower bound on the step time (no kernel launch
gaps, no tail effects, no efficiency loss). Compute and collectives are reported apart: ``serial_s`` assumes no
overlap, ``overlapped_s`` perfect overlap (XLA's latency-hiding scheduler overlaps FSDP gathers with compute).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

# Bytes per element of XLA primitive types (sub-byte types rounded up per element is wrong; use fractions).
_ELEMENT_BYTES = {
    "pred": 1, "s2": 0.25, "u2": 0.25, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "s32": 4,
    "u32": 4, "s64": 8, "u64": 8, "f16": 2, "bf16": 2, "f32": 4, "f64": 8, "c64": 8, "c128": 16, "tf32": 4,
    "f8e5m2": 1, "f8e4m3fn": 1, "f8e4m3b11fnuz": 1, "f8e5m2fnuz": 1, "f8e4m3fnuz": 1, "f8e4m3": 1, "f8e3m4": 1,
    "f8e8m0fnu": 1, "f4e2m1fn": 0.5, "token": 0,
}
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([^\]]*)\](\{[^}]*\})?")
_OFF_HBM = re.compile(r"S\([1-9]\d*\)")  # a layout's memory space other than 0 (HBM): VMEM, SMEM, host

# Ops that launch no kernel and move no data.
_FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all", "partition-id", "replica-id",
         "opt-barrier", "domain", "add-dependency", "all-gather-done", "all-reduce-done", "reduce-scatter-done",
         "all-to-all-done", "collective-permute-done", "async-done", "async-update", "copy-done", "send-done",
         "recv-done", "iota", "get-dimension-size", "set-dimension-size"}
_COLLECTIVES = {"all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute",
                "collective-broadcast", "ragged-all-to-all"}
_SLICES = {"dynamic-slice", "slice", "gather"}
_PASS_THROUGH = {"bitcast", "reshape", "copy", "transpose", "convert"}


@dataclass(frozen=True)
class ChipRates:
    """Peak rates of one chip and its links (bytes/s are one direction, per chip)."""

    peak_flops: float  # dense bf16/fp16 matrix-unit FLOP/s
    hbm_bytes_per_s: float
    link_bytes_per_s: float  # within a node: NVLink; within a TPU slice: ICI (every port of the chip)
    network_bytes_per_s: float  # between nodes, per chip (one NIC per GPU)
    chips_per_node: int  # a TPU slice is one node: its collectives stay on ICI
    f32_matmul_ratio: float = 0.5  # f32 matmul rate / peak: TF32 on GPUs; 1 on TPUs (default precision: one bf16 pass)

    def matmul_flops_per_s(self, dtype: str) -> float:
        if dtype.startswith(("f8", "f4")):
            return 2 * self.peak_flops
        if dtype in ("f32", "tf32"):
            return self.peak_flops * self.f32_matmul_ratio
        if dtype == "f64":
            return self.peak_flops / 16
        return self.peak_flops


# ---------------------------------------------------------------------------------------------------------- parsing


def _dims(text: str) -> tuple[int, ...]:
    return tuple(int(d.lstrip("<=")) for d in text.split(",") if d.strip())


def arrays(shape: str) -> list[tuple[str, tuple[int, ...]]]:
    """(dtype, dims) of every array in an HLO shape string (tuples flattened)."""
    return [(t, _dims(d)) for t, d, _ in _ARRAY.findall(shape) if t in _ELEMENT_BYTES]


def shape_bytes(shape: str, hbm_only: bool = True) -> float:
    """Bytes of an HLO shape; ``hbm_only``: arrays laid out in another memory space (``S(1)``: TPU VMEM) count zero."""
    return sum(_ELEMENT_BYTES[t] * math.prod(_dims(d)) for t, d, layout in _ARRAY.findall(shape)
               if t in _ELEMENT_BYTES and not (hbm_only and _OFF_HBM.search(layout)))


def _balanced(text: str, start: int) -> int:
    """Index just past the bracket group opening at ``text[start]``."""
    pairs = {"(": ")", "{": "}", "[": "]"}
    stack = []
    for i in range(start, len(text)):
        c = text[i]
        if c in pairs:
            stack.append(pairs[c])
        elif stack and c == stack[-1]:
            stack.pop()
            if not stack:
                return i + 1
    raise ValueError(f"unbalanced brackets in HLO: {text[start:start + 80]!r}")


@dataclass
class Instr:
    name: str
    shape: str
    opcode: str
    operands: list[str]
    attrs: str
    root: bool = False
    operand_text: str = ""

    @property
    def bytes(self) -> float:
        return shape_bytes(self.shape)

    def attr(self, key: str) -> str | None:
        m = re.search(rf"\b{key}=%([\w.\-]+)", self.attrs)
        return m.group(1) if m else None


@dataclass
class Computation:
    name: str
    instrs: list[Instr] = field(default_factory=list)
    by_name: dict[str, Instr] = field(default_factory=dict)
    entry: bool = False

    def users(self, name: str) -> list[Instr]:
        return [i for i in self.instrs if name in i.operands]

    def params(self) -> dict[int, Instr]:
        """Parameters by their number."""
        return {int(i.operand_text.strip()): i for i in self.instrs
                if i.opcode == "parameter" and i.operand_text.strip().isdigit()}


_INSTR = re.compile(r"^\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*")
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*(\(.*\))?\s*(->.*)?\{\s*$")


def parse_hlo(text: str) -> tuple[dict[str, Computation], str, int]:
    """Computations by name, the entry computation's name and the number of devices (partitions x replicas)."""
    comps: dict[str, Computation] = {}
    entry, cur = "", None
    m = re.search(r"num_partitions=(\d+)", text)
    n_dev = int(m.group(1)) if m else 1
    m = re.search(r"replica_count=(\d+)", text)
    n_dev *= int(m.group(1)) if m else 1
    for line in text.splitlines():
        if cur is None:
            h = _HEADER.match(line)
            if h and not line.startswith("HloModule"):
                cur = Computation(h.group(2), entry=bool(h.group(1)))
                comps[cur.name] = cur
                if cur.entry:
                    entry = cur.name
            continue
        if line.rstrip() == "}":  # not "}}, metadata=..." after a Mosaic kernel's multi-line backend_config
            cur = None
            continue
        im = _INSTR.match(line)
        if not im:
            continue
        rest = line[im.end():]
        if rest.startswith("("):
            end = _balanced(rest, 0)
        else:
            end = rest.index(" ") if " " in rest else len(rest)
        shape, rest = rest[:end], rest[end:].lstrip()
        om = re.match(r"([\w\-]+)\(", rest)
        if not om:
            continue
        opcode = om.group(1)
        close = _balanced(rest, om.end() - 1)
        operand_text = rest[om.end():close - 1]
        ins = Instr(im.group(2), shape, opcode, re.findall(r"%([\w.\-]+)", operand_text), rest[close:],
                    root=bool(im.group(1)), operand_text=operand_text)
        cur.instrs.append(ins)
        cur.by_name[ins.name] = ins
    if not entry:
        raise ValueError("no ENTRY computation in the HLO text")
    return comps, entry, n_dev


# ----------------------------------------------------------------------------------------------- replica groups


def replica_groups(ins: Instr, n_dev: int) -> list[list[int]]:
    """Device groups of a collective, from any of XLA's spellings (explicit, iota, mesh-axes)."""
    a = ins.attrs
    m = re.search(r"replica_groups=mesh\[([^\]]*)\](?:,\s*device_ids=\(\[([\d,]+)\](?:T\(([\d,]+)\))?\))?\s*"
                  r"\{([^}]*)\}", a)
    if m:
        axes = re.findall(r"'([^']+)'=(\d+)", m.group(1))
        names, sizes = [n for n, _ in axes], [int(s) for _, s in axes]
        total = math.prod(sizes)
        ids = np.arange(total)
        if m.group(2):
            ids = ids.reshape(_dims(m.group(2)))
            if m.group(3):
                ids = ids.transpose(_dims(m.group(3)))
        ids = ids.reshape(sizes)
        chosen = [names.index(n) for n in re.findall(r"'([^']+)'", m.group(4))]
        others = [i for i in range(len(sizes)) if i not in chosen]
        size = math.prod(sizes[i] for i in chosen)
        return ids.transpose(others + chosen).reshape(-1, size).tolist()
    m = re.search(r"replica_groups=\[([\d,]+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", a)
    if m:
        shape = _dims(m.group(1))
        ids = np.arange(math.prod(_dims(m.group(2)))).reshape(_dims(m.group(2)))
        if m.group(3):
            ids = ids.transpose(_dims(m.group(3)))
        return ids.reshape(shape[0], -1).tolist()
    m = re.search(r"replica_groups=\{((?:\{[\d,\s]*\},?\s*)*)\}", a)
    if m and m.group(1).strip():
        return [list(_dims(g)) for g in re.findall(r"\{([\d,\s]*)\}", m.group(1))]
    m = re.search(r"source_target_pairs=\{((?:\{[\d,\s]*\},?\s*)*)\}", a)
    if m:
        return [list(_dims(g)) for g in re.findall(r"\{([\d,\s]*)\}", m.group(1))]
    return [list(range(n_dev))]


# ------------------------------------------------------------------------------------------------------ costing


@dataclass
class Roofline:
    """Per-device step-time estimate of one compiled program (seconds at peak rates)."""

    flops: float = 0.0  # matrix-product FLOPs per device per step
    hbm_bytes: float = 0.0
    compute_s: float = 0.0  # sum over kernels of max(FLOPs / peak, bytes / bandwidth)
    matmul_s: float = 0.0  # of which kernels bound by their FLOPs (gemm fusions, cuBLAS)
    attention_s: float = 0.0  # of which cuDNN attention kernels
    memory_s: float = 0.0  # of which the remaining (memory-bound) kernels
    collective_s: float = 0.0
    link_s: float = 0.0  # NVLink / ICI
    network_s: float = 0.0
    collective_bytes: float = 0.0  # bytes each device sends
    kernels: int = 0
    collectives: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def serial_s(self) -> float:
        return self.compute_s + self.collective_s

    @property
    def overlapped_s(self) -> float:
        return max(self.compute_s, self.collective_s)

    def add(self, other: Roofline, times: float = 1.0) -> None:
        for k, v in asdict(other).items():
            if isinstance(v, (int, float)):
                setattr(self, k, getattr(self, k) + v * times)
        self.warnings.extend(w for w in other.warnings if w not in self.warnings)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["serial_s"], d["overlapped_s"] = self.serial_s, self.overlapped_s
        return d


class _Estimator:
    def __init__(self, text: str, rates: ChipRates):
        self.comps, self.entry, self.n_dev = parse_hlo(text)
        self.rates = rates
        self._memo: dict[str, Roofline] = {}

    # -- FLOPs of matrix products inside a (fused) computation, with the dtype that sets their rate
    def _dot_time_flops(self, comp: Computation) -> tuple[float, float]:
        t = f = 0.0
        for ins in comp.instrs:
            if ins.opcode in ("dot", "convolution"):
                fl = self._dot_flops(comp, ins) if ins.opcode == "dot" else self._conv_flops(comp, ins)
                dtype = self._operand_dtype(comp, ins)
                t += fl / self.rates.matmul_flops_per_s(dtype)
                f += fl
            elif ins.opcode in ("fusion", "call", "async-start"):
                sub = ins.attr("calls") or ins.attr("to_apply")
                if sub in self.comps:
                    st, sf = self._dot_time_flops(self.comps[sub])
                    t += st
                    f += sf
        return t, f

    def _operand_dtype(self, comp: Computation, ins: Instr) -> str:
        src = comp.by_name.get(ins.operands[0]) if ins.operands else None
        arr = arrays(src.shape) if src else []
        return arr[0][0] if arr else "bf16"

    def _dot_flops(self, comp: Computation, ins: Instr) -> float:
        out = arrays(ins.shape)
        lhs = comp.by_name.get(ins.operands[0])
        m = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", ins.attrs)
        if not out or lhs is None or not m:
            return 0.0
        ldims = arrays(lhs.shape)[0][1]
        k = math.prod(ldims[i] for i in _dims(m.group(1)))
        return 2.0 * math.prod(out[0][1]) * k

    def _conv_flops(self, comp: Computation, ins: Instr) -> float:
        """2 x output batch x output features x kernel input features x, per spatial dimension, the (output,
        window) position pairs that read the unpadded input (as XLA's HloCostAnalysis counts them)."""
        m = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", ins.attrs)
        srcs = [comp.by_name.get(o) for o in ins.operands[:2]]
        if not m or len(srcs) < 2 or None in srcs or not arrays(ins.shape):
            return 0.0
        (ll, kl, ol), out = m.groups(), arrays(ins.shape)[0][1]
        lhs, rhs = arrays(srcs[0].shape)[0][1], arrays(srcs[1].shape)[0][1]
        window = (re.search(r"window=\{([^}]*)\}", ins.attrs) or re.search("()", "")).group(1)
        opts = dict(kv.split("=") for kv in window.split() if "=" in kv)
        n = sum(c.isdigit() for c in ol)

        def per_dim(key: str, default: int) -> list[str]:
            return opts[key].split("x") if key in opts else [str(default)] * n

        pads = [p.split("_") for p in per_dim("pad", 0)] if "pad" in opts else [["0", "0"]] * n
        strides, dilations = per_dim("stride", 1), per_dim("rhs_dilate", 1)
        positions = 1
        for s in range(n):
            size, k_size, o_size = lhs[ll.index(str(s))], rhs[kl.index(str(s))], out[ol.index(str(s))]
            lo, st, rd = int(pads[s][0]), int(strides[s]), int(dilations[s])
            count = 0
            for k in range(k_size):  # outputs o with 0 <= o * st + k * rd - lo < size
                first = max(0, -(-(lo - k * rd) // st))
                last = min(o_size - 1, (size - 1 + lo - k * rd) // st)
                count += max(0, last - first + 1)
            positions *= count
        return 2.0 * out[ol.index("b")] * out[ol.index("f")] * rhs[kl.index("i")] * positions

    # -- HBM traffic of a fusion: operands and results, slices and in-place updates counted by the slice
    def _fusion_bytes(self, ins: Instr, fused: Computation | None, comp: Computation) -> float:
        operand_bytes = [self._bytes_of(comp, o) for o in ins.operands]
        if fused is None:
            return sum(operand_bytes) + ins.bytes
        params = fused.params()
        total = 0.0
        in_place: set[str] = set()
        for idx, full in enumerate(operand_bytes):
            p = params.get(idx)
            if p is None:
                total += full
                continue
            uses = self._uses(fused, p.name)
            if uses and all(u.opcode in _SLICES and u.operands and u.operands[0] == src for u, src in uses):
                total += sum(u.bytes for u, _ in uses)
            elif uses and all(u.opcode == "dynamic-update-slice" and u.operands[0] == src for u, src in uses):
                in_place.update(u.name for u, _ in uses)  # the buffer is updated in place: only the slice moves
            else:
                total += full
        root = next((i for i in fused.instrs if i.root), None)
        outs = [root]
        if root is not None and root.opcode == "tuple":
            outs = [fused.by_name[o] for o in root.operands if o in fused.by_name]
        for o in outs:
            if o is None:
                continue
            if o.name in in_place and len(o.operands) > 1:
                total += self._bytes_of(fused, o.operands[1])
            else:
                total += o.bytes
        return total

    def _uses(self, comp: Computation, name: str, depth: int = 0) -> list[tuple[Instr, str]]:
        """Users of ``name``, looking through bitcasts and reshapes (user, the value it consumes)."""
        out = []
        for u in comp.users(name):
            if u.opcode in ("bitcast", "reshape") and depth < 4:
                out.extend(self._uses(comp, u.name, depth + 1) or [(u, name)])
            else:
                out.append((u, name))
        return out

    def _bytes_of(self, comp: Computation, name: str, hbm_only: bool = True) -> float:
        src = comp.by_name.get(name)
        return shape_bytes(src.shape, hbm_only) if src is not None else 0.0

    # -- one computation (entry, loop body, branch)
    def cost(self, name: str) -> Roofline:
        if name in self._memo:
            return self._memo[name]
        comp = self.comps[name]
        r = Roofline()
        channels: set[str] = set()  # collectives already priced in this computation (async start/done pairs)
        for ins in comp.instrs:
            op = ins.opcode
            if op in _FREE or op.endswith("-done"):
                continue
            if op == "while":
                body, cond = ins.attr("body"), ins.attr("condition")
                m = re.search(r'"known_trip_count":\{"n":"(\d+)"', ins.attrs)
                trips = int(m.group(1)) if m else 1
                if not m:
                    r.warnings.append(f"while loop {ins.name}: trip count unknown, counted once")
                for sub in (body, cond):
                    if sub in self.comps:
                        r.add(self.cost(sub), trips)
                continue
            if op == "conditional":
                branches = re.findall(r"%([\w.\-]+)", (re.search(r"branch_computations=\{([^}]*)\}", ins.attrs)
                                                       or re.search(r"(true_computation=.*)", ins.attrs)
                                                       or re.search(r"()", "")).group(1))
                costs = [self.cost(b) for b in branches if b in self.comps]
                if costs:
                    r.add(max(costs, key=lambda c: c.serial_s))
                continue
            if op in ("call", "async-start"):
                sub = ins.attr("to_apply") or ins.attr("calls")
                if sub in self.comps:
                    r.add(self.cost(sub))
                continue
            if op == "fusion" and self._wraps_collective(ins.attr("calls")):
                # TPU: an asynchronous collective is a start and a done fusion, each holding the same collective
                # (one channel_id); an all-reduce + dynamic-slice is fused into a reduce-scatter; an all-gather
                # is fused with the matmul that consumes it. Price each collective once, and the fusion as a
                # kernel only where it computes a product (not the start/done bookkeeping).
                sub = self.comps[ins.attr("calls")]
                for sub_ins in sub.instrs:
                    base = sub_ins.opcode.removesuffix("-start")
                    channel = re.search(r"channel_id=(\d+)", sub_ins.attrs)
                    if base in _COLLECTIVES and not (channel and channel.group(1) in channels):
                        channels.update([channel.group(1)] if channel else [])
                        self._collective(sub, sub_ins, base, r)
                if self._dot_time_flops(sub)[1]:
                    self._kernel(comp, ins, r)
                continue
            base = op.removesuffix("-start")
            if base in _COLLECTIVES:
                self._collective(comp, ins, base, r)
                continue
            self._kernel(comp, ins, r)
        self._memo[name] = r
        return r

    def _wraps_collective(self, name: str | None) -> bool:
        comp = self.comps.get(name or "")
        return comp is not None and any(i.opcode.removesuffix("-start") in _COLLECTIVES for i in comp.instrs)

    def _kernel(self, comp: Computation, ins: Instr, r: Roofline) -> None:
        op = ins.opcode
        flops, flop_t, kind = 0.0, 0.0, "memory"
        if op in ("fusion", "fusion-start"):  # fusion-start: an asynchronous fusion (e.g. a slice on a side stream)
            fused = self.comps.get(ins.attr("calls") or "")
            bytes_ = self._fusion_bytes(ins, fused, comp)
            if fused is not None:
                flop_t, flops = self._dot_time_flops(fused)
        elif op == "custom-call":
            outs = arrays(ins.shape)
            if len(outs) > 1 and outs[-1][0] in ("s8", "u8") and len(outs[-1][1]) == 1:
                outs = outs[:-1]  # the library's scratch workspace, not traffic
            bytes_ = sum(self._bytes_of(comp, o) for o in ins.operands) + sum(
                _ELEMENT_BYTES[t] * math.prod(d) for t, d in outs)
            target = (re.search(r'custom_call_target="([^"]+)"', ins.attrs) or re.search("()", "")).group(1)
            if target.startswith("__cudnn$fmha"):
                flops, kind = self._attention_flops(ins, target), "attention"
                flop_t = flops / self.rates.peak_flops
            elif target.startswith("__cublas"):
                flops = self._gemm_flops(comp, ins)
                flop_t = flops / self.rates.matmul_flops_per_s(self._operand_dtype(comp, ins))
            elif target.startswith("__cudnn"):
                r.warnings.append(f"cuDNN call {target}: FLOPs not counted (bytes only)")
        elif op == "copy-start":  # an asynchronous copy: read its operand, write its destination (result 0)
            dest = _ARRAY.findall(ins.shape)[:1]
            bytes_ = sum(self._bytes_of(comp, o) for o in ins.operands) + sum(
                _ELEMENT_BYTES.get(t, 0) * math.prod(_dims(d)) for t, d, layout in dest if not _OFF_HBM.search(layout))
        elif op == "slice-start":  # TPU: an asynchronous slice (into VMEM): reads the slice once
            bytes_ = shape_bytes(ins.shape, False) - sum(self._bytes_of(comp, o, False) for o in ins.operands)
        elif op == "dynamic-update-slice":
            bytes_ = 2 * self._bytes_of(comp, ins.operands[1]) if len(ins.operands) > 1 else ins.bytes
        elif op in _SLICES:
            bytes_ = 2 * ins.bytes
        else:
            bytes_ = sum(self._bytes_of(comp, o) for o in ins.operands) + ins.bytes
            if op == "dot":
                flops = self._dot_flops(comp, ins)
                flop_t = flops / self.rates.matmul_flops_per_s(self._operand_dtype(comp, ins))
            elif op == "convolution":
                flops = self._conv_flops(comp, ins)
                flop_t = flops / self.rates.matmul_flops_per_s(self._operand_dtype(comp, ins))
        mem_t = bytes_ / self.rates.hbm_bytes_per_s
        t = max(flop_t, mem_t)
        r.kernels += 1
        r.flops += flops
        r.hbm_bytes += bytes_
        r.compute_s += t
        if kind == "attention":
            r.attention_s += t
        elif flop_t >= mem_t and flops:
            r.matmul_s += t
        else:
            r.memory_s += t

    def _gemm_flops(self, comp: Computation, ins: Instr) -> float:
        out = arrays(ins.shape)
        lhs = comp.by_name.get(ins.operands[0]) if ins.operands else None
        m = re.search(r'"lhs_contracting_dimensions":\[([^\]]*)\]', ins.attrs)
        if not out or lhs is None or not m:
            return 0.0
        ldims = arrays(lhs.shape)[0][1]
        k = math.prod(ldims[int(i.strip('" '))] for i in m.group(1).split(",") if i.strip())
        return 2.0 * math.prod(out[0][1]) * k

    def _attention_flops(self, ins: Instr, target: str) -> float:
        m = re.search(r'"intermediate_tensor_shape":\s*\{[^{}]*?"dimensions":\s*\[([^\]]*)\]', ins.attrs)
        out = arrays(ins.shape)
        if not m or not out:
            return 0.0
        bhts = math.prod(int(x.strip('" ')) for x in m.group(1).split(",") if x.strip())
        d = out[0][1][-1]
        per = 4.0 * bhts * d  # Q·K^T and P·V, 2 FLOPs per multiply-add
        if "Backward" in target:
            per *= 2.5  # recomputed scores, dV, dP, dQ, dK: 5 products instead of 2
        mask = re.search(r'"mask_type":\s*"(\w+)"', ins.attrs)
        if mask and "CAUSAL" in mask.group(1):
            per *= 0.5
        return per

    def _collective(self, comp: Computation, ins: Instr, base: str, r: Roofline) -> None:
        in_bytes = sum(self._bytes_of(comp, o, hbm_only=False) for o in ins.operands)  # VMEM or HBM: on the wire
        groups = replica_groups(ins, self.n_dev)
        g = groups[0] if groups else [0]
        n = len(g)
        if base == "collective-permute" or base == "collective-broadcast":
            pairs = groups
            crosses = any(len({d // self.rates.chips_per_node for d in p}) > 1 for p in pairs)
            wire = in_bytes
            local = 1
        else:
            nodes = {d // self.rates.chips_per_node for d in g}
            crosses = len(nodes) > 1
            local = max(1, n // max(1, len(nodes)))
            if n <= 1:
                wire = 0.0
            elif base == "all-gather":
                wire = (n - 1) * in_bytes
            elif base == "all-reduce":
                wire = 2 * (n - 1) / n * in_bytes
            else:  # reduce-scatter, all-to-all
                wire = (n - 1) / n * in_bytes
        if crosses:
            # NCCL runs one ring per NIC: a group with `local` members per node uses `local` NICs at once.
            bw = min(self.rates.link_bytes_per_s, local * self.rates.network_bytes_per_s)
        else:
            bw = self.rates.link_bytes_per_s
        t = wire / bw if wire else 0.0
        r.collectives += 1
        r.collective_bytes += wire
        r.collective_s += t
        if crosses:
            r.network_s += t
        else:
            r.link_s += t


def roofline(hlo_text: str, rates: ChipRates) -> Roofline:
    """Roofline step time of one compiled program (``compiled.as_text()``), per device."""
    est = _Estimator(hlo_text, rates)
    out = Roofline()
    out.add(est.cost(est.entry))
    return out
