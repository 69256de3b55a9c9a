#!/usr/bin/env python3
"""Lists the expert and expert data parallel groups with the seed's own Python
(`_get_expert_parallel_ranks` in seed/groups_seed.py) and with pcx (the
`layout_vs_seed` executable), checks that both give the same groups for small
worlds, and prints a table of the time each takes per world size.

Standard library only. Usage (from anywhere):

    python3 bench/compare_seed.py [--exe build-bench/bench/layout_vs_seed]
                                  [--log2-worlds 10:20] [--tp 1,2] [--ep 8]
                                  [--samples 5] [--min-sample 0.02]
                                  [--check-verbatim [SEED_TEXT]] [--json OUT]

Exit status 1 if the groups differ (or the verbatim check fails).
"""

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.join(HERE, "seed"))

import groups_seed  # noqa: E402  (the seed's own functions)

DEFAULT_EXE = os.path.join(HERE, os.pardir, "build-bench", "bench", "layout_vs_seed")
DEFAULT_SEED_TEXT = "/work/shared/seed/groups.py.txt"


def autorange_time(work, samples, min_sample):
    """Median and minimum seconds per call, calibrated like layout_vs_seed's."""
    calls = 1
    scale = 1
    while True:
        done = False
        for factor in (1, 2, 5):
            calls = scale * factor
            start = time.perf_counter()
            for _ in range(calls):
                work()
            if time.perf_counter() - start >= min_sample:
                done = True
                break
        if done:
            break
        scale *= 10
    per_call = []
    for _ in range(samples):
        start = time.perf_counter()
        for _ in range(calls):
            work()
        per_call.append((time.perf_counter() - start) / calls)
    per_call.sort()
    return per_call[len(per_call) // 2], per_call[0], calls


def seed_groups(world, tp, pp, ep, order):
    return groups_seed._get_expert_parallel_ranks(world, tp, ep, pp, order == "data-first")


# ---------------------------------------------------------------- same groups

def check_same_groups(exe):
    """Compares every group (as a set of groups, each an ordered tuple) for small worlds."""
    configs = []
    for world in (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128, 256, 1024):
        for tp in (1, 2, 4):
            for pp in (1, 2, 4):
                for ep in (1, 2, 3, 4, 8, 16):
                    for order in ("expert-first", "data-first"):
                        if world % (tp * pp) or (world // (tp * pp)) % ep:
                            continue
                        configs.append((world, tp, pp, ep, order))
    lines = "".join(f"{w} {t} {p} {e} {o}\n" for (w, t, p, e, o) in configs)
    out = subprocess.run([exe, "dump"], input=lines, capture_output=True, text=True, check=True).stdout
    answers = [json.loads(line) for line in out.splitlines() if line.strip()]
    if len(answers) != len(configs):
        raise SystemExit(f"layout_vs_seed dump answered {len(answers)} of {len(configs)} configurations")
    failures = 0
    groups_compared = 0
    for config, answer in zip(configs, answers):
        if "error" in answer:
            print(f"  pcx rejected {config}: {answer['error']}")
            failures += 1
            continue
        seed_ep, seed_edp = seed_groups(*config)
        for kind, seed, pcx in (("ep", seed_ep, answer["ep"]), ("edp", seed_edp, answer["edp"])):
            seed_set = {tuple(g) for g in seed}
            pcx_set = {tuple(g) for g in pcx}
            groups_compared += len(seed)
            if seed_set != pcx_set or len(seed) != len(pcx):
                failures += 1
                print(f"  DIFFERENT {kind} groups for W={config[0]} tp={config[1]} pp={config[2]} "
                      f"ep={config[3]} {config[4]}: seed {seed[:4]}... pcx {pcx[:4]}...")
    print(f"same groups: {len(configs) - failures} of {len(configs)} configurations agree "
          f"(W 1..1024, tp 1/2/4, pp 1/2/4, ep 1/2/3/4/8/16, both orders; "
          f"{groups_compared} groups compared as sets of ordered rank tuples)")
    return failures == 0


# ------------------------------------------------------------ verbatim check

def collapse(text):
    return " ".join(text.split())


def check_verbatim(seed_text_path):
    """Checks that groups_seed.py's two functions are the seed's text with only the
    whitespace changed (the seed text lost its line breaks)."""
    with open(seed_text_path, encoding="utf-8") as f:
        seed = collapse(f.read())
    with open(os.path.join(HERE, "seed", "groups_seed.py"), encoding="utf-8") as f:
        ours = f.read()
    ok = True
    for name in ("_ensure_divisibility", "_get_expert_parallel_ranks"):
        match = re.search(rf"^def {name}\(.*?(?=^def |\Z)", ours, re.S | re.M)
        if not match:
            print(f"verbatim: {name} not found in groups_seed.py")
            ok = False
            continue
        body = collapse(match.group(0))
        if body not in seed:
            print(f"verbatim: {name} differs from the seed text")
            ok = False
        else:
            print(f"verbatim: {name} matches the seed text ({len(body)} characters, whitespace aside)")
    return ok


# --------------------------------------------------------------------- timing

def fmt_seconds(s):
    if s >= 1:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} µs"


def run_timings(args):
    cmd = [args.exe, "time", "--log2-worlds", args.log2_worlds, "--tp", args.tp, "--ep", str(args.ep),
           "--samples", str(args.samples), "--min-sample", str(args.min_sample)]
    started = time.time()
    pcx = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    pcx_wall = time.time() - started
    rows = []
    started = time.time()
    for r in pcx["results"]:
        world, tp, order = r["world"], r["tp"], r["order"]
        median, minimum, calls = autorange_time(lambda: seed_groups(world, tp, 1, args.ep, order),
                                                args.samples, args.min_sample)
        rows.append(dict(r, seed_median=median, seed_min=minimum, seed_calls=calls))
    seed_wall = time.time() - started
    return rows, pcx_wall, seed_wall


def print_table(rows, args, pcx_wall, seed_wall):
    print()
    print(f"Listing every expert parallel and expert data parallel group, ep = {args.ep}, pp = 1 "
          f"(median of {args.samples} samples of >= {args.min_sample} s; per call)")
    print("  seed = _get_expert_parallel_ranks in CPython "
          f"{platform.python_version()}; pcx = Topology + GroupLayout::groups() of both views;")
    print("  pcx rank = what one pcx rank computes instead (colour + group_of of its own two groups)")
    print()
    header = ("| W | tp | order | seed | pcx | seed / pcx | pcx rank | seed / pcx rank |")
    print(header)
    print("|---:|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| 2^{r['world'].bit_length() - 1} | {r['tp']} | {r['order']} | {fmt_seconds(r['seed_median'])} | "
              f"{fmt_seconds(r['pcx_all_median'])} | {r['seed_median'] / r['pcx_all_median']:.0f}x | "
              f"{fmt_seconds(r['pcx_rank_median'])} | {r['seed_median'] / r['pcx_rank_median']:.0f}x |")
    print()
    print(f"wall time: pcx {pcx_wall:.1f} s, seed {seed_wall:.1f} s; load average {os.getloadavg()}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exe", default=DEFAULT_EXE, help="the layout_vs_seed executable")
    parser.add_argument("--log2-worlds", default="10:20", help="worlds 2^a..2^b (default 10:20)")
    parser.add_argument("--tp", default="1,2", help="tensor parallel sizes (default 1,2)")
    parser.add_argument("--ep", type=int, default=8, help="expert parallel size (default 8)")
    parser.add_argument("--samples", type=int, default=5, help="samples per figure; the median is shown")
    parser.add_argument("--min-sample", type=float, default=0.02, help="seconds a sample lasts at least")
    parser.add_argument("--check-verbatim", nargs="?", const=DEFAULT_SEED_TEXT, default=None, metavar="SEED_TEXT",
                        help=f"check groups_seed.py against the seed text (default {DEFAULT_SEED_TEXT})")
    parser.add_argument("--no-timing", action="store_true", help="only check the groups")
    parser.add_argument("--json", metavar="OUT", help="also write the rows as JSON")
    args = parser.parse_args()
    args.exe = os.path.abspath(args.exe)
    if not os.access(args.exe, os.X_OK):
        raise SystemExit(f"{args.exe} is not an executable; build the layout_vs_seed target first")

    ok = True
    if args.check_verbatim:
        ok = check_verbatim(args.check_verbatim) and ok
    ok = check_same_groups(args.exe) and ok
    if not args.no_timing:
        rows, pcx_wall, seed_wall = run_timings(args)
        print_table(rows, args, pcx_wall, seed_wall)
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(rows, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
