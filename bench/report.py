#!/usr/bin/env python3
"""BENCHMARKS.md from the RESULT lines bench/run.sh collected.

  report.py --median FILE LABEL KEY      print the median of KEY over LABEL's runs
  report.py --write BENCHMARKS.md DIR    rewrite BENCHMARKS.md from DIR/standard.txt
                                         and, when present, DIR/big.txt (and the
                                         refactor check of DIR/refactor.txt, or the
                                         one BENCHMARKS.md has)
  report.py --refactor BENCHMARKS.md FILE   put "Refactors: before and after" from
                                         FILE (bench/progress.sh's results for the
                                         commits before and after) into BENCHMARKS.md,
                                         leaving the rest as it is

Standard library only. Every figure is the median of the runs; the range
(min to max) is shown next to it. Nothing is invented: a figure that was not
measured says so.
"""

import os
import platform
import re
import statistics
import sys

# ---- reading ----


def parse(path, key=lambda fields: fields.get("label"), comments=None):
    """{key: [ {field: value}, ... one per run ]} and the header comments'
    key=value pairs; the comment lines themselves go to comments (a list)."""
    runs, notes = {}, {}
    if not os.path.exists(path):
        return runs, notes
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("# "):
                if comments is not None:
                    comments.append(line[2:])
                for kv in line[2:].split():
                    if "=" in kv:
                        k, v = kv.split("=", 1)
                        notes[k] = v
                continue
            if not line.startswith("RESULT "):
                continue
            fields = dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv)
            k = key(fields)
            if k:
                runs.setdefault(k, []).append(fields)
    return runs, notes


def number(text):
    """A float from a RESULT value or a wrk duration (us, ms, s); None for n/a."""
    if text is None:
        return None
    m = re.fullmatch(r"(-?[0-9.]+)(us|ms|s)?", text)
    if not m:
        return None
    v = float(m.group(1))
    unit = m.group(2)
    if unit == "us":
        v /= 1000.0
    elif unit == "s":
        v *= 1000.0
    return v


def values(runs, label, key):
    out = []
    for r in runs.get(label, []):
        v = number(r.get(key))
        if v is not None:
            out.append(v)
    return out


def median(runs, label, key):
    v = values(runs, label, key)
    return statistics.median(v) if v else None


# ---- formatting ----


def fmt(v, digits=0):
    if v is None:
        return "n/a"
    if digits == 0:
        return "{:,.0f}".format(v)
    return "{:,.{d}f}".format(v, d=digits)


def fmt_range(runs, label, key, digits=0):
    v = values(runs, label, key)
    if not v:
        return "not measured"
    med = fmt(statistics.median(v), digits)
    if len(v) == 1:
        return med
    return "{} ({}-{})".format(med, fmt(min(v), digits), fmt(max(v), digits))


def all_ok(runs, label):
    rs = runs.get(label, [])
    if not rs:
        return None
    return all(r.get("ok") == "1" for r in rs)


def machine():
    model, cores = "unknown", os.cpu_count()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "unknown"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = "{:.1f} GiB".format(int(line.split()[1]) / 1048576)
                    break
    except OSError:
        pass
    return model, cores, mem, platform.release()


# ---- the document ----

COMMANDS = """\
# the router: a fresh one for every run, started by bench/run.sh with
#   port = PORT, listen_address = 127.0.0.1, workers = 2, max_connections = <fd limit - 100>,
#   a temporary static_dir, upload_dir and state_path, log_level = warn
mr-load up        --agents 100 --window 50 --duration 5            --url ws://127.0.0.1:PORT --pid PID
mr-load up        --agents 100 --window 50 --duration 5 --rate R/2 --url ...   # R: median of the line above
mr-load up        --agents 100 --window 1  --duration 5            --url ...
mr-load down      --agents 100 --window 50 --duration 5            --url ...
mr-load register  --clients 50 --duration 5                        --url ...
mr-load heartbeat --agents 1000 --interval 0.1 --duration 5        --url ...
mr-load connect   --agents 10000 --interval 6 --duration 12        --url ...
mr-load churn     --agents 10000 --rounds 3                        --url ...
mr-load up|down   --agents 100 --window 50|1 --duration 5 --url ws://127.0.0.1:ECHO_PORT --pid ECHO_PID   # mr-echo
wrk -t2 -c100 -d5s --latency http://127.0.0.1:PORT/is_alive
wrk -t2 -c100 -d5s --latency http://127.0.0.1:PORT/hello.txt        # a 137-byte static file
# make bench-big: workers = W (enough for 100,000 descriptors), mr-load with --procs P
mr-load connect --agents 100000 --interval 6 --warmup 6 --duration 12 --procs P --concurrency 500 --connect-timeout 300 --url ...
#   heartbeats start as each agent attaches; RTT is timed from 6 s after every agent attached"""


def row(name, runs, label, key, unit="", digits=0):
    return "| {} | {} | {} |".format(name, fmt_range(runs, label, key, digits), unit)


def target(desc, value, ok, measured_text, node=""):
    if value is None:
        verdict = "not measured"
    else:
        verdict = "**met**" if ok else "**not met**"
    return "| {} | {} | {} | {} |".format(desc, measured_text, verdict, node)


# What perf showed for the targets still open (perf record -a -g for 3 s in
# the middle of each mr-load run, 2 workers, commit e13f9f0). Static text:
# it is a finding, not a figure of these runs; the figures next to it are.
PROFILE_COMMIT = "e13f9f0"


def not_met(add, std, up, down, p50_1, reg, echo_up, echo_down):
    """Why each target still missed is missed, where the profile says."""
    lines = []
    if down is not None and down < 250000:
        lines.append(
            "- **down >= 250,000 packets/s**: the router does {} = {} of mr-echo's {} on the "
            "same pattern, and mr-echo (one process, no parsing, no routing, every frame "
            "for a socket in one write) is itself about at the target. A profile of the "
            "router's down run (commit {}, `perf record -a -g -- sleep 3` during "
            "`mr-load down --agents 100 --window 50`) had every process busy (3% idle): the workers "
            "spent more time in `send()` than in anything else (18% of all samples), "
            "about one per packet because the backend's packets go round-robin to 100 "
            "agents, so an agent rarely has more than one waiting per loop turn; mr-load "
            "took 27% and the supervisor 11%. What is left is the price of the extra "
            "hops (worker, supervisor, worker) on two shared cores.".format(
                fmt(down), fmt(down / echo_down, 2) if echo_down else "n/a",
                fmt(echo_down), PROFILE_COMMIT))
    if up is not None and echo_up and up / echo_up < 0.5:
        eload = median(std, "echo-up-100x50", "load_cpu_pct")
        rcpu = median(std, "up-100x50", "router_cpu_pct")
        lcpu = median(std, "up-100x50", "load_cpu_pct")
        busy = rcpu + lcpu if rcpu is not None and lcpu is not None else None
        lines.append(
            "- **up at least half the echo limit**: {} of {}. The echo figure is the load "
            "generator's ceiling, not mr-echo's (mr-load {}% of a core, mr-echo {}%). "
            "During the router's up runs the router used {}% of a core and mr-load {}%: "
            "{}% of the machine's 200%, so what is missing is about what is left of two "
            "cores shared by mr-load and the router's three processes.".format(
                fmt(up), fmt(echo_up), fmt(eload),
                fmt(median(std, "echo-up-100x50", "router_cpu_pct")), fmt(rcpu), fmt(lcpu),
                fmt(busy)))
    if p50_1 is not None and p50_1 >= 0.5:
        e1 = median(std, "echo-up-100x1", "p50_ms")
        lines.append(
            "- **p50 < 0.5 ms at 1 in flight**: {} ms. A packet crosses the agent's "
            "worker, the supervisor and the backend's worker, three wakeups of processes "
            "that share two cores with mr-load's 100 agents; mr-echo, one process, takes "
            "{} ms for the same trip.".format(fmt(p50_1, 3), fmt(e1, 3)))
    if reg is not None and reg < 40000:
        lines.append(
            "- **register >= 40,000/s**: {} requests/s. Each round trip is an HTTP "
            "request parsed by lws, a packet through the supervisor to the backend's "
            "worker, the backend's answer back the same way, and the HTTP answer. The "
            "profile (commit {}, `perf record -a -g -- sleep 3` during `mr-load register "
            "--clients 50`) had 7% idle; of the workers' time 43% went to the "
            "kernel (socket I/O), 23% to libc (allocation, number formatting), 14% to "
            "jansson (the request body and the register_agent packet) and 13% to lws "
            "and the router's own code.".format(fmt(reg), PROFILE_COMMIT))
    if not lines:
        return
    add("### Targets not met, and why")
    add("")
    for line in lines:
        add(line)
    add("")


def parse_progress(path):
    """([(commit, subject), ...] in order, runs keyed "commit:label", notes)."""
    comments = []
    runs, notes = parse(path, key=lambda f: "{}:{}".format(f.get("commit"), f.get("label")),
                        comments=comments)
    commits = []
    for c in comments:
        words = c.split(" ", 2)
        if words[0] == "commit" and len(words) == 3:
            commits.append((words[1], words[2]))
        elif words[0] == "progress" and len(words) > 1:
            notes["date"] = words[1].split()[0]
    return commits, runs, notes


def progress(add, path):
    """What was slow and what changed it: bench/progress.sh's figures."""
    commits, runs, notes = parse_progress(path)
    add("## What was slow and what changed it")
    add("")
    if not commits:
        add("Not measured yet (`bench/progress.sh COMMIT...`).")
        add("")
        return
    add("The router of each commit, oldest first, against the same load generator "
        "(mr-load of commit {}), 2 workers, medians of {} runs, {}:".format(
            notes.get("load", "?"), notes.get("runs", "?"), notes.get("date", "?")))
    add("")
    add("```")
    add("bench/progress.sh " + " ".join(c for c, _ in commits))
    add("```")
    add("")
    add("| commit | the change (its message) | up 100 x 50, packets/s | down 100 x 50, "
        "packets/s | up 100 x 1, p50 ms | register, requests/s |")
    add("|---|---|---|---|---|---|")
    for sha, subject in commits:
        def m(label, key, digits=0):
            return fmt(median(runs, "{}:{}".format(sha, label), key), digits)
        add("| {} | {} | {} | {} | {} | {} |".format(
            sha, subject.replace("|", "/"), m("up-100x50", "rate"), m("down-100x50", "rate"),
            m("up-100x1", "p50_ms", 3), m("register-50", "rate")))
    add("")
    add("What the profiles (perf, all processes) showed at each step is in the commit "
        "messages (`git show COMMIT`). 100,000 connections are measured by `make bench-big` "
        "only: there memory went from 687 MB to the figure above with 1 KiB lws receive "
        "buffers (82f44c4), and heartbeat RTT p99 from ~130 ms with the liveness walk in "
        "batches and return_statuses from cached members (0e09071); README, \"Design "
        "decisions\", has both.")
    add("")


REFACTOR_HEADING = "## Refactors: before and after"


def refactor_section(path):
    """The lines of "Refactors: before and after": bench/progress.sh run
    on the commit before a refactor and the commit after it, in one
    sitting (PROGRESS_RESULTS=build/bench/refactor.txt)."""
    commits, runs, notes = parse_progress(path)
    if len(commits) < 2:
        return []
    L = [REFACTOR_HEADING, ""]
    L.append("A change of structure, not of behaviour, must not make the router slower. "
             "The router of the commit before it and of the commit after it, against the "
             "same load generator (mr-load of commit {}), 2 workers, medians of {} runs, "
             "interleaved run by run, {}:".format(notes.get("load", "?"),
                                                  notes.get("runs", "?"),
                                                  notes.get("date", "?")))
    L += ["", "```", "BENCH_RUNS={} PROGRESS_RESULTS=build/bench/refactor.txt "
          "bench/progress.sh {}".format(notes.get("runs", "3"),
                                        " ".join(c for c, _ in commits)),
          "```", ""]
    L.append("| commit | its message | up 100 x 50, packets/s | down 100 x 50, packets/s "
             "| up 100 x 1, p50 ms | register, requests/s |")
    L.append("|---|---|---|---|---|---|")
    for sha, subject in commits:
        def m(label, key, digits=0):
            return fmt(median(runs, "{}:{}".format(sha, label), key), digits)

        def r(label, key, digits=0):
            vals = [v for v in (number(f.get(key))
                                for f in runs.get("{}:{}".format(sha, label), []))
                    if v is not None]
            if not vals:
                return m(label, key, digits)
            return "{} ({}-{})".format(m(label, key, digits), fmt(min(vals), digits),
                                       fmt(max(vals), digits))
        L.append("| {} | {} | {} | {} | {} | {} |".format(
            sha, subject.replace("|", "/"), r("up-100x50", "rate"), r("down-100x50", "rate"),
            r("up-100x1", "p50_ms", 3), r("register-50", "rate")))
    L.append("")
    return L


def kept_section(path, heading):
    """A section of the current file (from its heading to the next "## "),
    for one whose data this run does not have."""
    try:
        with open(path) as f:
            lines = f.read().split("\n")
    except OSError:
        return []
    if heading not in lines:
        return []
    start = lines.index(heading)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
               len(lines))
    return lines[start:end]


def splice(path, section):
    """Put section (its heading first) into the file at path: in place of
    the section of that heading, or before "## State database"."""
    if not section:
        raise SystemExit("report.py: no two commits in that progress file")
    with open(path) as f:
        lines = f.read().split("\n")
    old = kept_section(path, section[0])
    if old:
        start = lines.index(section[0])
        lines[start:start + len(old)] = section
    else:
        at = next((i for i, line in enumerate(lines)
                   if line.startswith("## State database")), len(lines))
        lines[at:at] = section
    with open(path, "w") as f:
        f.write("\n".join(lines))


def write(path, directory):
    std, notes = parse(os.path.join(directory, "standard.txt"))
    big, big_notes = parse(os.path.join(directory, "big.txt"))
    model, cores, mem, kernel = machine()
    L = []
    add = L.append
    add("# Benchmarks")
    add("")
    add("Written by `make bench` (bench/run.sh, bench/report.py): do not edit by hand.")
    add("Every figure is the **median of {} runs**, with the range (lowest-highest) "
        "in parentheses.".format(notes.get("runs", "?")))
    add("Standard set: {}, commit {}, {} s.".format(
        notes.get("date", "?"), notes.get("commit", "?"), notes.get("elapsed", "?").rstrip("s")))
    if big:
        add("100,000 connections (`make bench-big`): {}, commit {}, {}.".format(
            big_notes.get("date", "?"), big_notes.get("commit", "?"),
            "router workers = {}, mr-load agent processes = {}".format(
                big_notes.get("workers", "?"), big_notes.get("procs", "?"))))
    else:
        add("100,000 connections: not measured yet (`make bench-big`).")
    add("")
    add("## The machine")
    add("")
    add("- {} cores, {}".format(cores, model))
    add("- {} of memory, Linux {}".format(mem, kernel))
    add("- open-file limit {} (the hard limit; it bounds connections per process: "
        "a worker holds at most that many minus 100)".format(notes.get("fd_limit", "?")))
    if big:
        add("- 100,000 connections need 100,000 descriptors on each side, and one process "
            "may open {} here: for `make bench-big` the router runs {} workers "
            "(max_connections = limit - 100 each, so the accept spread may be uneven) and "
            "mr-load {} agent processes.".format(notes.get("fd_limit", "?"),
                                                 big_notes.get("workers", "?"),
                                                 big_notes.get("procs", "?")))
    add("- The router, the load generator (mr-load, one process, one libevent loop) and, "
        "for the echo limit, mr-echo share these cores over loopback. Before every run "
        "bench/run.sh waits for the machine to be idle; `other` below is the CPU that "
        "went to neither the router nor mr-load nor interrupts during the measured "
        "window (work of other users of the machine), as % of one core.")
    add("- This machine is a VM whose speed drifts with the load of its host: "
        "two runs of `bench/progress.sh` an hour apart on 2026-11-25 measured the same "
        "router (115f251, up 100 x 50) at 234,493 and 338,261 packets/s, with nothing "
        "else running here. Compare figures taken in one sitting (one `make bench`, or the "
        "progress table, which interleaves its commits for this reason).")
    add("")
    add("## Commands")
    add("")
    add("```")
    add(COMMANDS)
    add("```")
    add("")

    # ---- targets ----
    up = median(std, "up-100x50", "rate")
    half_p99 = median(std, "up-100x50-half", "p99_ms")
    p50_1 = median(std, "up-100x1", "p50_ms")
    down = median(std, "down-100x50", "rate")
    reg = median(std, "register-50", "rate")
    alive = median(std, "wrk-is-alive", "rate")
    echo_up = median(std, "echo-up-100x50", "rate")
    echo_down = median(std, "echo-down-100x50", "rate")
    churn = median(std, "churn-10000", "last_vs_first_pct")
    b_sent = median(big, "connect-100000", "hb_sent")
    b_ans = median(big, "connect-100000", "hb_answered")
    b_att = median(big, "connect-100000", "attached")
    b_p99 = median(big, "connect-100000", "p99_ms")
    b_rss = median(big, "connect-100000", "rss_after_mb")
    big_all = all_ok(big, "connect-100000")

    add("## Targets")
    add("")
    add("| target | measured (median) | | Node reference router, this machine |")
    add("|---|---|---|---|")
    add(target("up >= 250,000 packets/s, 100 agents x 50 in flight", up,
               up is not None and up >= 250000, fmt(up) + " packets/s", "~60,000/s"))
    add(target("p99 < 5 ms at half that rate", half_p99,
               half_p99 is not None and half_p99 < 5, fmt(half_p99, 3) + " ms"))
    add(target("p50 < 0.5 ms with 1 in flight per agent", p50_1,
               p50_1 is not None and p50_1 < 0.5, fmt(p50_1, 3) + " ms"))
    add(target("down >= 250,000 packets/s", down, down is not None and down >= 250000,
               fmt(down) + " packets/s", "~56,000/s"))
    add(target("register (POST /request_agent) >= 40,000/s", reg,
               reg is not None and reg >= 40000, fmt(reg) + " requests/s", "~7,500/s"))
    add(target("/is_alive >= 60,000 requests/s", alive, alive is not None and alive >= 60000,
               fmt(alive) + " requests/s", "~12,500/s"))
    if b_sent is not None:
        add(target("100,000 agents heartbeating every 6 s: all answered", b_sent,
                   bool(big_all) and b_att == 100000 and b_ans == b_sent,
                   "{} attached, {} of {} answered".format(fmt(b_att), fmt(b_ans), fmt(b_sent))))
        add(target("... p99 heartbeat RTT < 5 ms", b_p99, b_p99 is not None and b_p99 < 5,
                   fmt(b_p99, 3) + " ms"))
        add(target("... router RSS < 600 MB", b_rss, b_rss is not None and b_rss < 600,
                   fmt(b_rss, 1) + " MB", "10,000 connections: ~160 MB"))
    else:
        add("| 100,000 agents heartbeating every 6 s: all answered, p99 RTT < 5 ms, "
            "router RSS < 600 MB | not measured (`make bench-big`) | not measured | "
            "10,000 connections: ~160 MB |")
    add(target("churn: router memory after round 3 within 5% of round 1", churn,
               churn is not None and abs(churn - 100) <= 5,
               fmt(churn, 1) + "% of round 1"))
    ratio = up / echo_up if up is not None and echo_up else None
    add(target("router up rate >= half the echo limit", ratio,
               ratio is not None and ratio >= 0.5,
               "{} of {} = {}".format(fmt(up), fmt(echo_up), fmt(ratio, 2))))
    flows = ["up-100x50", "up-100x50-half", "up-100x1", "down-100x50"]
    once = [all(r.get("lost") == "0" and r.get("dup") == "0" for r in std.get(l, []))
            for l in flows if std.get(l)]
    add(target("exactly once: no packet lost or duplicated in any up/down run",
               1 if once else None, bool(once) and all(once),
               "{} runs checked".format(sum(len(std.get(l, [])) for l in flows))))
    add("")
    not_met(add, std, up, down, p50_1, reg, echo_up, echo_down)

    # ---- figures ----
    add("## Figures")
    add("")
    add("| figure | median (range) | unit |")
    add("|---|---|---|")

    def section(title, runs, label, rows):
        add("| **{}** | | |".format(title))
        for name, key, unit, digits in rows:
            add(row(name, runs, label, key, unit, digits))

    cpu = [("CPU: router", "router_cpu_pct", "% of a core", 0),
           ("CPU: mr-load", "load_cpu_pct", "% of a core", 0),
           ("CPU: other processes", "other_cpu_pct", "% of a core", 0)]
    lat = [("latency p50", "p50_ms", "ms", 3), ("latency p99", "p99_ms", "ms", 3),
           ("latency p99.9", "p999_ms", "ms", 3)]
    section("up, 100 agents x 50 in flight", std, "up-100x50",
            [("rate", "rate", "packets/s", 0)] + lat + cpu)
    section("up at half that rate (--rate)", std, "up-100x50-half",
            [("offered", "offered", "packets/s", 0), ("rate", "rate", "packets/s", 0)] + lat
            + cpu[:1])
    section("up, 100 agents x 1 in flight", std, "up-100x1",
            [("rate", "rate", "packets/s", 0)] + lat + cpu[:1])
    section("down, 100 agents x 50 in flight", std, "down-100x50",
            [("rate", "rate", "packets/s", 0)] + lat + cpu)
    section("register, 50 keep-alive clients", std, "register-50",
            [("rate", "rate", "requests/s", 0), ("latency p50", "p50_ms", "ms", 3),
             ("latency p99", "p99_ms", "ms", 3)] + cpu)
    section("heartbeat, 1,000 agents every 100 ms", std, "heartbeat-1000",
            [("heartbeats sent", "hb_sent", "", 0), ("heartbeats answered", "hb_answered", "", 0),
             ("RTT p50", "p50_ms", "ms", 3), ("RTT p99", "p99_ms", "ms", 3),
             ("RTT p99.9", "p999_ms", "ms", 3)] + cpu)
    section("connect, 10,000 agents, then heartbeats every 6 s for 12 s", std, "connect-10000",
            [("time to attach all", "attach_s", "s", 2),
             ("router RSS before", "rss_before_mb", "MB", 1),
             ("router RSS with 10,000 attached", "rss_after_mb", "MB", 1),
             ("router memory per connection", "bytes_per_conn", "bytes", 0),
             ("heartbeats sent", "hb_sent", "", 0), ("heartbeats answered", "hb_answered", "", 0),
             ("heartbeat RTT p50", "p50_ms", "ms", 3), ("heartbeat RTT p99", "p99_ms", "ms", 3)])
    section("churn, 10,000 agents attach and leave, 3 rounds (same ids)", std, "churn-10000",
            [("router RSS before", "rss_before_mb", "MB", 1),
             ("router RSS after round 1", "rss_round1_mb", "MB", 1),
             ("router RSS after round 2", "rss_round2_mb", "MB", 1),
             ("router RSS after round 3", "rss_round3_mb", "MB", 1),
             ("round 3 / round 1", "last_vs_first_pct", "%", 1),
             ("time to attach 10,000 (round 1)", "attach1_s", "s", 2)])
    section("echo limit: mr-echo up, 100 x 50", std, "echo-up-100x50",
            [("rate", "rate", "packets/s", 0), ("latency p50", "p50_ms", "ms", 3),
             ("CPU: mr-echo", "router_cpu_pct", "% of a core", 0)] + cpu[1:])
    section("echo limit: mr-echo down, 100 x 50", std, "echo-down-100x50",
            [("rate", "rate", "packets/s", 0), ("latency p50", "p50_ms", "ms", 3),
             ("CPU: mr-echo", "router_cpu_pct", "% of a core", 0)] + cpu[1:])
    section("echo limit: mr-echo up, 100 x 1", std, "echo-up-100x1",
            [("rate", "rate", "packets/s", 0), ("latency p50", "p50_ms", "ms", 3),
             ("latency p99", "p99_ms", "ms", 3)])
    section("wrk -t2 -c100 -d5s /is_alive", std, "wrk-is-alive",
            [("rate", "rate", "requests/s", 0), ("latency p50", "p50", "ms", 3),
             ("latency p99", "p99", "ms", 3)])
    section("wrk -t2 -c100 -d5s, a 137-byte static file", std, "wrk-static",
            [("rate", "rate", "requests/s", 0), ("latency p50", "p50", "ms", 3),
             ("latency p99", "p99", "ms", 3)])
    if big:
        section("connect, 100,000 agents, heartbeats every 6 s, RTT over 12 s from 6 s after all attached (make bench-big)",
                big, "connect-100000",
                [("agents attached", "attached", "", 0),
                 ("time to attach all", "attach_s", "s", 2),
                 ("router RSS before", "rss_before_mb", "MB", 1),
                 ("router RSS with every agent attached", "rss_after_mb", "MB", 1),
                 ("router memory per connection", "bytes_per_conn", "bytes", 0),
                 ("heartbeats sent", "hb_sent", "", 0),
                 ("heartbeats answered", "hb_answered", "", 0),
                 ("heartbeat RTT p50", "p50_ms", "ms", 3),
                 ("heartbeat RTT p99", "p99_ms", "ms", 3),
                 ("heartbeat RTT p99.9", "p999_ms", "ms", 3),
                 ("CPU: router", "router_cpu_pct", "% of a core", 0)])
    add("")
    add("## The router as a fraction of the echo limit")
    add("")
    add("| pattern | router | mr-echo | router / echo |")
    add("|---|---|---|---|")
    for name, r, e in (("up, 100 x 50 (packets/s)", up, echo_up),
                       ("down, 100 x 50 (packets/s)", down, echo_down)):
        add("| {} | {} | {} | {} |".format(name, fmt(r), fmt(e),
                                          fmt(r / e, 2) if r is not None and e else "n/a"))
    e1 = median(std, "echo-up-100x1", "p50_ms")
    add("| up, 100 x 1, p50 latency (ms) | {} | {} | {} |".format(
        fmt(p50_1, 3), fmt(e1, 3), fmt(p50_1 / e1, 2) + " x" if p50_1 and e1 else "n/a"))
    add("")
    eload = median(std, "echo-up-100x50", "load_cpu_pct")
    if eload is not None and eload >= 95:
        add("In the echo up runs mr-load used {}% of a core: the load generator, not "
            "mr-echo, set that figure, so the real ceiling for up is higher and the "
            "ratio above flatters the router.".format(fmt(eload)))
        add("")
    add("mr-echo relays each agent's message to the backend and the backend's to the "
        "agents round-robin, on the router's stack (libevent + libwebsockets, one process), "
        "with no parsing and no routing; by default it writes all frames waiting for a "
        "socket in one write. It is this machine's ceiling for the pattern, load generator "
        "included (mr-load's own CPU is in the figures above).")
    add("")
    progress(add, os.path.join(directory, "progress.txt"))
    for line in (refactor_section(os.path.join(directory, "refactor.txt")) or
                 kept_section(path, REFACTOR_HEADING)):
        add(line)
    state, state_notes = parse(os.path.join(directory, "state.txt"))
    add("## State database (`make bench-state`)")
    add("")
    if not state:
        add("Not measured yet.")
        add("")
    else:
        rec = median(state, "recovery", "serving_s")
        add("bench/state.sh, {}, commit {}, median of {} runs.".format(
            state_notes.get("date", "?"), state_notes.get("commit", "?"),
            state_notes.get("runs", "?")))
        add("")
        add("| figure | median (range) | unit |")
        add("|---|---|---|")
        section("restart with 10,000 agents and 100,000 queued packets in the database",
                state, "recovery",
                [("agents loaded", "agents", "", 0), ("packets loaded", "packets", "", 0),
                 ("load time (the router's log)", "load_ms", "ms", 0),
                 ("start to first answer on /is_alive", "serving_s", "s", 3)])
        section("up, 100 x 50, state_path on disk", state, "up-disk",
                [("rate", "rate", "packets/s", 0), ("latency p50", "p50_ms", "ms", 3),
                 ("latency p99", "p99_ms", "ms", 3)] + cpu[:1])
        section("up, 100 x 50, state_path = :memory:", state, "up-memory",
                [("rate", "rate", "packets/s", 0), ("latency p50", "p50_ms", "ms", 3),
                 ("latency p99", "p99_ms", "ms", 3)] + cpu[:1])
        add("")
        add("Target: back to serving in under 2 s after a restart with 10,000 agents and "
            "100,000 queued packets: {} s, **{}**.".format(
                fmt(rec, 3), "met" if rec is not None and rec < 2 else "not met"))
        add("A packet delivered at once is never written (README, \"State database\"), so "
            "the up pattern, whose backend is always there, writes only the agents' "
            "rows: disk and memory should match within the run-to-run spread.")
        add("")
    failed = sorted({r["label"] for rs in list(std.values()) + list(big.values())
                     for r in rs if r.get("ok") == "0"})
    if failed:
        add("Runs whose own checks failed (kept in the medians, see `{}`): {}.".format(
            os.path.join(os.path.relpath(directory), "*.txt"), ", ".join(failed)))
        add("")
    with open(path, "w") as f:
        f.write("\n".join(L) + "\n")


def main(argv):
    if len(argv) == 5 and argv[1] == "--median":
        runs, _ = parse(argv[2])
        v = median(runs, argv[3], argv[4])
        print("" if v is None else "{:.3f}".format(v))
        return 0
    if len(argv) == 4 and argv[1] == "--write":
        write(argv[2], argv[3])
        return 0
    if len(argv) == 4 and argv[1] == "--refactor":
        splice(argv[2], refactor_section(argv[3]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
