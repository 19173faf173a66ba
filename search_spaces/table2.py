"""Thesis Table 2: PU classification (CIFAR-10 positives vs CIFAR-100 negatives), per annotation and loss.

Without a CIFAR root the synthetic classification view stands in (classes 1-10 positive, 11-20 negative).
The weighted and bootstrap losses use the thesis's class weights from the observed label frequencies
(``trainables.losses.pu_class_weights``: ~0.67 for the negative class, ~2 for every positive class at
50%P+U); the sigmoidal loss does not (the thesis found weighting it over-balances), and its reweighted
variant is the ablation the thesis reports in its text (precision 0.74, recall 0.83).
"""

from search_spaces.base import Preset

# Optimisation recipe per data kind, applied before the conditions.
# - cifar: the thesis's Adam at lr 1e-4 (it states no batch size or length: batch 128 and 20 epochs are this
#   project's), on 2 x 50,000 images (about 780 steps per epoch).
# - synthetic: chosen by measurement with benchmarks/pu_sanity.py (P+N with clean labels, seed 0, 1 CPU
#   thread per trial, 2026-11-30), never against the thesis's numbers. The thesis's recipe does not learn
#   here: at 60 images per class (1,200 images, ~10 Adam steps of 128 per epoch) P+N sat at the majority
#   prediction (mean F1 0.061) for all 20 epochs, with the old or the new CNN initialisation. At a fixed
#   budget of ~24,000 image-steps per trial (sized for `table2`'s 21 trials near 15 minutes on 2 cores; the
#   full preset measured 43 minutes on 2 loaded cores on 2026-12-01, README)
#   lr 1e-3 with batch 32 learnt fastest (3e-4 and 2e-3 were slower, batch 64 slower), and 100 images per
#   class for 12 epochs beat 60 x 20 and 150 x 8: P+N mean F1 0.62 / 0.73 / 0.71 over epochs 10-12
#   (accuracy 0.73 / 0.78 / 0.76), against 0.061 for the majority prediction. It is still rising at
#   epoch 12: converged runs need ~3x the budget (200 images per class x 20 epochs reached 0.79-0.83),
#   which `--seeds`/a cluster can afford and 2 shared cores cannot.
#   2026-12-01, same budget, lr decayed to 0 by a cosine over the 12 epochs (`lr_schedule`): P+N mean F1
#   0.640 / 0.688 / 0.687 over epochs 10-12 (accuracy 0.738 / 0.755 / 0.755); at lr 2e-3 0.620 / 0.692 /
#   0.695. The level is the constant lr's within one seed's noise, but the last epochs are flat: the last
#   epoch, which Table 2 reports, is a converged model's, not a snapshot of Adam moving at full lr (whose
#   epochs 10-12 swung by 0.11), so it no longer adds that swing to the seeds' spread.
#   2026-12-01, same images, epochs and cosine, batch 16 instead of 32: twice the Adam steps at the same
#   cost on the CPU (143 s against 145 s per trial, one thread, idle), and the model learns faster per image:
#   P+N over epochs 10-12, seed 0: mean F1 0.750 / 0.776 / 0.770, accuracy 0.808 / 0.825 / 0.815 (batch 32:
#   0.640 / 0.688 / 0.687 and 0.738 / 0.755 / 0.755); seeds 1 and 2 end at F1 0.784 and 0.808 (accuracy 0.823 and 0.847).
#   Turning the flip-and-crop augmentation off did not help (0.687 at epoch 12). This meets issue 19's bar.
#   epoch_length "full": with one pass per epoch, 50%(P+N) got half of P+N's steps and its test mean F1
#   was still climbing when the 12 epochs ended (0.42 -> 0.46 over epochs 10-11, 2026-12-01 table2 run);
#   the thesis's Figure 5 compares P+N fractions down to 10%, which would get a tenth. Every labelled
#   fraction now trains for P+N's steps; P+U splits hold the whole pool and are unchanged.
RECIPES = {
    "synthetic": {"images_per_class": 100, "epochs": 12, "lr": 1e-3, "lr_schedule": "cosine", "batch_size": 16,
                  "epoch_length": "full"},
    "cifar": {"epochs": 20, "lr": 1e-4, "batch_size": 128},
}

CONDITIONS = {
    "P+N/CrossEntropyU.": {"setup": "pn", "labelled_fraction": 1.0},
    "50%(P+N)/CrossEntropyU.": {"setup": "pn", "labelled_fraction": 0.5},
    "50%P+U/CrossEntropyU.": {"setup": "pu", "labelled_fraction": 0.5},
    "50%P+U/WeightedNeg.": {"setup": "pu", "labelled_fraction": 0.5, "loss": "weighted_neg", "q": 0.5,
                            "class_weighting": True},
    "50%P+U/SigmoidalNeg.": {"setup": "pu", "labelled_fraction": 0.5, "loss": "sigmoidal_neg",
                             "warmup_epochs": 2},
    "50%P+U/BootstrapHard": {"setup": "pu", "labelled_fraction": 0.5, "loss": "bootstrap_neg",
                             "beta": 0.8, "class_weighting": True, "warmup_epochs": 2},
    # Thesis 5.2's text: the sigmoidal loss reweighted by the observed label frequencies.
    "50%P+U/SigmoidalNeg.Reweighted": {"setup": "pu", "labelled_fraction": 0.5, "loss": "sigmoidal_neg",
                                       "warmup_epochs": 2, "class_weighting": True},
}

PRESET = Preset(
    name="table2",
    description="Thesis Table 2: CIFAR (or synthetic) PU classification: P+N, 50%(P+N), 50%P+U x 4 losses "
                "+ the reweighted sigmoidal ablation.",
    trainable="pu_classification",
    conditions=CONDITIONS,
    seeds=3,
    data_kinds=("synthetic", "cifar"),
    smoke_conditions=("50%(P+N)/CrossEntropyU.", "50%P+U/SigmoidalNeg."),
    time_attr="train/epoch",
    recipes=RECIPES,
)
