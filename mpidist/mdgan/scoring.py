"""G's scores on rank 0 (nothing is downloaded): the classifier score (the paper's "MNIST score")
and the Frechet distance on the scoring classifier's features, or on Inception-v3's with
``--inception-weights``, on 500 generated samples; and the sample grid saved at the end."""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from .. import metrics


class Scoring:
    """Scores of G every ``setup.score_every`` iterations; ``history`` holds (iteration, score,
    FID, live workers) of every scoring (it goes into rank 0's checkpoints)."""

    def __init__(self, setup, G):
        run, a = setup.run, setup.args
        self.setup, self.G, self.run = setup, G, run
        n_ref = min(a.score_samples, len(setup.test))
        ref = setup.test.x[:n_ref]
        t0 = time.monotonic()
        if a.inception_weights:
            net = metrics.inception_net(a.inception_weights, setup.device)
            self.what = f"Inception-v3 from {a.inception_weights}"
        else:
            tr, te = setup.train, setup.test
            epochs = 12 if len(tr) < 10000 else 3
            model, info = metrics.load_or_train_scorer(
                tr.x, tr.y, tr.num_classes, f"{tr.name}", te.x, te.y, a.scorer_cache,
                epochs=epochs, log=run.log)
            model.to(setup.device)
            net = metrics.classifier_net(model)
            how = "cached" if info["cached"] else f"trained in {time.monotonic() - t0:.0f} s"
            self.what = (f"scoring classifier on {tr.name} ({how}, test accuracy "
                         f"{info['test_accuracy']:.3f}, sha256 "
                         f"{info.get('sha256', 'uncached')[:12]})")
        self.scorer = metrics.GanScorer(net, ref.to(setup.device), device=setup.device)
        self.n, self.n_ref = a.score_samples, n_ref
        real = setup.train.x[:self.n].to(setup.device)
        self.real = self.scorer.score(real)
        self.history = []  # (iteration, score, fid, live)
        self.noise = torch.Generator(device="cpu").manual_seed(a.seed + 7)

    @torch.no_grad()
    def samples(self, n: int, labels=None) -> torch.Tensor:
        """n images from G in [0, 1]: fixed noise, classes spread evenly for ACGAN. G stays in
        training mode (batch statistics), as during training."""
        G, nc = self.G, self.setup.num_classes
        z = torch.randn(n, G.latent, generator=self.noise).to(self.setup.device)
        if nc and labels is None:
            labels = torch.arange(n) % nc
        if labels is not None:
            labels = labels.to(self.setup.device)
        return ((G(z, labels) + 1) / 2).clamp_(0, 1)

    def __call__(self, i: int, live: int = -1) -> dict:
        self.noise.manual_seed(self.setup.args.seed + 7)  # the same noise at every scoring
        s = self.scorer.score(self.samples(self.n))
        self.run.metric(i, "score", s["score"])
        self.run.metric(i, "fid", s["fid"])
        self.history.append((i, s["score"], s["fid"], live))
        return s

    def save_grid(self, path: str) -> str:
        import torchvision.utils as vu
        nc = self.setup.num_classes or 10
        labels = torch.arange(nc).repeat_interleave(10) if self.setup.num_classes else None
        self.noise.manual_seed(self.setup.args.seed + 11)
        x = self.samples(10 * nc, labels).cpu()
        scale = max(1, 48 // x.shape[-1])  # small digits: enlarge (nearest) to be seen
        x = F.interpolate(x, scale_factor=scale, mode="nearest") if scale > 1 else x
        vu.save_image(x, path, nrow=10, padding=2, pad_value=1.0)
        return path

    def summary(self, title: str) -> list[str]:
        lines = [title, f"  {'iteration':>9} {'score':>7} {'FID':>9} {'live':>5}"]
        for i, sc, fid, live in self.history:
            lines.append(f"  {i:9d} {sc:7.3f} {fid:9.2f} {live if live >= 0 else '':>5}")
        lines.append(f"  real images: score {self.real['score']:.3f}, FID {self.real['fid']:.2f} "
                     f"({self.n} training images against the {self.n_ref} test images of the "
                     "FID reference)")
        return lines
