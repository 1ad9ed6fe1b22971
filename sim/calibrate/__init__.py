"""Calibration against a real kernel: a tiny KVM guest replays a known page access stream.

``streams`` generates the stream (memsim's own workloads) and predicts what a correct replay
reports; ``vmm`` builds and runs ``vmm.c``, the guest and its VMM (or the same loop in a plain
process). Comparing the kernel's counters with memsim's on that stream is built on these.
"""
