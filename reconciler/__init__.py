"""bpfsync: declarative control plane for eBPF proxy and tunnel data paths."""
