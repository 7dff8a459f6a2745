"""Vocab-parallel label-smoothed cross-entropy: run with

    torchrun --nproc_per_node=2 examples/vocab_parallel.py            # gloo on CPU
    torchrun --nproc_per_node=8 examples/vocab_parallel.py --nccl     # one GPU per rank

Every rank builds the same full logits from a seed, keeps its slice of the classes (uneven slices:
V = 50_257 is not divisible by the world size), computes the loss and the gradient of its slice, and
rank 0 checks them against the single-process loss on the full logits.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist

import labelsmooth as ls
from labelsmooth.distributed import communication_volume, vocab_parallel_cross_entropy


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nccl", action="store_true", help="NCCL on CUDA (default: gloo on CPU)")
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=50_257)
    args = parser.parse_args()
    device = torch.device("cpu")
    if args.nccl:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if args.nccl else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(args.tokens, args.vocab, generator=gen)
    target = torch.randint(0, args.vocab, (args.tokens,), generator=gen)
    target[::7] = -100  # padding
    # Contiguous, rank-ordered slices; torch.tensor_split gives uneven sizes when needed.
    local = torch.tensor_split(logits, world, dim=-1)[rank].to(device).requires_grad_()

    loss = vocab_parallel_cross_entropy(local, target.to(device), label_smoothing=0.1,
                                        convention="non_target", z_loss=1e-4)
    loss.backward()

    losses = [torch.zeros_like(loss) for _ in range(world)]
    dist.all_gather(losses, loss.detach())
    full = logits.clone().requires_grad_()
    want = ls.cross_entropy(full, target, label_smoothing=0.1, convention="non_target",
                            z_loss=1e-4, dim=-1, backend="reference")
    want.backward()
    mine = torch.tensor_split(full.grad, world, dim=-1)[rank]
    err = (local.grad.cpu() - mine).abs().max().item()
    errs = [torch.zeros(()) for _ in range(world)]
    dist.all_gather_object(errs, err)
    if rank == 0:
        sizes = [t.shape[-1] for t in torch.tensor_split(logits, world, dim=-1)]
        vol = communication_volume(args.tokens, world_size=world, label_smoothing=0.1)
        print(f"world {world}, shard sizes {sizes}")
        print(f"loss on every rank: {[round(x.item(), 6) for x in losses]}")
        print(f"single process:     {want.item():.6f}")
        print(f"max |grad - single-process grad| per rank: {errs}")
        print(f"bytes per rank per call: {vol.total_bytes} "
              f"(gather {vol.size_gather_bytes} + max {vol.max_allreduce_bytes} "
              f"+ packed sum {vol.sum_allreduce_bytes}); the logits are "
              f"{args.tokens * args.vocab * 4} bytes")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
