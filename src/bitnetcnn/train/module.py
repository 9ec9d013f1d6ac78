"""The Lightning module: fake-quantized training of any registry model, evaluation of its ternary twin."""

from __future__ import annotations

import contextlib
import copy
import hashlib
from pathlib import Path
from typing import Optional

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from bitnetcnn.models import create_model
from bitnetcnn.nn import convert_to_ternary, model_form
from bitnetcnn.train.distill import distillation_loss, feature_hint_loss
from bitnetcnn.train.epoch_means import CHECKPOINT_KEY as EPOCH_SUMS_KEY
from bitnetcnn.train.epoch_means import EpochMeans
from bitnetcnn.train.schedule import param_groups, peak_lr, warmup_cosine
from bitnetcnn.train.run_folder import IMAGES_KEY, PROCESSES_KEY, TEACHER_KEY
from bitnetcnn.train.settings import SettingsError, TrainSettings


# torch.compile's modes that replay CUDA graphs: each training step must say where it starts
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


class BitClassifier(L.LightningModule):
    """Image classification with a registry model.

    Validation measures the Bit model (fake quantization) and, with ``eval_ternary``, the converted ternary model
    built from the same weights at the start of each validation epoch: the number users ship. That model (or, without
    ``eval_ternary``, a copy of the validated float model) is kept as :meth:`validated_model`, so what a run saves is
    exactly what it measured, even when a weight-averaging callback swaps the averaged weights in for validation only.
    """

    def __init__(
        self,
        model_name: str = TrainSettings.model,
        num_classes: int = 10,
        in_chans: int = 1,
        model_kwargs: Optional[dict] = None,
        # the run's settings, with TrainSettings' defaults (the command line's): one recipe, however it is started
        optimizer: str = TrainSettings.optimizer,
        lr: Optional[float] = TrainSettings.lr,  # None: DEFAULT_LR of the optimizer
        weight_decay: float = TrainSettings.wd,
        momentum: float = TrainSettings.momentum,
        warmup_epochs: float = TrainSettings.warmup_epochs,
        label_smoothing: float = TrainSettings.label_smoothing,
        mixup: float = TrainSettings.mixup,
        cutmix: float = TrainSettings.cutmix,
        eval_ternary: bool = TrainSettings.eval_ternary,
        kd_alpha: float = TrainSettings.kd_alpha,  # with a teacher (set_teacher); without one it is unused
        kd_temperature: float = TrainSettings.kd_temperature,
        kd_hints: float = TrainSettings.kd_hints,
        channels_last: bool = False,
        compile: bool = TrainSettings.compile,
        compile_mode: str = TrainSettings.compile_mode,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = create_model(model_name, num_classes=num_classes, in_chans=in_chans, **(model_kwargs or {}))
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.teacher: Optional[nn.Module] = None
        self.eval_ternary = eval_ternary and model_form(self.model) == "bit"
        self._ternary: Optional[nn.Module] = None
        self._validated: Optional[nn.Module] = None
        self._mix = _batch_mixer(num_classes, mixup, cutmix)
        # no per-update argument checks: each one waits for the GPU, and cross_entropy has already checked the labels
        metric = dict(num_classes=num_classes, average="micro", validate_args=False)
        self.val_loss = MeanMetric()
        self.val_acc1 = MulticlassAccuracy(top_k=1, **metric)
        self.val_acc5 = MulticlassAccuracy(top_k=min(5, num_classes), **metric)
        self.ternary_acc1 = MulticlassAccuracy(top_k=1, **metric)
        self.ternary_acc5 = MulticlassAccuracy(top_k=min(5, num_classes), **metric)
        self._epoch_means = EpochMeans()  # the training loss and accuracy of the epoch, kept in last.ckpt

    def set_teacher(self, teacher: nn.Module, source: str = "the teacher") -> None:
        """A frozen full-precision teacher for distillation; kept out of the state dict and the optimizer. It computes
        in float32 (mixed precision casts as it does for the student) even when stored in bf16 to carry it.
        ``source`` names it (its files) where a resume finds another teacher than the run's own."""
        teacher.float().eval().requires_grad_(False)
        self.__dict__["teacher"] = teacher  # not a submodule: no checkpointing, no optimizer
        self._teacher_source, self._teacher_sha256 = source, weights_sha256(teacher)

    @contextlib.contextmanager
    def teacher_set_aside(self):
        """The module without its teacher for a while: ``--ema``'s average is a deep copy of the module, which would
        hold a second copy of the frozen teacher (in host memory, never used)."""
        teacher, self.__dict__["teacher"] = self.teacher, None
        try:
            yield self
        finally:
            self.__dict__["teacher"] = teacher

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.teacher is not None:
            checkpoint[TEACHER_KEY] = self._teacher_sha256
        checkpoint[PROCESSES_KEY] = self.trainer.world_size
        checkpoint[EPOCH_SUMS_KEY] = self._epoch_means.state(self.trainer.strategy)  # every process meets here
        data = getattr(self.trainer, "datamodule", None)
        if getattr(data, "train_split", None) is not None:
            checkpoint[IMAGES_KEY] = [len(data.train_split.labels), len(data.test_split.labels)]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._epoch_means.restore(checkpoint.get(EPOCH_SUMS_KEY), self.global_rank == 0)

    def train_epoch_means(self) -> dict:
        """``train_loss`` and ``train_acc`` of the epoch so far, over every batch of every process (those before a
        resume too). A collective: every process calls it."""
        return self._epoch_means.means(self.trainer.strategy)

    def check_resumed_teacher(self, record: dict, checkpoint: Path) -> None:
        """A resumed distillation goes on with the teacher it started with: a teacher given where the first one
        moved (``--kd --teacher``) must hold the same weights, or the run would mix two teachers' lessons.
        ``record``: what ``checkpoint`` records (``run_folder.read_resume_record``)."""
        if self.teacher is None:
            return
        saved = record.get(TEACHER_KEY)
        if saved is not None and saved != self._teacher_sha256:  # absent in runs saved before it was kept
            raise SettingsError(f"--resume: {self._teacher_source} holds other weights than the teacher this run "
                                f"distils from (sha256 {self._teacher_sha256[:12]}..., {checkpoint} recorded "
                                f"{saved[:12]}...): if the file was replaced, put the run's teacher back; if it "
                                "moved, give --kd --teacher with where it is now (several: in the run's order)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # --- training -------------------------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.hparams.compile and self.hparams.compile_mode in CUDA_GRAPH_MODES:
            # a new step: the CUDA graphs may reuse the memory of the last step's outputs, which nothing holds
            torch.compiler.cudagraph_mark_step_begin()
        targets = y
        if self._mix is not None:
            x, targets = self._mix(x, y)
        hints = self.teacher is not None and self.hparams.kd_hints > 0
        features = self.model.forward_features(x) if hints else None
        logits = self.model.forward_head(features) if hints else self._training_forward()(x)
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=self.hparams.label_smoothing)
        if self.teacher is not None and (self.hparams.kd_alpha > 0 or hints):
            if self.teacher.training or next(self.teacher.parameters()).device != x.device:
                self.teacher.to(x.device).eval()
            with torch.no_grad():
                teacher_features = self.teacher.forward_features(x) if hints else None
                teacher = self._compiled("_compiled_teacher", self.teacher)
                teacher_logits = self.teacher.forward_head(teacher_features) if hints else teacher(x)
            if self.hparams.kd_alpha > 0:
                loss = distillation_loss(logits, teacher_logits, loss, self.hparams.kd_alpha,
                                         self.hparams.kd_temperature)
            if hints:
                loss = loss + self.hparams.kd_hints * feature_hint_loss([features], [teacher_features])
        hard = targets.argmax(-1) if targets.dim() > 1 else targets
        acc = (logits.argmax(-1) == hard).float().mean()
        self._epoch_means.add(self.current_epoch, loss, acc, len(hard))
        # this step's, this process's, for the progress bar; the epoch's are train_epoch_means()
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        self.log("train_acc", acc, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def _training_forward(self) -> nn.Module:
        """The model, or with ``compile`` its ``torch.compile`` wrapper (see :meth:`_compiled`)."""
        return self._compiled("_compiled_model", self.model)

    def _compiled(self, key: str, model: nn.Module) -> nn.Module:
        """``model``, or with ``compile`` its ``torch.compile`` wrapper (the teacher's too: its eager forward is a
        launch per layer, each step). The wrapper is kept out of the module tree, so the state dict keeps the model's
        own names; it is rebuilt if it wraps another model than ``model`` (in a deep copy), so a copy never runs the
        original's weights."""
        if not self.hparams.compile:
            return model
        compiled = self.__dict__.get(key)
        if compiled is None or compiled._orig_mod is not model:
            compiled = self.__dict__[key] = torch.compile(model, mode=self.hparams.compile_mode)
        return compiled

    def configure_optimizers(self):
        hp = self.hparams
        lr = peak_lr(hp.lr, hp.optimizer)
        groups = param_groups(self.model, hp.weight_decay)
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(groups, lr=lr, momentum=hp.momentum, nesterov=hp.momentum > 0)  # plain SGD at 0
        elif hp.optimizer == "adamw":
            opt = torch.optim.AdamW(groups, lr=lr)
        else:
            raise ValueError(f"unknown optimizer {hp.optimizer!r}: use 'sgd' or 'adamw'")
        total = max(1, int(self.trainer.estimated_stepping_batches))
        self._steps_per_epoch = total / max(1, self.trainer.max_epochs or 1)
        self._schedule_steps = total
        warmup = int(hp.warmup_epochs * self._steps_per_epoch)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_cosine(step, self._schedule_steps, warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_train_start(self) -> None:
        """Each optimizer's rate from the schedule at the step it stands at: a resume restores the rate the saved
        run computed last, which a run extended with ``--epochs`` must not keep (its schedule then ended at 0, and
        the first step after the extension ran at that 0 instead of on the stretched cosine). For any other run
        the same value."""
        self._rates_from_schedule()

    def _rates_from_schedule(self) -> None:
        """Set each optimizer's rate for its next step from the schedule as it now stands."""
        for config in self.trainer.lr_scheduler_configs:
            sched = config.scheduler
            if isinstance(sched, torch.optim.lr_scheduler.LambdaLR):
                rates = [base * fn(sched.last_epoch) for base, fn in zip(sched.base_lrs, sched.lr_lambdas)]
                for group, rate in zip(sched.optimizer.param_groups, rates):
                    group["lr"] = rate
                sched._last_lr = rates

    def fit_schedule(self, epochs: int) -> None:
        """End the learning-rate schedule after ``epochs`` epochs instead (a run sized to a time budget). Steps
        taken keep their rates; with a warm-up of one epoch or more, the cosine has not started when epoch 0 ends.
        The next step's rate, which the scheduler computed from the old length, is computed again from the new."""
        self._schedule_steps = max(1, round(self._steps_per_epoch * epochs))
        self._rates_from_schedule()

    # --- validation -----------------------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        _buffers_from_rank_0(self.model)
        # kept out of the module tree: not submodules, so never in a checkpoint or the optimizer
        if self.eval_ternary:
            self.__dict__["_ternary"] = convert_to_ternary(self.model).eval()
        self.__dict__["_validated"] = self._ternary if self.eval_ternary else copy.deepcopy(self.model).eval()

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        logits = self.model(x)
        # weighted by the images of each process's share, which may differ by one (EachImageOnce): Lightning's
        # sync_dist averaged the processes' means and rounded their image counts down
        self.val_loss(F.cross_entropy(logits.float(), y), weight=len(y))
        self.log("val_loss", self.val_loss)
        self.val_acc1(logits, y)
        self.val_acc5(logits, y)
        self.log("val_acc", self.val_acc1, prog_bar=True)
        self.log("val_acc5", self.val_acc5)
        if self._ternary is not None:
            # in float32, outside --amp's autocast, as `bitnetcnn eval` and deployment run the saved file: the
            # accuracy recorded for it, and the best epoch chosen by it, are the file's own
            with torch.autocast(x.device.type, enabled=False):
                t_logits = self._ternary(x.float())
            self.ternary_acc1(t_logits, y)
            self.ternary_acc5(t_logits, y)
            self.log("ternary_acc", self.ternary_acc1, prog_bar=True)
            self.log("ternary_acc5", self.ternary_acc5)

    test_step = validation_step
    on_test_epoch_start = on_validation_epoch_start

    def validated_model(self) -> nn.Module:
        """The model the last validation measured (before any: the current weights): the ternary twin with
        ``eval_ternary``, else the float model."""
        if self._validated is not None:
            return self._validated
        return convert_to_ternary(self.model).eval() if self.eval_ternary else self.model


def weights_sha256(model: nn.Module) -> str:
    """One model's weights as a digest: the dtypes, shapes and values of its state dict, in order (not the names,
    which a later version of the code may change for the same weights)."""
    digest = hashlib.sha256()
    for value in model.state_dict().values():
        digest.update(f"{value.dtype}:{tuple(value.shape)};".encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _batch_mixer(num_classes: int, mixup: float, cutmix: float):
    """torchvision's batch MixUp / CutMix (one chosen per batch when both are on), or None."""
    if mixup <= 0 and cutmix <= 0:
        return None
    from torchvision.transforms import v2

    choices = []
    if mixup > 0:
        choices.append(v2.MixUp(alpha=mixup, num_classes=num_classes))
    if cutmix > 0:
        choices.append(v2.CutMix(alpha=cutmix, num_classes=num_classes))
    return choices[0] if len(choices) == 1 else v2.RandomChoice(choices)


def _buffers_from_rank_0(model: nn.Module) -> None:
    """Every process takes rank 0's buffers (BatchNorm's running statistics, the activation quantizers' scales)
    before validation converts the model. DDP copies them only at the start of a forward, so each process would
    otherwise score its share of the test images with the statistics of its own last training batch, and the
    accuracy recorded would not be that of the model rank 0 saves."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    if torch.distributed.get_world_size() > 1:
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer.data, src=0)
