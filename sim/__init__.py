"""memsim: a discrete-event simulator of memory pressure on a KVM host.

Guest vCPUs touch guest pages; the host approximates LRU the way Linux does (kswapd, watermarks,
accessed bits found through the rmap); KVM is hooked in through MMU notifiers that extend the host's
rmap walk into its own page tables (sptes). See README.md for the model and DESIGN.md for the map.
"""

__version__ = "0.1.0"
