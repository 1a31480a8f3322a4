"""bench/gpu_check.sh runs on a CPU with tiny sizes (GPU_CHECK_SMOKE=1): the issue-15 sections."""

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_smoke_run_of_the_plain_loop_and_attention_sections(tmp_path):
    env = {**os.environ, "GPU_CHECK_SMOKE": "1", "GPU_CHECK_SECTIONS": "plain_loop attention",
           "OUT": str(tmp_path / "out"), "GPU_CHECK_WORK": str(tmp_path / "work")}  # fmt: skip
    done = subprocess.run(["bash", "bench/gpu_check.sh"], cwd=ROOT, env=env, timeout=600,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "gpu_results.json").read_text())
    assert results["summary"]["failed"] == []
    plain = results["plain_loop"]["tile32_batch2"]
    # the two sides train the same model: the plain loop's first forward is the kit's
    assert plain["logit_max_abs_diff"] < 1e-4
    for side in ("plain", "kit"):
        assert plain[side]["images_per_s"] > 0
    assert plain["kit"]["ratio"] > 0
    attention = results["attention"]
    assert set(attention["train"]) == {"meta_w14", "sdpa_w14", "meta_w4", "sdpa_w4"}
    assert (tmp_path / "out" / "gpu_check.log").is_file()
