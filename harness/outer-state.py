#!/usr/bin/env python3
"""Records where the vCPUs of a frozen outer machine are, and names their code.

    outer-state.py sample MONITOR_SOCKET [--samples N] [--interval SECS]
    outer-state.py name STATE_FILE KALLSYMS

run-in-svm.sh calls `sample` when the outer machine's heartbeat stops, before it kills QEMU: for
every sample and emulated CPU one line with RIP, RSP, CR3, EFER and HLT from QEMU's monitor
(`info registers -a`), then the words on its stack that look like kernel text addresses. EFER.SVME (bit 12) is set in the outer kernel once KVM has enabled SVM
(while any VM exists) and clear in a guest (L2), so with VMs running it tells which level ran.

`name` adds to each line the outer kernel's symbol at RIP, from a /proc/kallsyms of the outer
kernel (run-in-svm.sh keeps one per outer kernel; the addresses are the same in every boot, as
the PVH entry skips KASLR). A guest kernel's text lies at the same virtual addresses, so an L2
line's name is only a hint.
"""
import argparse
import bisect
import re
import socket
import sys
import time


def monitor(path, commands):
    """HMP commands over the monitor's Unix socket, in one session; returns their outputs."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)

        def until_prompt():
            buf = b""
            while not buf.endswith(b"(qemu) "):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
            return buf.decode(errors="replace")

        until_prompt()
        outputs = []
        for command in commands:
            s.sendall(command.encode() + b"\n")
            outputs.append(until_prompt())
        return outputs


def kernel_text_words(dump):
    """The 64-bit words of an `x/Ngx` dump that look like kernel text addresses."""
    words = re.findall(r"\b0x(ffffffff[89a-f][0-9a-f]{7})\b", dump.split(":", 1)[-1])
    return [int(w, 16) for w in words]


def sample(args):
    for n in range(args.samples):
        try:
            (text,) = monitor(args.socket, ["info registers -a"])
        except OSError as e:
            print(f"outer-state: monitor {args.socket}: {e}")
            return 1
        print(f"--- sample {n + 1} of {args.samples} at {time.strftime('%H:%M:%S')}")
        for cpu in re.split(r"(?m)^CPU#", text)[1:]:
            num = cpu.split("\n", 1)[0].strip()

            def reg(key):
                m = re.search(r"\b" + key + r"=([0-9a-f]+)", cpu)
                return int(m[1], 16) if m else 0

            efer = reg("EFER")
            level = "L1" if efer & 0x1000 else "L1-or-L2"
            hlt = re.search(r"HLT=(\d)", cpu)
            print(
                f"CPU {num}: {level} rip {reg('RIP'):#x} rsp {reg('RSP'):#x} "
                f"cr3 {reg('CR3'):#x} efer {efer:#x} hlt {hlt[1] if hlt else '?'}"
            )
            # Return addresses on the stack: a crude backtrace (read through the CPU's own
            # page tables; for an L2 CPU under nested paging it may read the wrong memory).
            try:
                _, dump = monitor(args.socket, [f"cpu {num}", f"x/64gx {reg('RSP'):#x}"])
                for word in kernel_text_words(dump):
                    print(f"CPU {num}:   stack {word:#x}")
            except OSError as e:
                print(f"CPU {num}:   stack unreadable: {e}")
        if n + 1 < args.samples:
            time.sleep(args.interval)
    return 0


def name(args):
    syms = []
    with open(args.kallsyms, errors="replace") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and len(parts[1]) == 1 and parts[1] in "tTwW":
                try:
                    syms.append((int(parts[0], 16), " ".join(parts[2:4])))
                except ValueError:
                    pass
    syms.sort()
    addrs = [a for a, _ in syms]
    with open(args.state, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            m = re.search(r" (?:rip|stack) (0x[0-9a-f]+)", line)
            if m:
                rip = int(m[1], 16)
                i = bisect.bisect_right(addrs, rip) - 1
                if i >= 0 and rip - syms[i][0] < 0x10000:
                    line += f"  [outer kernel: {syms[i][1]}+{rip - syms[i][0]:#x}]"
            print(line)
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample")
    s.add_argument("socket")
    s.add_argument("--samples", type=int, default=3)
    s.add_argument("--interval", type=float, default=2.0)
    n = sub.add_parser("name")
    n.add_argument("state")
    n.add_argument("kallsyms")
    args = p.parse_args()
    return sample(args) if args.cmd == "sample" else name(args)


if __name__ == "__main__":
    sys.exit(main())
