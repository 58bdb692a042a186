"""Port steering's link on this host: the pinned sk_lookup link, observed and changed
through the kernel shell's generic links (kernel/links.py)."""

from __future__ import annotations

from pathlib import Path

from reconciler.core.attachments import Kept
from reconciler.kernel import links
from reconciler.kernel.programs import BPF_SK_LOOKUP
from reconciler.steering.links import LINK_PREFIX, SeenLink, netns_of, pin_name


def observe(pin_root: Path) -> list[SeenLink]:
    out = []
    for link in links.observe(pin_root, LINK_PREFIX, cgroup=False):
        netns = netns_of(link.name)
        here = links.netns_inode(netns)
        out.append(SeenLink(netns, link.link_id, link.tag, link.target != 0 and
                            link.target == here))
    return out


def create(pin_root: Path, netns: str | None, prog_fd: int) -> None:
    links.create(pin_root, pin_name(netns), links.netns_path(netns), prog_fd, BPF_SK_LOOKUP,
                 f"network namespace {netns}")


def update(pin_root: Path, netns: str | None, prog_fd: int) -> None:
    links.update(pin_root, pin_name(netns), prog_fd)


def remove(pin_root: Path, netns: str | None) -> None:
    links.remove(pin_root, pin_name(netns))


def keep(pin_root: Path, netns: str | None) -> str | None:
    """The program netns's link runs, kept pinned for a revert (kernel/links.keep_program)."""
    return links.keep_program(pin_root, pin_name(netns), cgroup=False)


def restore(pin_root: Path, kept: Kept, again: bool) -> None:
    """A kept program back on netns's link: made again (again), or updated back."""
    netns = kept.of.netns
    links.put_back(pin_root, kept.pin, lambda fd: (create if again else update)(
        pin_root, netns, fd))
