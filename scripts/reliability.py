"""Count what the hardening tests try and what survives (the figures of docs/reliability.md).

    python scripts/reliability.py            # default suite's versions (~2 min on 2 CPU cores)
    python scripts/reliability.py --slow     # plus the 5-kill versions of the kill-anywhere tests

Runs the reliability tests once with pytest (junit XML + the kill log of tests/test_kill.py) and prints:
bad inputs tried / passed, kill points tried / resumed identically, faults simulated / survived.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FILES = ["tests/test_bad_inputs.py", "tests/test_files.py", "tests/test_interrupts.py", "tests/test_locks.py",
         "tests/test_kill.py"]
# Fault-injection tests by kind: (file stem, test-name prefix).
FAULTS = {
    "disk full / I/O error mid-write (ENOSPC, EIO)": ("test_files", ("test_failure_mid_write", "test_tensor_write_failure",
                                                                    "test_unwritable_folder")),
    "Ctrl-C inside a sub-command": ("test_interrupts", ("test_interrupt",)),
    "a second writer on a locked folder, SIGKILLed holder, readers while locked": ("test_locks", ("test_",)),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow", action="store_true", help="also run the slow (5-kill) versions")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        junit, log = Path(tmp) / "junit.xml", Path(tmp) / "kills.jsonl"
        env = {**os.environ, "RCEDETECT_RELIABILITY_LOG": str(log), "OMP_NUM_THREADS": "1",
               "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *FILES]
        if args.slow:
            command += ["-m", "slow or not slow"]
        print("$", " ".join(command[1:]), flush=True)
        status = subprocess.run(command, cwd=REPO, env=env).returncode
        cases = []
        for case in ET.parse(junit).getroot().iter("testcase"):
            failed = any(child.tag in ("failure", "error") for child in case)
            skipped = any(child.tag == "skipped" for child in case)
            cases.append((case.get("classname", "").split(".")[-1], case.get("name"), failed, skipped))
        entries = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        kills = [e for e in entries if e["kind"] == "kill"]
        notes = [e for e in entries if e["kind"] == "note"]

    bad = [c for c in cases if c[0] == "test_bad_inputs" and c[1].startswith("test_bad_input_is_one_line")]
    print(f"\nbad inputs: {len(bad)} tried, {sum(not f and not s for _, _, f, s in bad)} passed"
          f" ({sum(s for *_, s in bad)} skipped)")
    for command in ("reproduce", "train"):
        points = [k for k in kills if k["command"] == command]
        print(f"kill points ({command}): {len(points)} tried, {sum(k['resumed_identical'] for k in points)} "
              f"resumed identically")
        for k in points:
            print(f"    {k['where']}")
    for note in notes:
        print(f"note ({note['command']}): {note['where']}")
    total = survived = 0
    for kind, (stem, prefixes) in FAULTS.items():
        group = [c for c in cases if c[0] == stem and c[1].startswith(prefixes)]
        ok = sum(not f and not s for _, _, f, s in group)
        total, survived = total + len(group), survived + ok
        print(f"faults simulated: {kind}: {len(group)} simulated, {ok} survived")
    print(f"faults simulated in all: {total}, survived: {survived}")
    print(f"pytest exit status: {status}")
    return status


if __name__ == "__main__":
    sys.exit(main())
