"""MD-GAN: one generator on a server, one discriminator per worker, error feedback and
peer-to-peer discriminator swaps; from "MD-GAN: Multi-Discriminator Generative Adversarial
Networks for Distributed Datasets" (C. Hardy, E. Le Merrer, B. Sericola), with the FL-GAN
baseline, a standalone GAN and the worker crashes of its Figure 3. Theory, flags, trace
channels, tests and results: mpidist/mdgan/README.md.

    rules.py      the schedules (batches, swaps, crashes, FL-GAN rounds), the losses, the error
                  feedback and Table III's bytes, pure
    exchange.py   what moves to whom and when (through mpidist.comm)
    server.py     the server C: Algorithm 1's CENTRALSERVER, FL-GAN's averaging
    worker.py     the workers W_n: Algorithm 1's WORKER and SWAP, FL-GAN's local GAN
    wrapper.py    MDGAN: the Python API, the server and worker roles around the user's G and D
    scoring.py    G's scores on rank 0 (classifier score, FID, sample accuracy) and the samples
    context.py    the settings the roles read (Config), what every rank derives alike from the
                  flags (data, networks, schedules), a user's --generator / --discriminator
    train.py      the runs of every mode and role on the shared loop
    cli.py        the command line
    example.py    the Python API in a user's script: mpirun -n 4 python -m mpidist.mdgan.example

In your own script (every rank, under ``mpirun -n N+1``)::

    with mpidist.init("mdgan", seed=0) as run:
        md = mpidist.mdgan.MDGAN(run, G, D, train_set, latent_size=16, k=1, batch=32)
        for i in Loop(run, total=I, first_step=1, state=lambda i: {"mdgan": md.state_dict()}):
            md.step(i)
            ...
"""
from ..errors import UsageError
from .cli import ALGORITHM, RESUME_MAY_CHANGE, build_parser, check_world, main, parse_k
from .context import (Config, Setup, build_discriminator, build_generator, check_networks,
                      params_sha256, shared_discriminator)
from .exchange import (NO_DEADLINE, TAG_FEEDBACK, TAG_FL_THETA, TAG_FL_W, TAG_INIT,
                       TAG_MEMBERSHIP, TAG_NOTICE, TAG_SWAP, TAG_XD, TAG_XG, ServerLinks,
                       WorkerLinks)
from .rules import (assemble_grad, batches_per_iteration, crash_period, crash_schedule,
                    disc_loss, distribute, error_feedback, fake_labels, flgan_round,
                    flgan_round_ends, gen_loss, generate, iterations_per_epoch, live_after,
                    reference_generator_grad, swap_due, swap_permutation, table3_bytes)
from .scoring import Scoring, VectorScoreNet, train_vector_scorer
from .server import FLGANServer, MDGANServer
from .train import (MEET_EVERY, RoundLoop, flgan_server, flgan_worker, mdgan_server,
                    mdgan_worker, past_end, standalone, train)
from .worker import FLGANWorker, LocalGAN, MDGANWorker
from .wrapper import MDGAN, as_dataset

__all__ = [
    "ALGORITHM", "Config", "MDGAN", "TAG_INIT", "VectorScoreNet", "as_dataset",
    "build_discriminator", "build_generator", "check_networks", "generate",
    "train_vector_scorer", "FLGANServer", "FLGANWorker", "LocalGAN", "MDGANServer", "MDGANWorker",
    "MEET_EVERY", "NO_DEADLINE", "RESUME_MAY_CHANGE", "RoundLoop", "Scoring", "ServerLinks",
    "Setup", "TAG_FEEDBACK", "TAG_FL_THETA", "TAG_FL_W", "TAG_MEMBERSHIP", "TAG_NOTICE",
    "TAG_SWAP", "TAG_XD", "TAG_XG", "UsageError", "WorkerLinks", "assemble_grad",
    "batches_per_iteration", "build_parser", "check_world", "crash_period", "crash_schedule",
    "disc_loss", "distribute", "error_feedback", "fake_labels", "flgan_round", "flgan_round_ends",
    "flgan_server", "flgan_worker", "gen_loss", "iterations_per_epoch", "live_after", "main",
    "mdgan_server", "mdgan_worker", "params_sha256", "parse_k", "past_end",
    "reference_generator_grad", "shared_discriminator", "standalone", "swap_due",
    "swap_permutation", "table3_bytes", "train",
]
