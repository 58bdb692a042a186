#!/usr/bin/python
"""Ansible module: the kernel changes `bpfsync diff` finds for a desired-state directory.

Read-only (runs in --check): `changed` means the kernel would change, the plan text is
returned as the task's diff (shown with --diff) and the `-o json` plan as `plan`.
"""

from __future__ import annotations

import json

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: bpfsync_plan
short_description: Show the kernel changes bpfsync would make for a desired-state directory
options:
  directory: {description: The desired-state directory (e.g. a staged copy)., required: true, type: path}
  pin_root: {description: bpfsync's pin root., default: /sys/fs/bpf/bpfsync, type: path}
  bpfsync: {description: The bpfsync executable., default: bpfsync, type: path}
"""


def main() -> None:
    module = AnsibleModule(
        argument_spec={"directory": {"type": "path", "required": True},
                       "pin_root": {"type": "path", "default": "/sys/fs/bpf/bpfsync"},
                       "bpfsync": {"type": "path", "default": "bpfsync"}},
        supports_check_mode=True)
    p = module.params
    base = [p["bpfsync"], "--pin-root", p["pin_root"], "diff"]
    # exit codes: 0 in sync, 2 changes pending, 1 error (invalid input, conflict)
    rc, out, err = module.run_command([*base, "-o", "json", p["directory"]])
    if rc not in (0, 2):
        module.fail_json(msg=f"bpfsync diff failed (exit {rc})", rc=rc, stderr=err,
                         stdout=out)
    plan = json.loads(out)
    text = ""
    if rc == 2:
        _, text, _ = module.run_command([*base, p["directory"]])
    for warning in plan.get("warnings", []):
        module.warn(warning)
    module.exit_json(changed=rc == 2, plan=plan, summary=plan["summary"],
                     diff={"prepared": text} if text else {})


if __name__ == "__main__":
    main()
