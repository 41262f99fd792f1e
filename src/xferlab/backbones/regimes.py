"""Training regimes: which parts of a backbone learn. One place to add a regime: `parse_regime`.

`frozen`    the backbone is a fixed feature extractor (parameters and BatchNorm statistics), so its features are
            computed once per split and only the head trains;
`finetune`  every weight trains;
`partial:K` the last K stages and the head train; earlier stages stay fixed, BatchNorm included;
`adabn`     like `frozen`, but the BatchNorm statistics are first re-estimated once on the training images (AdaBN,
            Li et al. 2016), then fixed: the cacheable form of what a frozen backbone left in train mode drifts towards.
            Refused for backbones without BatchNorm (ViTs, ConvNeXt: LayerNorm has no running statistics).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from xferlab.errors import XferlabError, did_you_mean

REGIMES = ("frozen", "adabn", "finetune", "partial:K")


@dataclass(frozen=True)
class Regime:
    name: str
    trainable_stages: int | None  # None: all weights; 0: head only; K: last K stages + head
    adapt_bn: bool = False  # re-estimate BatchNorm statistics on the training images once, before caching features

    @property
    def cache_features(self) -> bool:
        """A fixed backbone is a fixed function: its features can be computed once and reused every epoch."""
        return self.trainable_stages == 0


def parse_regime(text: str) -> Regime:
    if text == "frozen":
        return Regime("frozen", 0)
    if text == "adabn":
        return Regime("adabn", 0, adapt_bn=True)
    if text == "finetune":
        return Regime("finetune", None)
    if text.rstrip(":") == "partial":
        raise XferlabError(f"regime '{text}' needs K, the number of last stages to train: partial:K, e.g. partial:2")
    if text.startswith("partial:"):
        k = text.split(":", 1)[1]
        if not k.isdigit() or int(k) < 1:
            raise XferlabError(f"regime '{text}': K must be a whole number >= 1, e.g. partial:2")
        return Regime(text, int(k))
    raise XferlabError(f"unknown regime '{text}'{did_you_mean(text, ('frozen', 'adabn', 'finetune', 'partial'))}; "
                       f"choose one of {', '.join(REGIMES)}")


def has_batchnorm(module: nn.Module) -> bool:
    """Whether `module` has BatchNorm layers (running statistics that adabn or test-time BatchNorm can re-estimate)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def check_batchnorm(model, regime_name: str) -> None:
    """A regime that re-estimates BatchNorm statistics needs some: refuse it clearly for backbones without them."""
    if not has_batchnorm(model.body):
        raise XferlabError(
            f"regime '{regime_name}': backbone '{model.spec.name}' has no BatchNorm layers (it normalises with "
            "LayerNorm or GroupNorm, which keep no running statistics), so there is nothing to re-estimate; use "
            "frozen for the same fixed backbone, or partial:K / finetune to adapt it"
        )


def apply_regime(model, regime: Regime) -> None:
    """Set requires_grad and the modules `TransferModel.train()` keeps in eval mode."""
    if regime.adapt_bn:
        check_batchnorm(model, regime.name)
    stages = model.spec.stages
    if regime.trainable_stages is None:
        model.frozen = ()
        model.requires_grad_(True)
        return
    if regime.trainable_stages > len(stages):
        raise XferlabError(f"regime '{regime.name}': backbone '{model.spec.name}' has only {len(stages)} stages; "
                           f"use partial:1..{len(stages)} or finetune")
    trainable = [p for stage in stages[len(stages) - regime.trainable_stages:] for p in stage]
    model.requires_grad_(False)
    model.head.requires_grad_(True)
    for prefix in trainable:
        model.body.get_submodule(prefix).requires_grad_(True)
    model.frozen = _frozen_modules(model.body, trainable)


def _frozen_modules(body, trainable: list[str]) -> tuple[str, ...]:
    """The smallest set of body submodule names covering everything outside the trainable prefixes."""
    frozen = []

    def visit(module, name: str) -> None:
        if any(name == t for t in trainable):
            return
        inside = [t for t in trainable if t.startswith(name + ".") or not name]
        if not inside:
            frozen.append(name)
            return
        for child_name, child in module.named_children():
            visit(child, f"{name}.{child_name}" if name else child_name)

    visit(body, "")
    return tuple(f"body.{n}" if n else "body" for n in frozen)
