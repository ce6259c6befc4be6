"""What a notification costs when few arrive at once: this process's CPU at low offered rates.

    python bench/quiet.py                  # 50, 100, 200 and 400 notifications/s, 5 s each
    python bench/quiet.py --rates 50,100 --seconds 10

The pipeline bench's figures are for a loaded service, whose groups and claims hold tens or
hundreds of notifications. At a low rate each notification is enqueued, claimed, recorded,
settled and receipted alone, so it pays every transaction's and statement's fixed cost by
itself. Runs the real runtime in this process, as ``pipeline.py`` does (PostgreSQL, simulator
without delays, pacing off, 10 orgs), offers each rate on a fixed schedule (open loop) and
prints this process's CPU per notification and as a share of one core. Not in it: the
PostgreSQL server's CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from harness import run, spent
from latency import running
from pipeline import Settled, link_orgs, offer, recipient
from scratch import DEFAULT_PG, scratch_database


async def main(args: argparse.Namespace) -> None:
    rates = [float(r) for r in args.rates.split(",")]
    rows = []
    async with (
        scratch_database(args.database_url, "wanotify_quiet") as url,
        running(url) as runtime,
    ):
        org_ids = await link_orgs(runtime, args.orgs)
        settled = Settled()
        with spent(server=False) as used:
            await asyncio.sleep(2.0)
        idle = used.cpu / used.seconds
        for k, rate in enumerate(rates):
            n = max(1, int(rate * args.seconds))
            done = settled.count()
            with spent(server=False) as used:
                await offer(
                    runtime,
                    org_ids,
                    rate,
                    n,
                    lambda i, k=k: recipient(k, i),
                    lambda n=n, done=done: settled.until(done + n),
                )
            rows.append((rate, n, used.cpu / used.seconds, used.cpu * 1000 / n))
    print()
    print(f"idle, 10 linked numbers: {idle:.1%} of one core")
    print()
    print("| offered/s | notifications | this process's CPU: share of a core | ms each |")
    print("|---|---|---|---|")
    for rate, n, share, per in rows:
        print(f"| {rate:,.0f} | {n:,} | {share:.1%} | {per:.2f} |")
    print(f"\nload average {os.getloadavg()[0]:.2f} (1 min)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=DEFAULT_PG, help="PostgreSQL admin URL")
    parser.add_argument("--rates", default="50,100,200,400", help="offered rates, per second")
    parser.add_argument("--seconds", type=float, default=5.0, help="at each rate")
    parser.add_argument("--orgs", type=int, default=10)
    run(main(parser.parse_args()))
