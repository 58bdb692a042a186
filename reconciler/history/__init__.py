"""History and rollback: every apply that changed the kernel is a numbered revision, kept
with the files it applied (never a key), so that `bpfsync rollback` can apply one again."""
