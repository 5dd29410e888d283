"""The paper's detector: contrast the classifier's label with the label of the input's attention mask."""

from __future__ import annotations

from typing import Optional

import torch

from advbench.api import Detector, DetectorEnv, DetectorOutput, Options, RunContext


class ContrastiveOptions(Options):
    """No options: the detector is fully defined by f1, the interpreter g and the mask classifier f2."""


class Contrastive(Detector):
    """Classification-interpretation contrastive detection (Nguyen et al. 2017, "Where Classification Fails,
    Interpretation Rises").

    Flag: ``argmax f2(g(x)) != argmax f1(x)``, with f1 the victim, g the interpreter (``env.explain``) and f2
    the mask classifier (``env.mask_classifier``), exactly the paper's decision rule.
    Score: ``1 - softmax(f2(g(x)))[argmax f1(x)]``, the mask classifier's probability that the mask does NOT
    show the class f1 predicts (in [0, 1]); it ranks inputs for ROC/AUROC and agrees with the flag at the
    extremes, but the flag is not a fixed threshold on it (argmax disagreement can happen at scores < 0.5).
    ``score_forwards`` computes the same from the logits the harness shares with its other readers (f2's
    labels, the accuracy rows), so a run computes g, f1 and f2 once per image set.
    Fitted on nothing here: g and f2 are trained by the harness on the victim's training data.

    Adaptive attacks (``adaptive_gradient = "exact"``): ``attack_score`` is the same score with the graph kept
    through f2 and g (the harness hands a differentiable ``env.explain``: a LAN's forward pass, gradient maps by
    double backprop, on a softplus surrogate of a ReLU victim whose exact map would give no gradient, the map's
    value unchanged: see the interpreters); the label ``argmax f1(x)`` is piecewise constant and is not
    differentiated.
    """

    name = "contrastive"
    description = "Nguyen et al. 2017: flag when the mask classifier's label differs from the victim's"
    revision = "1"
    Options = ContrastiveOptions
    needs_interpreter = True
    needs_adversarial_fit = False
    adaptive_gradient = "exact"
    scores_from_forwards = True  # a pure function of f1's and f2's logits: the harness computes them once per set

    @staticmethod
    def _require_interpreter(env: DetectorEnv) -> None:
        if env.explain is None or env.mask_classifier is None:
            raise ValueError("the contrastive detector needs an interpreter (env.explain) and a mask classifier "
                             "(env.mask_classifier)")

    def score(self, env: DetectorEnv, x: torch.Tensor, ctx: RunContext) -> DetectorOutput:
        self._require_interpreter(env)
        with torch.no_grad():
            logits1 = env.victim(x)
        masks = env.explain(x)  # the interpreter may need input gradients: no no_grad around it
        with torch.no_grad():
            logits2 = env.mask_classifier(masks.detach())
        return self.score_forwards(logits1, logits2)

    def score_forwards(self, f1_logits: torch.Tensor, f2_logits: Optional[torch.Tensor]) -> DetectorOutput:
        """The score and flag from f1's logits and f2's logits on g(x): ``score`` is this on logits it computes."""
        if f2_logits is None:
            raise ValueError("the contrastive detector needs the mask classifier's logits")
        with torch.no_grad():
            y1 = f1_logits.argmax(dim=1)
            p2 = torch.softmax(f2_logits.float(), dim=1)
            agree = p2.gather(1, y1.view(-1, 1)).squeeze(1)
            flag = f2_logits.argmax(dim=1) != y1
        return DetectorOutput(score=(1.0 - agree).clamp(0.0, 1.0), flag=flag)

    def attack_score(self, env: DetectorEnv, x: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        self._require_interpreter(env)
        with torch.no_grad():
            y1 = env.victim(x).argmax(dim=1)
        p2 = torch.softmax(env.mask_classifier(env.explain(x)).float(), dim=1)
        return (1.0 - p2.gather(1, y1.view(-1, 1)).squeeze(1)).clamp(0.0, 1.0)
