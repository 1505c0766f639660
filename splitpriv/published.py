"""The published numbers this project compares against, in one place.

Source: Abuadbba et al., "Can We Use Split Learning on 1D CNN Models for Privacy Preserving
Training?", ASIACCS 2020 (arXiv 2003.12365), and the CSV results of their code; the PySyft
tutorial that trained the same split model. ``docs/reference.md`` describes how each number was
obtained and the protocol's known flaws (test rows that copy training rows, the test set
selecting the epoch, the first-of-batch pairing of the DP-leakage code).

Accuracies are in percent: the best test accuracy over the 400 epochs (the maximum over epochs,
which lets the test set select the model). Leakage is per channel at the cut (16 channels):
the max and min over channels of the mean over 10,000 beats of the per-beat dCor (input
average-pooled 128 -> 32 against one 32-long channel) and of the DTW distance (raw 128-sample
input against the channel), on a checkpoint at epoch 100.
"""

from __future__ import annotations

#: The source of every number here.
SOURCE = "Abuadbba et al., ASIACCS 2020 (arXiv 2003.12365)"

#: Best test accuracy of the 2-conv split over 10 runs of 400 epochs: mean, sd, max.
BASELINE_ACCURACY = {"mean": 98.52, "sd": 0.17, "max": 98.88, "runs": 10}

#: Best test accuracy by client depth (conv layers), mean over 10 runs.
ACCURACY_BY_DEPTH = {2: 98.52, 3: 98.46, 4: 97.74, 5: 96.26, 6: 96.28, 7: 95.80, 8: 95.07}
#: ... and the standard deviations the paper gives (at 2 and 8 conv layers).
ACCURACY_SD_BY_DEPTH = {2: 0.17, 8: 1.51}

#: Leakage at the cut by client depth: dCor max / min and DTW min / max over channels.
LEAKAGE_BY_DEPTH = {
    2: {"dcor_max": 0.8935, "dcor_min": 0.3937, "dtw_min": 2.70, "dtw_max": 5.84},
    8: {"dcor_max": 0.6878, "dcor_min": 0.2928, "dtw_min": 14.62, "dtw_max": 571.68},
}

#: Laplace noise on the 2-conv split's activations (the paper's recipe, no formal guarantee), by
#: per-release epsilon (None: no noise): best test accuracy and leakage. Their DP-leakage code
#: paired every noisy activation with the first beat of its batch, not its own input, which by
#: itself lowers dCor and raises DTW.
LAPLACE_DP = {
    None: {"acc": 98.44, **LEAKAGE_BY_DEPTH[2]},
    10.0: {"acc": 89.20, "dcor_max": 0.6559, "dcor_min": 0.3924, "dtw_min": 23.78,
           "dtw_max": 60.99},
    7.0: {"acc": 87.34, "dcor_max": 0.5753, "dcor_min": 0.3723, "dtw_min": 52.56,
          "dtw_max": 136.01},
    5.0: {"acc": 83.65, "dcor_max": 0.4903, "dcor_min": 0.3608, "dtw_min": 99.71,
          "dtw_max": 277.93},
    3.0: {"acc": 73.78, "dcor_max": 0.3973, "dcor_min": 0.3342, "dtw_min": 107.45,
          "dtw_max": 443.85},
    1.0: {"acc": 50.59, "dcor_max": 0.3297, "dcor_min": 0.3086, "dtw_min": 338.10,
          "dtw_max": 945.44},
}

#: The PySyft 0.5 tutorial's run of the same split model: best test accuracy (epoch 351 of 400)
#: and the wall time of its 400 epochs on a 6-core 2.6 GHz Xeon.
PYSYFT_TUTORIAL = {"best_test_accuracy": 98.85, "best_epoch": 351, "epochs": 400, "hours": 14}
