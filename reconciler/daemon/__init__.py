"""`bpfsync run`: the long-running reconciler (watch, debounce, reconcile, supervise, report)."""
