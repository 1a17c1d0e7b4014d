#!/usr/bin/env python3
"""Runs a command and appends what it cost to a log (benchmarks on the GPU machine):

  scripts/measure.py LOG CMD [ARGS...]

CMD's stderr goes to LOG, its stdout to LOG.stdout. Last, one line is appended to LOG:
  exit=RC wall_s=S peak_rss_kib=K peak_device_mib=M read_mib=R written_mib=W
peak RSS from getrusage of the child; peak device memory from nvidia-smi, sampled every 0.2 s
(all processes on the card; `-` without nvidia-smi); from /proc/PID/io, sampled every 0.2 s
(`-` where the kernel does not give them): read = bytes brought in from storage (read_bytes:
memory-mapped pages too, 0 for files already in the page cache), written = bytes passed to
write calls (wchar: writeback to storage happens later, so write_bytes would miss them).
SIGTERM and SIGINT are passed on to CMD, so a `timeout` around this script stops CMD the way
Ctrl-C does and the line is still written.
"""
import os
import resource
import signal
import subprocess
import sys
import threading
import time


def main():
    log, cmd = sys.argv[1], sys.argv[2:]
    peak_dev, io = [None], [None]
    done = threading.Event()

    def sample_device():
        try:
            smi = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-lms", "200"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError:
            return
        for line in smi.stdout:
            try:
                v = max(int(x) for x in line.split(",") if x.strip())
            except ValueError:
                continue
            peak_dev[0] = v if peak_dev[0] is None else max(peak_dev[0], v)
            if done.is_set():
                break
        smi.terminate()

    t0 = time.time()
    with open(log, "a") as err, open(log + ".stdout", "w") as out:
        child = subprocess.Popen(cmd, stdout=out, stderr=err)
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, lambda sig, _f: child.send_signal(sig))
        threading.Thread(target=sample_device, daemon=True).start()

        def read_io():
            try:
                with open(f"/proc/{child.pid}/io") as f:
                    kv = dict(l.split(": ") for l in f.read().splitlines())
                io[0] = (int(kv["read_bytes"]), int(kv["wchar"]))
            except (OSError, KeyError, ValueError):
                pass

        def sample_io():
            while not done.is_set():
                read_io()
                time.sleep(0.2)

        threading.Thread(target=sample_io, daemon=True).start()
        while True:
            try:
                # Exited but not yet reaped: its /proc entry still holds the final counts.
                os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
                break
            except InterruptedError:
                continue
            except ChildProcessError:
                break  # reaped already (Popen.send_signal polls first): counts as last sampled
        done.set()
        read_io()
        rc = child.wait()
    done.set()
    wall = time.time() - t0
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    mib = lambda b: "%.0f" % (b / 2**20)
    r, w = (mib(io[0][0]), mib(io[0][1])) if io[0] else ("-", "-")
    dev = peak_dev[0] if peak_dev[0] is not None else "-"
    with open(log, "a") as f:
        f.write(f"exit={rc} wall_s={wall:.1f} peak_rss_kib={rss} peak_device_mib={dev} read_mib={r} written_mib={w}\n")
    sys.exit(rc if rc >= 0 else 128 - rc)


if __name__ == "__main__":
    main()
