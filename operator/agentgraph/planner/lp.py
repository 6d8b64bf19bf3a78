"""Writing a MILP for HiGHS: the column/row builder, the SLA's timing rows over the block DAG,
and a HiGHS that prints nothing. Shared by the solves with and without shared model servers."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Mapping

import highspy
import numpy as np

from agentgraph.planner.graph import GraphModel

INF = np.inf


class Builder:
    """A MILP as it is written: columns (cost, integrality, upper bound) and sparse rows."""

    def __init__(self) -> None:
        self.cost: list[float] = []
        self.integer: list[int] = []
        self.upper: list[float] = []
        self.rows: list[dict[int, float]] = []
        self.lo: list[float] = []
        self.hi: list[float] = []

    def var(self, cost: float = 0.0, binary: bool = False, integer: bool = False) -> int:
        """A column, >= 0: binary, a whole number (``integer``), or continuous."""
        self.cost.append(cost)
        self.integer.append(1 if binary or integer else 0)
        self.upper.append(1.0 if binary else INF)
        return len(self.cost) - 1

    def row(self, coefs: Mapping[int, float], lo: float, hi: float) -> None:
        self.rows.append(dict(coefs))
        self.lo.append(lo)
        self.hi.append(hi)


def timing(
    b: Builder, graph: GraphModel, duration: Mapping[str, Mapping[int, float]]
) -> None:
    """The SLA's rows: ``duration[step]`` is the step's time (in SLA units) as a linear
    expression over columns; finish times follow the blocks, every sink within 1."""
    finish: dict[str, int] = {}
    for block in graph.blocks:
        fb = b.var()
        finish[block.id] = fb
        if block.loop is not None:
            loop, heads = block.loop, b.var()
            for step in loop.heads:
                b.row({heads: 1.0, **{c: -v for c, v in duration[step].items()}}, 0.0, INF)
            own = {heads: -loop.expected}
            if loop.rest and loop.expected > 1:
                length = b.var()
                local = {step: b.var() for step in loop.rest}
                for step in loop.rest:
                    for p in loop.rest_preds(step) or (None,):
                        coefs = {local[step]: 1.0, **{c: -v for c, v in duration[step].items()}}
                        if p is not None:
                            coefs[local[p]] = -1.0
                        b.row(coefs, 0.0, INF)
                    b.row({length: 1.0, local[step]: -1.0}, 0.0, INF)
                own[length] = -(loop.expected - 1)
        else:
            assert block.step is not None
            own = {c: -v for c, v in duration[block.step].items()}
        for p in block.preds or (None,):
            coefs = {fb: 1.0, **own}
            if p is not None:
                coefs[finish[p]] = -1.0
            b.row(coefs, 0.0, INF)
    for sink in graph.sinks:
        b.row({finish[sink]: 1.0}, -INF, 1.0)


_BANNER = threading.Lock()
_banner_shown = False


def quiet_highs() -> highspy.Highs:
    """A quiet HiGHS. The first one made in a process prints a banner on file descriptor 1, below
    Python (``-o json`` must print nothing but the document): it is sent to /dev/null."""
    global _banner_shown
    with _BANNER:
        if _banner_shown:
            h = highspy.Highs()
        else:
            sys.stdout.flush()
            saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            try:
                h = highspy.Highs()
            finally:
                os.dup2(saved, 1)
                os.close(saved)
                os.close(null)
            _banner_shown = True
    h.setOptionValue("output_flag", False)
    return h


def infinite(values: np.ndarray) -> np.ndarray:
    return np.where(np.isposinf(values), highspy.kHighsInf,
                    np.where(np.isneginf(values), -highspy.kHighsInf, values))


def highs_lp(b: Builder) -> highspy.HighsLp:
    """The builder's model as HiGHS takes it (column-wise), integrality not set."""
    n = len(b.cost)
    starts = np.zeros(n + 1, dtype=np.int32)
    for coefs in b.rows:
        for c in coefs:
            starts[c + 1] += 1
    starts = np.cumsum(starts).astype(np.int32)
    index = np.zeros(starts[-1], dtype=np.int32)
    value = np.zeros(starts[-1])
    fill = starts[:-1].copy()
    for r, coefs in enumerate(b.rows):
        for c, v in coefs.items():
            index[fill[c]] = r
            value[fill[c]] = v
            fill[c] += 1
    lp = highspy.HighsLp()
    lp.num_col_ = n
    lp.num_row_ = len(b.rows)
    lp.col_cost_ = np.array(b.cost)
    lp.col_lower_ = np.zeros(n)
    lp.col_upper_ = infinite(np.array(b.upper))
    lp.row_lower_ = infinite(np.array(b.lo))
    lp.row_upper_ = infinite(np.array(b.hi))
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = starts
    lp.a_matrix_.index_ = index
    lp.a_matrix_.value_ = value
    return lp


def select_columns(model: highspy.HighsLp, keep: np.ndarray) -> highspy.HighsLp:
    """The column-wise ``model`` with only the columns where ``keep`` is true, in their order
    (the rows stay; integrality is not carried)."""
    starts = np.asarray(model.a_matrix_.start_)
    index = np.asarray(model.a_matrix_.index_)
    value = np.asarray(model.a_matrix_.value_)
    cols = np.flatnonzero(keep)
    counts = starts[cols + 1] - starts[cols]
    picked = (np.repeat(starts[cols] - np.concatenate(([0], np.cumsum(counts)[:-1])), counts)
              + np.arange(counts.sum()))
    out = highspy.HighsLp()
    out.num_col_ = len(cols)
    out.num_row_ = model.num_row_
    out.col_cost_ = np.asarray(model.col_cost_)[cols]
    out.col_lower_ = np.asarray(model.col_lower_)[cols]
    out.col_upper_ = np.asarray(model.col_upper_)[cols]
    out.row_lower_ = np.asarray(model.row_lower_)
    out.row_upper_ = np.asarray(model.row_upper_)
    out.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    out.a_matrix_.start_ = np.concatenate(([0], np.cumsum(counts))).astype(np.int32)
    out.a_matrix_.index_ = index[picked].astype(np.int32)
    out.a_matrix_.value_ = value[picked]
    return out
