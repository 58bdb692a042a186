"""The TC interception data path (ebpf_tproxy's): first-match rules on a device's egress."""

from __future__ import annotations

from reconciler.core.capability import Capability, Kind, TcPrograms
from reconciler.core.tables import id_ref
from reconciler.intercept import hooks, programs
from reconciler.intercept import tables as ict
from reconciler.intercept.attach import PLUMBING
from reconciler.intercept.build import build_intercept
from reconciler.intercept.checks import cross_check
from reconciler.intercept.compile import compile_intercepts
from reconciler.intercept.model import Intercept
from reconciler.intercept.status import intercept_status, intercept_status_lines

INTERCEPT = Capability(
    name="intercept",
    kinds=(Kind("Intercept", "intercepts", Intercept, build_intercept, programs=True,
                kernel_ref=lambda ic: id_ref("Intercept", ic.id)),),
    entries=(ict.IC_RULES, ict.IC_RULES6),
    maps=(ict.IC_SYN, ict.IC_SYN6, ict.IC_STATS, ict.IC_HOST),
    upserts=(ict.IC_RULES, ict.IC_RULES6),
    deletes=(ict.IC_RULES, ict.IC_RULES6),
    codecs=ict.CODECS,
    summarized=(ict.IC_RULES, ict.IC_RULES6),
    cross_check=cross_check,
    status=intercept_status,
    status_lines=intercept_status_lines,
    compile=compile_intercepts,
    tc=TcPrograms("Intercept", hooks.InterceptProgram, hooks.FUNCTIONS, hooks.wanted,
                  programs.compiled),
    attachments=PLUMBING,
)
