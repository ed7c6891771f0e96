#!/usr/bin/env python3
"""One line per profiled kernel from Nsight Compute's raw CSV
(`ncu --import R.ncu-rep --page raw --csv`, or the long form that `--csv`
prints with one row per metric): where its time goes.

    python3 scripts/ncu_summary.py RAW.csv [--json [--step NAME]]

Columns are found by name, so a metric this ncu version does not have is
left out rather than an error. Printed per launch: duration, SM and memory
throughput (% of peak), DRAM throughput, the L1 data pipe's wavefronts and
bank reads and the L2's throughput, achieved occupancy, issue slots busy,
tensor pipe busy, shared-memory bank conflicts, and the four largest warp
stall reasons (warps stalled per issued instruction: the cycles an average
instruction waits for that reason).
"""
import csv
import json
import re
import sys

# (label, metric names to try in order)
FIELDS = [
    ("us", ["gpu__time_duration.sum"]),
    ("sm_pct", ["sm__throughput.avg.pct_of_peak_sustained_elapsed"]),
    ("mem_pct", ["gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed"]),
    ("dram_pct", ["gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed", "dram__throughput.avg.pct_of_peak_sustained_elapsed"]),
    # the L1's load/store data pipe: one wavefront per shared or global access
    # pass, however few bytes it carries (run 8's same convs: 73–79 %, their limit)
    ("l1_wavefront_pct", ["l1tex__data_pipe_lsu_wavefronts.avg.pct_of_peak_sustained_elapsed"]),
    ("l1_bank_read_pct", ["l1tex__data_bank_reads.avg.pct_of_peak_sustained_elapsed"]),
    ("l2_pct", ["lts__throughput.avg.pct_of_peak_sustained_elapsed"]),
    ("occupancy_pct", ["sm__warps_active.avg.pct_of_peak_sustained_active"]),
    ("issue_pct", ["smsp__issue_active.avg.pct_of_peak_sustained_active", "sm__inst_issued.avg.pct_of_peak_sustained_active"]),
    ("ipc", ["sm__inst_executed.avg.per_cycle_active"]),
    ("tensor_pct", ["sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active",
                    "sm__inst_executed_pipe_tensor_op_hmma.avg.pct_of_peak_sustained_active",
                    "sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active"]),
    ("lsu_pct", ["sm__inst_executed_pipe_lsu.avg.pct_of_peak_sustained_active"]),
    ("regs", ["launch__registers_per_thread"]),
    ("smem_bytes", ["launch__shared_mem_per_block_static"]),
    ("blocks_by_regs", ["launch__occupancy_limit_registers"]),
    ("smem_ld_conflicts", ["l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum"]),
    ("smem_st_conflicts", ["l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_st.sum"]),
]
STALL = re.compile(r"^smsp__average_warps_issue_stalled_(\w+?)_per_issue_active\.ratio$")


def number(text):
    try:
        return float(str(text).replace(",", ""))
    except ValueError:
        return None


def rows(path):
    with open(path, newline="") as f:
        table = list(csv.reader(f))
    # ncu may print "==PROF==" lines before the table
    start = next(i for i, r in enumerate(table) if r and r[0] == "ID")
    header, body = table[start], table[start + 1:]
    if "Metric Name" in header and "Metric Value" in header:
        # the long form (one row per metric): pivot to one row per launch
        launches, units = {}, {}
        for r in body:
            d = dict(zip(header, r))
            if not d.get("ID", "").strip() or not d.get("Metric Name"):
                continue
            launch = launches.setdefault(d["ID"], {k: d.get(k, "") for k in ("Kernel Name", "Grid Size", "Block Size")})
            launch[d["Metric Name"]] = d["Metric Value"]
            units[d["Metric Name"]] = d.get("Metric Unit", "")
        return list(launches.values()), units
    units = {}
    if body and not body[0][0].strip():  # the wide form's units row
        units = dict(zip(header, body[0]))
        body = body[1:]
    return [dict(zip(header, r)) for r in body if r and r[0].strip()], units


def summarise(row, units):
    out = {"kernel": row.get("Kernel Name", "?"), "grid": row.get("Grid Size", ""), "block": row.get("Block Size", "")}
    for label, names in FIELDS:
        for name in names:
            if name in row and number(row[name]) is not None:
                value = number(row[name])
                if label == "us":  # ncu reports durations in ns, us or ms as it sees fit
                    value *= {"ns": 1e-3, "usecond": 1.0, "us": 1.0, "ms": 1e3, "msecond": 1e3, "nsecond": 1e-3}.get(units.get(name, "ns"), 1e-3)
                out[label] = round(value, 3)
                break
    stalls = {}
    for name, text in row.items():
        m = STALL.match(name)
        if m and m.group(1) not in ("selected", "not_selected") and number(text):
            stalls[m.group(1)] = number(text)
    out["stalls"] = {k: round(v, 2) for k, v in sorted(stalls.items(), key=lambda kv: -kv[1])[:4]}
    return out


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: ncu_summary.py RAW.csv [--json [--step NAME]]")
    body, units = rows(sys.argv[1])
    step = sys.argv[sys.argv.index("--step") + 1] if "--step" in sys.argv[:-1] else None
    for row in body:
        s = summarise(row, units)
        if "--json" in sys.argv:
            line = {"ncu": s["kernel"], **{k: v for k, v in s.items() if k != "kernel"}}
            if step:
                line["step"] = step
            print(json.dumps(line))
        else:
            stalls = " ".join(f"{k}={v}" for k, v in s["stalls"].items())
            rest = " ".join(f"{label}={s[label]}" for label, _ in FIELDS if label in s)
            print(f"{s['kernel'][:44]:<44} grid={s['grid']} {rest} stalls: {stalls}")


if __name__ == "__main__":
    main()
