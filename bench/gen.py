#!/usr/bin/env python3
"""Generate weft's seeded benchmark data sets (stdlib only, deterministic for a seed).

    python3 bench/gen.py --seed 1 --out bench/data W1 W2 W3

Sets (see /work/shared/baseline.md):

- W1: 10,000 files of 1-64 KiB random bytes in 10x10x10 nested directories
      (OUT/W1/d0..d9/d0..d9/d0..d9/f0..f9.bin, ~319 MiB);
- W2: one 1 GiB and three 100 MiB random files (OUT/W2/big.bin, OUT/W2/m0..m2.bin);
- W3: OUT/W3/base.bin (100 MiB random), OUT/W3/insert10.bin (base with 10 bytes
      inserted at offset 0), OUT/W3/overwrite1m.bin (base with 1 MiB overwritten at
      offset 50 MiB).

All bytes come from random.Random(per_file_seed).randbytes, where per_file_seed is
BLAKE2b of (generator version, seed, set, file name): every file is incompressible,
independent of the others (no chunk is shared between files, so nothing dedups), and
the same on every run and machine for a seed.

A set that was generated completely writes OUT/<SET>.marker (outside the set's
directory, so scanners never see it); a set whose marker matches the seed and the
generator version is skipped. Otherwise the set's directory is removed and rebuilt.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import time

GEN_VERSION = 1
KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
BLOCK = 8 * MIB  # generation block: big enough for randbytes to run at C speed


def file_seed(seed: int, set_name: str, name: str) -> int:
    h = hashlib.blake2b(f"weft-bench/{GEN_VERSION}/{seed}/{set_name}/{name}".encode(), digest_size=16)
    return int.from_bytes(h.digest(), "little")


def stream(seed: int, set_name: str, name: str, size: int):
    """Yields `size` deterministic random bytes in blocks of at most BLOCK."""
    rng = random.Random(file_seed(seed, set_name, name))
    left = size
    while left > 0:
        n = min(BLOCK, left)
        yield rng.randbytes(n)
        left -= n


def write_random(path: str, seed: int, set_name: str, name: str, size: int) -> None:
    with open(path, "wb") as f:
        for block in stream(seed, set_name, name, size):
            f.write(block)


def gen_w1(d: str, seed: int) -> dict:
    sizes = random.Random(file_seed(seed, "W1", "sizes"))
    total = files = 0
    for a in range(10):
        for b in range(10):
            for c in range(10):
                sub = os.path.join(d, f"d{a}", f"d{b}", f"d{c}")
                os.makedirs(sub, exist_ok=True)
                for i in range(10):
                    size = sizes.randint(1 * KIB, 64 * KIB)
                    name = f"d{a}/d{b}/d{c}/f{i}.bin"
                    with open(os.path.join(d, name), "wb") as f:
                        f.write(random.Random(file_seed(seed, "W1", name)).randbytes(size))
                    total += size
                    files += 1
    return {"files": files, "bytes": total}


def gen_w2(d: str, seed: int) -> dict:
    os.makedirs(d, exist_ok=True)
    plan = [("big.bin", 1 * GIB)] + [(f"m{i}.bin", 100 * MIB) for i in range(3)]
    for name, size in plan:
        write_random(os.path.join(d, name), seed, "W2", name, size)
    return {"files": len(plan), "bytes": sum(s for _, s in plan)}


def gen_w3(d: str, seed: int) -> dict:
    os.makedirs(d, exist_ok=True)
    base_size = 100 * MIB
    ow_at, ow_len = 50 * MIB, 1 * MIB
    insert = random.Random(file_seed(seed, "W3", "insert")).randbytes(10)
    patch = random.Random(file_seed(seed, "W3", "overwrite")).randbytes(ow_len)
    with open(os.path.join(d, "base.bin"), "wb") as base, \
            open(os.path.join(d, "insert10.bin"), "wb") as ins, \
            open(os.path.join(d, "overwrite1m.bin"), "wb") as ow:
        ins.write(insert)
        pos = 0
        for block in stream(seed, "W3", "base.bin", base_size):
            base.write(block)
            ins.write(block)
            # overwrite [ow_at, ow_at + ow_len) with the patch
            lo, hi = max(pos, ow_at), min(pos + len(block), ow_at + ow_len)
            if lo < hi:
                block = block[: lo - pos] + patch[lo - ow_at : hi - ow_at] + block[hi - pos :]
            ow.write(block)
            pos += len(block)
    return {"files": 3, "bytes": 3 * base_size + 10}


SETS = {"W1": gen_w1, "W2": gen_w2, "W3": gen_w3}


def marker_body(set_name: str, seed: int) -> dict:
    return {"generator": "weft-bench gen.py", "version": GEN_VERSION, "set": set_name, "seed": seed}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "data"))
    p.add_argument("--force", action="store_true", help="regenerate even if the marker matches")
    p.add_argument("sets", nargs="+", choices=sorted(SETS))
    args = p.parse_args()

    os.makedirs(args.out, exist_ok=True)
    for set_name in args.sets:
        d = os.path.join(args.out, set_name)
        marker = os.path.join(args.out, f"{set_name}.marker")
        want = marker_body(set_name, args.seed)
        if not args.force and os.path.isdir(d) and os.path.exists(marker):
            try:
                with open(marker) as f:
                    have = json.load(f)
                if all(have.get(k) == v for k, v in want.items()):
                    print(f"{set_name}: present (seed {args.seed}), skipped", file=sys.stderr)
                    continue
            except (OSError, ValueError):
                pass
        if os.path.exists(marker):
            os.remove(marker)
        if os.path.exists(d):
            shutil.rmtree(d)
        t0 = time.monotonic()
        info = SETS[set_name](d, args.seed)
        dt = time.monotonic() - t0
        with open(marker, "w") as f:
            json.dump({**want, **info}, f)
            f.write("\n")
        print(f"{set_name}: {info['files']} files, {info['bytes']:,} bytes in {dt:.1f} s "
              f"({info['bytes'] / MIB / dt:.0f} MiB/s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
