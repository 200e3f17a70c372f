"""A process killed with SIGKILL while saving leaves the previous or the new checkpoint, never a broken one.

One child Python process (so that the saver forks from a single-threaded
process) runs the trials: for each one it forks a saver that writes
checkpoints step, step + 1, ... in a loop, kills it with SIGKILL after a
random moment (after 0 to 2 completed saves, which it reports through a
pipe, and a short random sleep), and loads what is left. Every tensor
of the checkpoint holds its step, so a file mixing two saves is caught even
if it parsed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

KILLS = 200

TRIALS = textwrap.dedent("""
    import json, os, random, signal, sys, time
    import numpy as np
    import pyengine as pe
    from pyengine import io

    folder, kills, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    paths = {"save": os.path.join(folder, "ck.safetensors"), "io": os.path.join(folder, "model.safetensors")}

    def arrays(step):
        return {f"layer{i}.weight": np.full((64, 48 + i), step, np.float32) for i in range(6)}

    def save(kind, step):
        if kind == "save":
            pe.save({"model": arrays(step), "optim": {"step": step, "buffers": [np.full(40, step, np.int64)]}},
                    paths[kind])
        else:
            io.save({**arrays(step), "step": np.array(step, np.int64)}, paths[kind], metadata={"step": step})

    def loaded_step(kind):
        if kind == "save":
            state = pe.load(paths[kind])
            step = state["optim"]["step"]
            values = [t.numpy() for t in state["model"].values()] + [state["optim"]["buffers"][0].numpy()]
        else:
            state = io.load(paths[kind])
            step = int(state.pop("step"))
            values = list(state.values())
        assert all((v == step).all() for v in values), f"a checkpoint mixing steps: step {step}"
        return step

    def saver(kind, first_step, done):
        step = first_step
        while True:
            save(kind, step)
            os.write(done, b".")  # one byte per completed save
            step += 1

    for kind in paths:
        save(kind, 0)
    survived, mid_write, steps, last = 0, 0, 0, {kind: 0 for kind in paths}
    for trial in range(kills):
        kind = "save" if trial % 2 == 0 else "io"
        done_r, done_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(done_r)
                saver(kind, last[kind] + 1, done_w)
            finally:
                os._exit(1)
        os.close(done_w)
        # The moment: after 0 to 2 completed saves, then up to 3 ms into the next one (a save of
        # these arrays takes about a millisecond, so most kills land inside a write).
        for _ in range(rng.randrange(3)):
            os.read(done_r, 1)
        time.sleep(rng.uniform(0.0, 0.003))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(done_r)
        leftovers = [name for name in os.listdir(folder) if name.endswith(".tmp")]
        mid_write += bool(leftovers)
        for name in leftovers:
            os.remove(os.path.join(folder, name))
        step = loaded_step(kind)
        assert step >= last[kind], f"went back from step {last[kind]} to {step}"
        steps += step - last[kind]
        last[kind] = step
        survived += 1
    print(json.dumps({"survived": survived, "tried": kills, "killed_mid_write": mid_write,
                      "saves_completed": steps}))
""")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and SIGKILL")
def test_sigkill_while_saving_leaves_a_loadable_checkpoint(tmp_path):
    result = subprocess.run([sys.executable, "-c", TRIALS, str(tmp_path), str(KILLS), "11"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"\ncheckpoint kills survived: {figures['survived']}/{figures['tried']} "
          f"({figures['killed_mid_write']} killed mid-write, leaving a temporary file; "
          f"{figures['saves_completed']} saves completed between kills)")
    assert figures["survived"] == figures["tried"] == KILLS
    assert figures["killed_mid_write"] > 0, "no kill landed during a write: the test proves nothing"
