"""``bound_batch`` across processes: jax.distributed on 127.0.0.1, every process equal to the single-process run.

Each test starts its processes (tests/distributed_worker.py, or the ``ttjax`` command) at a fresh loopback port,
waits for them with a deadline and kills any that is left (timeout or failure). Every run has 4 devices in all
(1 process x 4 host devices, 2 x 2, 4 x 1), so each device runs the same program on the same block of pairs and the
results are equal bit for bit. On CPU the cross-process gather runs over gloo, jax's default CPU collectives; no
setting is needed.
"""
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from ttjax import batch as bt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "distributed_worker.py")
ENV = dict(os.environ, JAX_PLATFORMS="cpu", TTJAX_NO_COMPILATION_CACHE="1", PYTHONUNBUFFERED="1")
for _name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "XLA_FLAGS"):
  ENV.pop(_name, None)
ENV["XLA_FLAGS"] = "--xla_backend_optimization_level=0"  # tiny programs: compile faster (the same in every run)
DEADLINE = 420  # seconds for a whole group (compilation on 2 shared cores: measured ~40-120 s)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_group(tmp_path, commands, *, deadline=DEADLINE, cwds=None, envs=None):
  """Start every command (argv list) at once, wait for all until ``deadline`` seconds, kill what is left.
  Returns ``(returncode, stdout, stderr)`` per command (output through files: no pipe can fill and block)."""
  procs, files = [], []
  try:
    for i, argv in enumerate(commands):
      out, err = open(tmp_path / f"out{i}.txt", "w+"), open(tmp_path / f"err{i}.txt", "w+")
      files += [out, err]
      procs.append(subprocess.Popen(argv, stdout=out, stderr=err, text=True, cwd=(cwds or {}).get(i, ROOT),
                                    env={**ENV, **(envs or {}).get(i, {})}))
    end = time.monotonic() + deadline
    for p in procs:
      p.wait(timeout=max(1.0, end - time.monotonic()))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  read = lambda f: (f.seek(0), f.read())[1]
  result = [(p.returncode, read(files[2 * i]), read(files[2 * i + 1])) for i, p in enumerate(procs)]
  for f in files:
    f.close()
  return result


def _workers(num, devices, *extra, timeout=60):
  port = _free_port()
  return [[sys.executable, WORKER, "--coordinator", f"127.0.0.1:{port}", "--num-processes", str(num),
           "--process-id", str(i), "--devices", str(devices), "--timeout", str(timeout), *extra] for i in range(num)]


def _last_json(stdout):
  return json.loads(stdout.strip().splitlines()[-1])


def test_process_group_reads_flags_then_the_environment():
  env = dict(JAX_COORDINATOR_ADDRESS="10.0.0.1:1234", JAX_NUM_PROCESSES="4", JAX_PROCESS_ID="3")
  assert bt.process_group(environ={}) is None
  assert bt.process_group(environ=env) == bt.ProcessGroup("10.0.0.1:1234", 4, 3)
  assert bt.process_group("127.0.0.1:9", 2, 0, environ=env) == bt.ProcessGroup("127.0.0.1:9", 2, 0)
  with pytest.raises(ValueError, match="missing: num_processes, process_id"):
    bt.process_group("127.0.0.1:9", environ={})
  with pytest.raises(ValueError, match=r"in \[0, 2\)"):
    bt.process_group("127.0.0.1:9", 2, 2, environ={})
  with pytest.raises(ValueError, match="host:port"):
    bt.process_group("localhost", 1, 0, environ={})
  assert bt.process_gather({"a": [1.5]}) == [{"a": [1.5]}]  # one process: the object itself, no collective


@pytest.fixture(scope="module")
def single(tmp_path_factory):
  """The single-process run: 1 process, 4 host devices."""
  [(rc, out, err)] = _run_group(tmp_path_factory.mktemp("single"), [[sys.executable, WORKER, "--devices", "4"]])
  assert rc == 0, err[-3000:]
  res = _last_json(out)
  assert res["processes"] == 1 and res["devices"] == 4
  return res["results"]


def _check_group(tmp_path, single, num, devices):
  runs = _run_group(tmp_path, _workers(num, devices))
  for i, (rc, out, err) in enumerate(runs):
    assert rc == 0, f"process {i}: {err[-3000:]}"
    res = _last_json(out)
    assert res["process"] == i and res["processes"] == num and res["devices"] == 4
    assert len(res["results"]) == 8
    assert res["results"] == single, f"process {i} differs from the single-process run"
  assert all(np.isfinite(r["bound"]) for r in single) and len({r["bound"] for r in single}) == 8


def test_two_processes_equal_one_process(tmp_path, single):
  _check_group(tmp_path, single, 2, 2)


@pytest.mark.slow
def test_four_processes_equal_one_process(tmp_path, single):
  _check_group(tmp_path, single, 4, 1)


def test_the_default_certified_bound_over_two_processes_equals_one_process(tmp_path):
  """The default bound (logit space, held out) on a zoo's 8 pairs (widths 5-7: one zero-padded group) runs through
  the prepared-pair programs; sharded over 2 processes x 2 devices (each process preparing only its devices' pairs)
  it equals 1 process x 4 devices bit for bit, on every process."""
  (tmp_path / "one").mkdir()
  [(rc, out, err)] = _run_group(tmp_path / "one", [[sys.executable, WORKER, "--devices", "4", "--space", "logit"]])
  assert rc == 0, err[-3000:]
  one = _last_json(out)["results"]
  assert all(r["split"] == "held-out" and r["bound"] >= r["target_loss"] for r in one)
  runs = _run_group(tmp_path, _workers(2, 2, "--space", "logit"))
  for i, (rc, out, err) in enumerate(runs):
    assert rc == 0, f"process {i}: {err[-3000:]}"
    assert _last_json(out)["results"] == one, f"process {i} differs from the single-process run"


def test_a_process_that_never_joins_stops_the_others_within_the_timeout(tmp_path):
  # 3 processes expected, 2 started: the coordinator (0) and a client (1) both give up after 3 s with one line
  t0 = time.monotonic()
  runs = _run_group(tmp_path, _workers(3, 1, timeout=3)[:2], deadline=60)
  elapsed = time.monotonic() - t0
  for i, (rc, out, err) in enumerate(runs):
    assert rc == 1, (i, rc, err[-2000:])
    assert f"ttjax: error: process {i} of 3: not every process joined the coordinator" in err
    assert "within 3 s" in err and "Check failure" not in err and not out.strip()
  assert elapsed < 3 + 20, elapsed  # the timeout plus interpreter start-up on a loaded machine


def test_a_process_that_dies_stops_the_others(tmp_path):
  # process 1 exits right after joining; jax's coordination service sees its heartbeats stop and terminates
  # process 0 (mid-compilation or waiting in the gather) after the 5 s heartbeat timeout: no result is printed
  t0 = time.monotonic()
  runs = _run_group(tmp_path, _workers(2, 1, "--die-after-join", "1", timeout=5), deadline=120)
  elapsed = time.monotonic() - t0
  (rc0, out0, err0), (rc1, _, _) = runs
  assert rc1 == 9
  assert rc0 != 0 and "stopped sending heartbeats" in err0, err0[-2000:]
  assert '"results"' not in out0
  assert elapsed < 60, elapsed


# ------------------------------------------------------------------------------------------------ the command line


def _zoo(folder):
  """Three 'encoders' of one 3-class target (separation 6, 2, 0) as .npz TASKs with test splits and sources."""
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  y, y_test = np.repeat(np.arange(3), 30), np.repeat(np.arange(3), 15)
  centres = rng.normal(size=(3, 6))
  for name, sep in (("good", 6.0), ("medium", 2.0), ("bad", 0.0)):
    feats = lambda yy: sep * centres[yy] + rng.normal(size=(yy.size, 6))
    np.savez(folder / f"{name}.npz", features=feats(y), labels=y, test_features=feats(y_test), test_labels=y_test)
    np.savez(folder / f"src_{name}.npz", features=feats(y), labels=y)
  return folder


def _rank_argv(models, source, *extra):
  return [sys.executable, "-m", "ttjax.cli", "rank", "--models", models, "--source", source, "--steps", "10",
          "--finetune-steps", "30", "--scores", "logme,ncc,leep", "--quiet", "--out", "rank.json", "--csv",
          "rank.csv", *extra]


def _without_seconds(v):
  if isinstance(v, dict):
    return {k: _without_seconds(x) for k, x in v.items() if "seconds" not in k}
  return [_without_seconds(x) for x in v] if isinstance(v, list) else v


@pytest.mark.slow
def test_rank_command_over_two_processes_equals_one_process(tmp_path):
  # process 0 by flags, process 1 by JAX_* environment variables, and a single-process run, all at once; each in
  # its own folder with the same relative --out / --csv: only process 0 and the single run write
  zoo = _zoo(tmp_path / "zoo")
  dirs = [tmp_path / d for d in ("p0", "p1", "single")]
  for d in dirs:
    d.mkdir()
  port = _free_port()
  argv = _rank_argv(",".join(str(zoo / f"{m}.npz") for m in ("medium", "bad", "good")), str(zoo / "src_{model}.npz"))
  runs = _run_group(tmp_path, [argv + ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                                       "--process-id", "0"], argv, argv],
                    cwds=dict(enumerate(dirs)),
                    envs={1: dict(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                                  JAX_PROCESS_ID="1")})
  for i, (rc, _, err) in enumerate(runs):
    assert rc == 0, f"run {i}: {err[-3000:]}"
  assert sorted(os.listdir(dirs[1])) == [] and "wrote" not in runs[1][1] and "ranking" not in runs[1][1]
  assert sorted(os.listdir(dirs[0])) == sorted(os.listdir(dirs[2])) == ["rank.csv", "rank.json", "rank_ranking.csv"]
  two, one = (json.loads((d / "rank.json").read_text()) for d in (dirs[0], dirs[2]))
  assert [r["model"] for r in two["results"]] == ["medium", "bad", "good"]
  assert _without_seconds(two["results"]) == _without_seconds(one["results"])
  assert two["ranking"] == one["ranking"] and "bound" in two["ranking"]
  assert (dirs[0] / "rank_ranking.csv").read_text() == (dirs[2] / "rank_ranking.csv").read_text()


def test_rank_command_stops_every_process_when_one_fails_and_writes_nothing(tmp_path):
  # process 1 runs where the models do not exist: it prints its error and waits at jax's shutdown barrier for at
  # most the 5 s timeout; the failed barrier then terminates both (SIGABRT, measured ~16 s in all), and process 0
  # writes no output file, not even a partial one
  zoo, empty = _zoo(tmp_path / "zoo"), tmp_path / "empty"
  empty.mkdir()
  port = _free_port()
  argv = _rank_argv("medium.npz,bad.npz,good.npz", "src_{model}.npz", "--coordinator", f"127.0.0.1:{port}",
                    "--num-processes", "2", "--process-timeout", "5")
  t0 = time.monotonic()
  runs = _run_group(tmp_path, [argv + ["--process-id", "0"], argv + ["--process-id", "1"]], deadline=180,
                    cwds={0: zoo, 1: empty})
  elapsed = time.monotonic() - t0
  (rc0, out0, err0), (rc1, _, err1) = runs
  assert rc1 != 0 and "ttjax: error: no such file: bad.npz" in err1, err1[-2000:]
  assert rc0 != 0 and ("Shutdown barrier" in err0 or "stopped sending heartbeats" in err0), err0[-2000:]
  assert not [p for p in os.listdir(zoo) if "rank" in p] and "wrote" not in out0  # nor a .rank.json.*.part
  assert elapsed < 90, elapsed
