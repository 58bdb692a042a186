"""Test doubles shipped beside the real thing (as trio ships its fake network): an in-memory
kernel for the engine's ordering and failure behaviour."""

from reconciler.testing.fake_kernel import FakeKernel, InjectedFailure

__all__ = ["FakeKernel", "InjectedFailure"]
