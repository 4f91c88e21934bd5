"""Secure aggregation communication expansion and per-client cost, from the protocol's messages.

Part 1 compares with Bonawitz et al. (CCS 2017): 2^10 clients with 2^20-dimensional 16-bit
vectors (reported 1.73x) and 2^14 clients with 2^24 dimensions (1.98x).  The bytes are the
encoded sizes of the messages a client sends and receives in one round, built exactly as the
machines build them (``crowdlearn.protocols.secagg.client_round_bytes``, priced: placeholder
ciphertexts of the real lengths; a test holds it equal to a real round).  R is the smallest
power of two that cannot overflow (``min_modulus_bits``).  "In the clear" is the 16-bit vector
(d x 2 bytes), the paper's baseline.

Part 2: SecAgg against SecAgg+ per client and round for n = 100, 1,000, 10,000 and our MLP
(d = 109,386 parameters, 16-bit): bytes sent and received, and compute: the primitive counts the
client is charged for (``client_round_ops``) times the costs calibrated on this machine
(``crowdlearn.crypto.costs.calibrate``), in host seconds.

Run::

    .venv/bin/python benchmarks/secagg_expansion.py
"""

from __future__ import annotations

import math

import numpy as np

from crowdlearn.crypto import masking
from crowdlearn.crypto.costs import calibrate
from crowdlearn.protocols.messages import Update
from crowdlearn.protocols.secagg import auto_neighbours, client_round_bytes, client_round_ops
from sim import wire

#: Bonawitz et al.'s two settings (clients, dimension) and the expansion they report
PAPER = ((2 ** 10, 2 ** 20, "1.73×"), (2 ** 14, 2 ** 24, "1.98×"))
#: our MLP's parameter count, and the fleet sizes of part 2
D_MLP = 109_386
FLEETS = (100, 1_000, 10_000)


def expansion_rows() -> list[dict]:
    """Part 1: per setting n, d, R bits, bytes a client sends and receives, the paper's figure."""
    out = []
    for n, d, paper in PAPER:
        bits = masking.min_modulus_bits(n, 16)
        b = client_round_bytes(n=n, d=d, modulus_bits=bits)
        out.append({"n": n, "d": d, "bits": bits, "sent": int(b["sent_total"]),
                    "received": int(b["received_total"]), "paper": paper})
    return out


def plain_update_bytes(d: int = D_MLP) -> int:
    """Encoded bytes of a plain FedAvg float32 update of ``d`` parameters."""
    return wire.size(Update(0, (np.zeros(d, np.float32),), 1))


def per_client_rows(c, d: int = D_MLP) -> list[dict]:
    """Part 2: SecAgg and SecAgg+ per client and round; ``compute_s`` from the calibration ``c``."""
    out = []
    for n in FLEETS:
        bits = masking.min_modulus_bits(n + 1, 16)
        for mode in ("secagg", "secagg+"):
            k = auto_neighbours(n) if mode == "secagg+" else 0
            holders = k + 1 if mode == "secagg+" else n
            t = math.ceil(2 * holders / 3)
            peers = n - 1 if mode == "secagg" else k
            b = client_round_bytes(n=n, d=d, modulus_bits=bits, mode=mode, k=k)
            sec = c.flops(**client_round_ops(peers=peers, t=t, d=d, bits=bits)) / c.host_flops
            out.append({"n": n, "mode": mode, "k": k, "t": t, "bits": bits,
                        "sent": int(b["sent_total"]), "received": int(b["received_total"]),
                        "compute_s": float(sec)})
    return out


def calibration_text(c) -> str:
    return (f"cost model calibrated on this machine: host {c.host_flops / 1e9:.1f} GFLOP/s; "
            f"X25519+HKDF {c.agree / c.host_flops * 1e6:.1f} µs, keygen "
            f"{c.keygen / c.host_flops * 1e6:.1f} µs, PRG {c.prg_byte / c.host_flops * 1e9:.2f} "
            f"ns/byte, AES-GCM {c.aead_byte / c.host_flops * 1e9:.2f} ns/byte, "
            f"Shamir mul-add {c.field_mul / c.host_flops * 1e9:.0f} ns")


def main():
    print("## Expansion against Bonawitz et al. (16-bit inputs, no drop-outs)\n")
    print("| clients n | dimension d | R bits | client sends (B) | sends ÷ clear | "
          "sends + receives ÷ clear | paper |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for e in expansion_rows():
        clear = e["d"] * 2
        print(f"| 2^{int(math.log2(e['n']))} | 2^{int(math.log2(e['d']))} | {e['bits']} | "
              f"{e['sent']:,} | {e['sent'] / clear:.3f}× | "
              f"{(e['sent'] + e['received']) / clear:.3f}× | {e['paper']} |")
    c = calibrate()
    print(f"\n## SecAgg vs SecAgg+ per client and round (d = {D_MLP:,}, 16-bit, no drop-outs)\n")
    print(calibration_text(c) + "\n")
    print("| n | mode | k | t | R bits | sent (B) | received (B) | sent ÷ float32 update | "
          "compute (host s) |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    plain = plain_update_bytes()
    for r in per_client_rows(c):
        print(f"| {r['n']:,} | {r['mode']} | {r['k'] or '-'} | {r['t']} | {r['bits']} | "
              f"{r['sent']:,} | {r['received']:,} | {r['sent'] / plain:.3f} | "
              f"{r['compute_s']:.3f} |")
    print(f"\nplain FedAvg update (float32, encoded): {plain:,} B")


if __name__ == "__main__":
    main()
