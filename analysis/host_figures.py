"""Figures about the host's reclaim targets: where swapped pages go (disk, zswap, zram), how
``vm.swappiness`` splits reclaim between guest RAM and the page cache, and what KSM saves and
costs reclaim as guests share more.

Each reads a sweep directory: the variants from ``runs.parquet`` and every count from each run's
``summary.json`` (``host.vmstat``, the one place memsim counts them).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from analysis.load import Run, load_run  # noqa: E402
from analysis.report_figures import PAGE_MIB  # noqa: E402


def sweep_runs(sweep_dir: Path) -> list[tuple[str, Run]]:
    """The finished runs of a sweep, in sweep order, with their labels."""
    rows = pd.read_parquet(sweep_dir / "runs.parquet")
    done = rows[rows.status != "failed"].sort_values("index")
    if not len(done):
        raise ValueError(f"{sweep_dir}: no finished runs")
    return [(str(r.label), load_run(sweep_dir / "runs" / r.run)) for r in done.itertuples()]


def swap_target_table(runs: list[tuple[str, Run]]) -> pd.DataFrame:
    """One row per run: where swapped-in pages came from (``pswpin``, ``zswpin``: reads started,
    so a few more than the major faults that finished), the vCPUs' summed stall, kswapd's busy
    time and the compressed pool at the end.

    A zram swap-in counts ``pswpin`` as the kernel does, but it is a decompression in RAM, so
    it is shown with zswap's pool hits (``zswpin``) rather than with device reads.
    """
    rows = []
    for label, run in runs:
        host, vs = run.summary["host"], run.summary["host"]["vmstat"]
        zram = run.config.get("swap", {}).get("device", "disk") == "zram"
        rows.append(
            {
                "run": label,
                "read from the device": 0 if zram else vs.get("pswpin", 0),
                "decompressed in RAM": vs.get("zswpin", 0) + (vs.get("pswpin", 0) if zram else 0),
                "vCPU stall (s)": sum(vm["stall_ns"] for vm in run.summary["vms"]) / 1e9,
                "kswapd busy (s)": host["kswapd_busy_ns"] / 1e9,
                "pool (MiB)": host.get("swap", {}).get("pool_frames_end", 0) * PAGE_MIB,
            }
        )
    return pd.DataFrame(rows)


def zswap_figure(runs: list[tuple[str, Run]], title: str = "") -> plt.Figure:
    """Pages swapped in by where they came from, vCPU stall and kswapd CPU, per swap target."""
    sns.set_theme(style="whitegrid", context="notebook")
    t = swap_target_table(runs)
    t["run"] = t["run"].str.replace(", ", "\n")
    width = max(12.0, 3.0 * t["run"].nunique())  # room for each run's two-line label
    fig, (ax_f, ax_s, ax_k) = plt.subplots(1, 3, figsize=(width, 4.2), constrained_layout=True)
    faults = t.set_index("run")[["read from the device", "decompressed in RAM"]]
    faults.plot.bar(stacked=True, ax=ax_f, color=["#c44e52", "#55a868"], rot=0, width=0.7)
    ax_f.set(xlabel="", ylabel="pages swapped in", title="Swap-ins, by source")
    ax_f.set_ylim(0, faults.sum(axis=1).max() * 1.3)  # headroom: the legend clears the bars
    ax_f.legend(fontsize="small", loc="upper left", ncols=2)
    sns.barplot(data=t, x="run", y="vCPU stall (s)", ax=ax_s, color="#4c72b0")
    ax_s.set(xlabel="", title="vCPU stall, all guests")
    sns.barplot(data=t, x="run", y="kswapd busy (s)", ax=ax_k, color="#8172b2")
    ax_k.set(xlabel="", title="kswapd CPU (incl. compression)")
    ax_k.set_xticks(
        range(len(t)),
        [
            f"{r}\npool {m:.0f} MiB" if m else r
            for r, m in zip(t["run"], t["pool (MiB)"], strict=True)
        ],
        fontsize="small",
    )
    if title:
        fig.suptitle(title, fontsize="medium")
    return fig


def swappiness_table(runs: list[tuple[str, Run]]) -> pd.DataFrame:
    """One row per run: swappiness, pages reclaimed per type, guest major faults, page-cache
    refaults and the guests' mean stall."""
    rows = []
    for _, run in runs:
        vs, vms = run.summary["host"]["vmstat"], run.summary["vms"]
        if "pgsteal_file" not in vs:
            raise ValueError(f"{run.path}: no page cache in this run (add a host_files section)")
        rows.append(
            {
                "swappiness": int(run.config.get("reclaim", {}).get("swappiness", 60)),
                "guest RAM (anon)": vs["pgsteal_anon"],
                "page cache (file)": vs["pgsteal_file"],
                "guest major faults": vs["pgmajfault"],
                "page-cache refaults": vs["workingset_refault_file"],
                "guest stall (%)": 100 * sum(vm["stall_fraction"] for vm in vms) / len(vms),
            }
        )
    return pd.DataFrame(rows).sort_values("swappiness").reset_index(drop=True)


def swappiness_figure(runs: list[tuple[str, Run]], title: str = "") -> plt.Figure:
    """What each swappiness reclaimed (anon vs file), what came back, and what guests paid."""
    sns.set_theme(style="whitegrid", context="notebook")
    t = swappiness_table(runs).set_index("swappiness")
    fig, (ax_r, ax_f, ax_s) = plt.subplots(1, 3, figsize=(12, 3.8), constrained_layout=True)
    t[["guest RAM (anon)", "page cache (file)"]].plot.bar(
        ax=ax_r, rot=0, color=["#c44e52", "#4c72b0"], width=0.75
    )
    ax_r.set(xlabel="vm.swappiness", ylabel="pages reclaimed (pgsteal)", title="Reclaimed")
    t[["guest major faults", "page-cache refaults"]].plot.bar(
        ax=ax_f, rot=0, color=["#c44e52", "#4c72b0"], width=0.75
    )
    ax_f.set(xlabel="vm.swappiness", ylabel="faults", title="Came back")
    t["guest stall (%)"].plot.bar(ax=ax_s, rot=0, color="#8172b2", width=0.6)
    ax_s.set(xlabel="vm.swappiness", ylabel="mean guest vCPU stall (%)", title="Guests paid")
    for ax in (ax_r, ax_f):
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title, fontsize="medium")
    return fig


def ksm_table(runs: list[tuple[str, Run]]) -> pd.DataFrame:
    """One row per run of a KSM sweep: the image share of the first VM profile, the memory KSM
    saved at the end (``pages_sharing``), ksmd's merges and CPU, the writes that broke sharing
    (``cow_ksm``), and per page reclaimed (``pgsteal``) the rmap mappings walked and the remote
    TLB flushes (all of KVM's, ksmd's merges included: ``remote_tlb_flush``)."""
    rows = []
    for _, run in runs:
        host = run.summary["host"]
        if "ksm" not in host:
            raise ValueError(f"{run.path}: no KSM in this run (add host.ksm)")
        ksm, vs = host["ksm"], host["vmstat"]
        content = run.config["vms"][0].get("content") or {}
        stolen = vs.get("pgsteal_kswapd", 0) + vs.get("pgsteal_direct", 0)
        mib = PAGE_MIB
        rows.append(
            {
                "image share": float(content.get("image_share", 0.0)),
                "saved (MiB)": ksm["pages_sharing"] * mib,
                "KSM pages (MiB)": ksm["frames_end"] * mib,
                "merges": ksm["merges"],
                "cow_ksm": ksm["cow_ksm"],
                "ksmd CPU (%)": 100 * ksm["ksmd_cpu_ns"] / run.summary["sim_time_ns"],
                "reclaimed": stolen,
                "rmap walked / reclaimed": vs["rmap_walked"] / stolen if stolen else 0.0,
                "TLB flushes / reclaimed": vs["remote_tlb_flush"] / stolen if stolen else 0.0,
            }
        )
    return pd.DataFrame(rows).sort_values("image share").reset_index(drop=True)


def ksm_figure(runs: list[tuple[str, Run]], title: str = "") -> plt.Figure:
    """As sharing grows: the memory KSM saves, and what reclaim pays per page it frees."""
    sns.set_theme(style="whitegrid", context="notebook")
    t = ksm_table(runs).set_index("image share")
    fig, (ax_m, ax_r, ax_t) = plt.subplots(1, 3, figsize=(12, 3.8), constrained_layout=True)
    t[["saved (MiB)", "KSM pages (MiB)"]].plot.bar(
        ax=ax_m, rot=0, color=["#55a868", "#4c72b0"], width=0.75
    )
    ax_m.set(xlabel="image share of guest pages", ylabel="MiB at the end", title="KSM")
    ax_m.legend(fontsize="small")
    t["rmap walked / reclaimed"].plot.bar(ax=ax_r, rot=0, color="#c44e52", width=0.6)
    ax_r.set(
        xlabel="image share of guest pages",
        ylabel="mappings walked per page reclaimed",
        title="Reclaim's rmap work",
    )
    t["TLB flushes / reclaimed"].plot.bar(ax=ax_t, rot=0, color="#8172b2", width=0.6)
    ax_t.set(
        xlabel="image share of guest pages",
        ylabel="remote TLB flushes per page reclaimed",
        title="TLB flushes (ksmd's too)",
    )
    if title:
        fig.suptitle(title, fontsize="medium")
    return fig


def rmap_off_table(runs: list[tuple[str, Run]]) -> pd.DataFrame:
    """One row per run of an rmap sweep: the host rmap (``host.rmap``), the number of VMs, the
    first profile's image share, and per page reclaimed (``pgsteal``) the entries reclaim's
    walks visited (with the rmap: the mappings, ``rmap_walked``; without: the ptes scanned,
    ``rmap_pte_scans``), and kswapd's busy time per page kswapd reclaimed."""
    rows = []
    for _, run in runs:
        host, vs = run.summary["host"], run.summary["host"]["vmstat"]
        rmap = run.config.get("host", {}).get("rmap", "anon_vma")
        content = run.config["vms"][0].get("content") or {}
        stolen = vs.get("pgsteal_kswapd", 0) + vs.get("pgsteal_direct", 0)
        visited = vs["rmap_walked"] if rmap == "anon_vma" else vs.get("rmap_pte_scans", 0)
        by_kswapd = vs.get("pgsteal_kswapd", 0)
        rows.append(
            {
                "rmap": rmap,
                "VMs": len(run.summary["vms"]),
                "image share": float(content.get("image_share", 0.0)),
                "reclaimed": stolen,
                "entries / reclaimed": visited / stolen if stolen else float("nan"),
                "kswapd us / reclaimed": host["kswapd_busy_ns"] / 1e3 / by_kswapd
                if by_kswapd
                else float("nan"),
            }
        )
    if not rows:
        raise ValueError("no runs")
    return pd.DataFrame(rows).sort_values(["rmap", "image share", "VMs"]).reset_index(drop=True)


def rmap_off_figure(runs: list[tuple[str, Run]], title: str = "") -> plt.Figure:
    """Reclaim's work per page freed against the number of VMs, with the rmap and without."""
    sns.set_theme(style="whitegrid", context="notebook")
    t = rmap_off_table(runs)
    t["image share"] = t["image share"].map(lambda s: f"{s:g}")
    fig, (ax_w, ax_t) = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    for ax, col, what in (
        (ax_w, "entries / reclaimed", "entries per page reclaimed"),
        (ax_t, "kswapd us / reclaimed", "us per page kswapd reclaimed"),
    ):
        sns.lineplot(data=t, x="VMs", y=col, hue="rmap", style="image share", markers=True, ax=ax)
        ax.set(yscale="log", ylabel=what, xticks=sorted(t["VMs"].unique()))
        ax.legend(fontsize="small")
    ax_w.set_title("Mappings walked (anon_vma) or ptes scanned (none)")
    ax_t.set_title("kswapd CPU (rmap_walk_ns vs pte_scan_ns)")
    if title:
        fig.suptitle(title, fontsize="medium")
    return fig


def thp_table(runs: list[tuple[str, Run]]) -> pd.DataFrame:
    """One row per run and VM of a THP sweep: the backing (``host.thp.enabled``, and
    ``swap`` for CONFIG_THP_SWAP), the VM's resident and swapped memory at the end, and the
    host's swap-outs by granularity: pages written in whole THPs (``thp_swpout`` x 512) and as
    4 KiB pages (the rest of ``pswpout``), with ``thp_swpout_fallback``."""
    rows = []
    for _, run in runs:
        host = run.summary["host"]
        vs = host["vmstat"]
        thp = run.config.get("host", {}).get("thp")
        on = thp is not None and thp.get("enabled", "always") != "never"
        backing = "4 KiB" if not on else ("THP" if thp.get("swap", True) else "THP, no THP_SWAP")
        mib = PAGE_MIB
        whole = vs.get("thp_swpout", 0) * 512
        for vm in run.summary["vms"]:
            rows.append(
                {
                    "backing": backing,
                    "vm": vm["name"],
                    "resident (MiB)": vm["resident_pages"] * mib,
                    "swapped (MiB)": vm["swapped_pages"] * mib,
                    "written in THPs (MiB)": whole * mib,
                    "written 4 KiB (MiB)": (vs.get("pswpout", 0) - whole) * mib,
                    "thp_swpout_fallback": vs.get("thp_swpout_fallback", 0),
                }
            )
    return pd.DataFrame(rows)


def thp_figure(runs: list[tuple[str, Run]], title: str = "") -> plt.Figure:
    """Per backing: each VM's resident and swapped memory at the end, and the host's swap-out
    by granularity."""
    sns.set_theme(style="whitegrid", context="notebook")
    t = thp_table(runs)
    fig, (ax_r, ax_s, ax_w) = plt.subplots(1, 3, figsize=(13, 4.0), constrained_layout=True)
    sns.barplot(data=t, x="backing", y="resident (MiB)", hue="vm", ax=ax_r)
    ax_r.set(xlabel="", title="Resident at the end")
    sns.barplot(data=t, x="backing", y="swapped (MiB)", hue="vm", ax=ax_s)
    ax_s.set(xlabel="", title="In swap at the end")
    host = t.drop_duplicates("backing").set_index("backing")
    host[["written in THPs (MiB)", "written 4 KiB (MiB)"]].plot.bar(
        stacked=True, ax=ax_w, rot=0, color=["#55a868", "#c44e52"], width=0.6
    )
    ax_w.set(xlabel="", ylabel="MiB written to swap", title="Swap-out, by granularity")
    ax_w.legend(fontsize="small")
    if title:
        fig.suptitle(title, fontsize="medium")
    return fig
