"""Child-process side of tests/test_determinism.py and tests/test_distributed.py (not
collected by pytest).

Run as ``python tests/_reliability_worker.py MODE ...``; every mode reads its inputs from and
writes its results to files in a work directory, so the parent test can compare them:

* ``ddp RANK WORLD WORKDIR``: one rank of a DistributedDataParallel run (gloo, 127.0.0.1
  only). Rank 0 hosts the rendezvous TCPStore on a port the OS picks (port 0) and publishes
  it in WORKDIR/port, so there is no race for a "free" port. Each rank trains
  ``SeqModel`` (2-layer fusedrnn.LSTM with grad_clip and truncate, then a Linear head) from
  WORKDIR/setup.pt on its contiguous share of the batch for ``steps`` SGD steps and saves
  the per-step local losses, the (all-reduced) gradients and the parameters after every
  step to WORKDIR/rank{RANK}.pt.
* ``fork WORKDIR``: runs the kernels on 2 intra-op threads, then saves a 1-thread run's
  outputs and gradients to WORKDIR/parent.pt and forks a child (as DataLoader workers are
  forked) that saves the same run to WORKDIR/child.pt.
* ``determinism THREADS OUTFILE``: a seeded forward + backward of a small LSTM and GRU stack
  (float32 and float64, padded and packed input, with clipping and truncation) on THREADS
  intra-op threads; saves every output and gradient to OUTFILE.

Every blocking step has a timeout, so a wedged child dies instead of hanging the parent
(which also kills it after its own deadline).
"""

import datetime
import os
import sys
import time

import torch
from torch import nn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import fusedrnn  # noqa: E402

TIMEOUT_S = 60


class SeqModel(nn.Module):
    """x [B, T, I] -> 2-layer fusedrnn.LSTM (batch_first) -> Linear -> [B, T, O]."""

    def __init__(self, I, H, O, *, grad_clip, grad_clip_mode="value", truncate=None,
                 dtype=torch.float64):
        super().__init__()
        self.rnn = fusedrnn.LSTM(I, H, num_layers=2, batch_first=True, dtype=dtype,
                                 grad_clip=grad_clip, grad_clip_mode=grad_clip_mode,
                                 truncate=truncate)
        self.head = nn.Linear(H, O, dtype=dtype)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out)


def make_model(config):
    return SeqModel(config["I"], config["H"], config["O"], grad_clip=config["grad_clip"],
                    truncate=config["truncate"], dtype=config["dtype"])


# ---------------------------------------------------------------------------------------
# ddp


def _store(rank, workdir):
    """The rendezvous store: rank 0 serves it on an OS-chosen port and writes the port to
    WORKDIR/port (atomically, via rename); the other ranks wait for that file."""
    from torch.distributed import TCPStore

    timeout = datetime.timedelta(seconds=TIMEOUT_S)
    port_file = os.path.join(workdir, "port")
    if rank == 0:
        store = TCPStore("127.0.0.1", 0, is_master=True, timeout=timeout,
                         wait_for_workers=False)
        tmp = port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(store.port))
        os.replace(tmp, port_file)
        return store
    deadline = time.monotonic() + TIMEOUT_S
    while not os.path.exists(port_file):
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank {rank}: no port file from rank 0 after {TIMEOUT_S} s")
        time.sleep(0.05)
    with open(port_file) as f:
        port = int(f.read())
    return TCPStore("127.0.0.1", port, is_master=False, timeout=timeout)


def run_ddp(rank, world, workdir):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    setup = torch.load(os.path.join(workdir, "setup.pt"))
    config = setup["config"]
    store = _store(rank, workdir)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=TIMEOUT_S))
    try:
        model = make_model(config)
        model.load_state_dict(setup["state_dict"])
        ddp = DistributedDataParallel(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=config["lr"], momentum=config["momentum"])
        share = setup["x"].shape[0] // world
        rows = slice(rank * share, (rank + 1) * share)
        x, y = setup["x"][rows], setup["y"][rows]
        steps = []
        for _ in range(config["steps"]):
            opt.zero_grad()
            loss = nn.functional.mse_loss(ddp(x), y)  # mean over this rank's rows
            loss.backward()  # DDP: gradient = mean over ranks of the local gradients
            grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
            opt.step()
            params = {n: p.detach().clone() for n, p in model.named_parameters()}
            steps.append({"loss": loss.detach().clone(), "grads": grads, "params": params})
        torch.save(steps, os.path.join(workdir, f"rank{rank}.pt"))
        dist.barrier()  # keep rank 0's store up until every rank is done with it
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------
# determinism


def determinism_results():
    """A seeded forward + backward of LSTM and GRU stacks; every output and gradient."""
    from torch.nn.utils.rnn import pack_padded_sequence

    results = {}
    for dtype in (torch.float32, torch.float64):
        for cls, options in ((fusedrnn.LSTM, dict(grad_clip=0.02, truncate=3, proj_size=3)),
                             (fusedrnn.GRU, dict(grad_clip=0.05, grad_clip_mode="norm"))):
            torch.manual_seed(0)
            rnn = cls(6, 8, num_layers=2, bidirectional=True, dtype=dtype, **options)
            gen = torch.Generator().manual_seed(1)
            x = torch.randn(9, 5, 6, generator=gen, dtype=dtype).requires_grad_(True)
            lengths = torch.tensor([9, 4, 7, 1, 9])
            for layout in ("padded", "packed"):
                if layout == "packed":
                    out, state = rnn(pack_padded_sequence(x, lengths, enforce_sorted=False))
                    out = out.data
                else:
                    out, state = rnn(x)
                states = list(state) if isinstance(state, tuple) else [state]
                outputs = [out] + states
                upstream = [torch.randn(o.shape, generator=gen, dtype=dtype) for o in outputs]
                params = dict(rnn.named_parameters())
                grads = torch.autograd.grad(outputs, [x, *params.values()], upstream)
                key = f"{cls.__name__}-{dtype}-{layout}"
                for i, o in enumerate(outputs):
                    results[f"{key}-out{i}"] = o.detach()
                for name, g in zip(["x", *params], grads):
                    results[f"{key}-grad_{name}"] = g
    return results


def run_determinism(threads, outfile):
    torch.set_num_threads(threads)
    results = determinism_results()
    results["_num_threads"] = torch.tensor(torch.get_num_threads())
    results["_capability"] = fusedrnn.ops._C._cpu_capability()
    torch.save(results, outfile)


# ---------------------------------------------------------------------------------------
# fork


def _fork_case():
    """LSTM (float32, oneDNN step GEMMs) and GRU (float64), B=128 so that the kernels'
    parallel loops run on 2 intra-op threads. -> function returning every output and
    gradient (padded and packed input) as a list."""
    from torch.nn.utils.rnn import pack_padded_sequence

    torch.manual_seed(0)
    lstm = fusedrnn.LSTM(8, 32, num_layers=2, grad_clip=0.05, truncate=3)
    gru = fusedrnn.GRU(8, 32, dtype=torch.float64, grad_clip=0.1, grad_clip_mode="norm")
    gen = torch.Generator().manual_seed(1)
    x64 = torch.randn(4, 128, 8, generator=gen, dtype=torch.float64)
    lengths = torch.randint(1, 5, (128,), generator=gen)
    lengths[0] = 4

    def run():
        results = []
        for module, dtype in ((lstm, torch.float32), (gru, torch.float64)):
            for packed in (False, True):
                x = x64.to(dtype).requires_grad_(True)
                inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
                out, state = module(inp)
                outputs = [out.data if packed else out] + (
                    list(state) if isinstance(state, tuple) else [state])
                params = list(module.parameters())
                loss = outputs[0].square().sum() + sum(o.sum() for o in outputs[1:])
                grads = torch.autograd.grad(loss, [x] + params)
                results += [o.detach() for o in outputs] + list(grads)
        return results
    return run


def _forked_child(run, path):
    # What DataLoader workers do: GNU OpenMP's thread pool does not survive fork (torch.nn
    # itself hangs in a forked child of a process that has used 2 intra-op threads unless
    # the child sets its thread count first).
    torch.set_num_threads(1)
    torch.save(run(), path)


def run_fork(workdir):
    import multiprocessing

    run = _fork_case()
    torch.set_num_threads(2)
    run()  # OpenMP's pool and oneDNN are in use before the fork
    torch.set_num_threads(1)
    torch.save(run(), os.path.join(workdir, "parent.pt"))
    child = multiprocessing.get_context("fork").Process(
        target=_forked_child, args=(run, os.path.join(workdir, "child.pt")))
    child.start()
    child.join(timeout=TIMEOUT_S)
    if child.is_alive():
        child.kill()
        child.join(timeout=10)
        raise TimeoutError(f"forked child did not finish in {TIMEOUT_S} s")
    if child.exitcode != 0:
        raise RuntimeError(f"forked child exited with {child.exitcode}")


def main(argv):
    mode = argv[1]
    if mode == "ddp":
        run_ddp(int(argv[2]), int(argv[3]), argv[4])
    elif mode == "fork":
        run_fork(argv[2])
    elif mode == "determinism":
        run_determinism(int(argv[2]), argv[3])
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv)
